#!/bin/sh
# Install the Outpost agent as a service: a system user, its own virtualenv built from local
# wheels only, a hardened systemd unit (a launchd job on macOS), started, and how to enroll.
#
#   sudo packaging/install.sh --wheels DIR [--extras llm,rag] [--profile rpi5] [--jetson]
#   sudo packaging/install.sh --bundle kiosk.bundle --bundle-sha256 HEX \
#        --device-class rpi5 --root-sha256 HEX          # agent + release from one file
#   sudo packaging/install.sh --uninstall [--purge]      # --purge also deletes the state
#   packaging/install.sh --root DIR ...                  # into a scratch root (tests, images)
#
# Wheels: `python packaging/build_agent.py --out DIR --wheelhouse --extras llm,rag` on a
# machine of the same OS and CPU. Nothing is downloaded: pip runs with --no-index.
# See docs/packaging.md.
set -eu

ROOT=/
WHEELS=
BUNDLE=
BUNDLE_SHA256=
DEVICE_CLASS=
ROOT_SHA256=
EXTRAS=llm,rag
PROFILE=
JETSON=no
ACTION=install
PURGE=no
PYTHON=${PYTHON:-python3}
USER_NAME=outpost
HERE=$(cd "$(dirname "$0")" && pwd)

say() { printf '[outpost-install] %s\n' "$*"; }
die() { printf '[outpost-install] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
    --bundle) BUNDLE=${2:?--bundle needs a file}; shift 2 ;;
    --bundle-sha256) BUNDLE_SHA256=${2:?}; shift 2 ;;
    --device-class) DEVICE_CLASS=${2:?}; shift 2 ;;
    --root-sha256) ROOT_SHA256=${2:?}; shift 2 ;;
    --extras) EXTRAS=${2?}; shift 2 ;;
    --profile) PROFILE=${2:?}; shift 2 ;;
    --jetson) JETSON=yes; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=yes; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

ROOT=$(cd "$ROOT" 2>/dev/null && pwd) || die "--root is not a directory"
R=${ROOT%/}   # "" for the real root
OPT=/opt/outpost
STATE=/var/lib/outpost
UNIT_DIR=/etc/systemd/system
OS=$(uname -s)

if [ "$ROOT" = / ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo), or give --root DIR for a scratch root"
fi

systemd_runs() { [ "$ROOT" = / ] && [ -d /run/systemd/system ]; }

uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$R/etc/passwd" 2>/dev/null; }
gid_of() { awk -F: -v u="$1" '$1 == u { print $4 }' "$R/etc/passwd" 2>/dev/null; }

make_user() {
  if [ "$OS" = Darwin ]; then
    say "macOS: create the _outpost user yourself (docs/packaging.md, launchd); skipping"
    return
  fi
  if [ -n "$(uid_of "$USER_NAME")" ]; then
    say "system user $USER_NAME exists"
    return
  fi
  [ -f "$R/etc/passwd" ] || die "$R/etc/passwd is missing: a root needs /etc/passwd and /etc/group"
  if [ "$ROOT" = / ]; then
    useradd --system --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
  else
    useradd --root "$ROOT" --system --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin "$USER_NAME"
  fi
  say "created system user $USER_NAME"
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

install_agent() {
  work=
  if [ -n "$BUNDLE" ]; then
    [ -f "$BUNDLE" ] || die "no bundle at $BUNDLE"
    if [ -n "$BUNDLE_SHA256" ]; then
      actual=$(sha256_of "$BUNDLE")
      [ "$actual" = "$BUNDLE_SHA256" ] || die "$BUNDLE hashes to $actual, not $BUNDLE_SHA256: copy it again; nothing was installed"
    else
      say "warning: no --bundle-sha256: the wheels in the bundle run before the agent can verify it"
    fi
    [ -n "$DEVICE_CLASS" ] || die "--bundle needs --device-class (the class the bundle was made for)"
    work=$(mktemp -d)
    tar -xf "$BUNDLE" -C "$work" outpost-bundle/wheels 2>/dev/null \
      || die "$BUNDLE carries no agent wheels (bundle create --agent-wheels DIR); install with --wheels"
    WHEELS=$work/outpost-bundle/wheels
  fi
  [ -n "$WHEELS" ] || die "give --wheels DIR (packaging/build_agent.py --wheelhouse) or --bundle FILE"
  ls "$WHEELS"/outpost_agent-*.whl >/dev/null 2>&1 || die "no outpost_agent wheel in $WHEELS"

  make_user
  mkdir -p "$R$OPT"
  if [ ! -x "$R$OPT/venv/bin/python" ]; then
    "$PYTHON" -m venv "$R$OPT/venv"
  fi
  spec=outpost-agent
  [ -n "$EXTRAS" ] && spec="outpost-agent[$EXTRAS]"
  "$R$OPT/venv/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" \
    --disable-pip-version-check --upgrade "$spec"
  say "agent installed in $OPT/venv ($("$R$OPT/venv/bin/python" -m pip show outpost-agent | sed -n 's/^Version: //p'))"

  mkdir -p "$R$STATE"
  chmod 0700 "$R$STATE"
  if [ -n "$BUNDLE" ]; then
    args="--device-class $DEVICE_CLASS"
    [ -n "$ROOT_SHA256" ] && args="$args --root-sha256 $ROOT_SHA256"
    # shellcheck disable=SC2086  # args holds separate words
    "$R$OPT/venv/bin/outpost-agent" install-bundle "$BUNDLE" --state-dir "$R$STATE" $args
    rm -rf "$work"
  fi
  uid=$(uid_of "$USER_NAME")
  if [ -n "$uid" ]; then
    chown -R "$uid:$(gid_of "$USER_NAME")" "$R$STATE"
  fi

  if [ "$OS" = Darwin ]; then
    mkdir -p "$R/Library/LaunchDaemons"
    cp "$HERE/launchd/dev.outpost.agent.plist" "$R/Library/LaunchDaemons/"
    if [ "$ROOT" = / ]; then
      launchctl bootstrap system /Library/LaunchDaemons/dev.outpost.agent.plist
      say "launchd job dev.outpost.agent started"
    fi
  else
    mkdir -p "$R$UNIT_DIR/outpost-agent.service.d"
    cp "$HERE/systemd/outpost-agent.service" "$R$UNIT_DIR/"
    if [ "$JETSON" = yes ]; then
      cp "$HERE/systemd/outpost-agent.service.d/jetson-gpu.conf" "$R$UNIT_DIR/outpost-agent.service.d/"
      say "Jetson: GPU device allow-list installed (jetson-gpu.conf)"
    fi
    if [ -n "$PROFILE" ]; then
      profile="$HERE/../device_tests/profiles/$PROFILE.toml"
      [ -f "$profile" ] || die "no device profile $PROFILE (device_tests/profiles/)"
      peak=$(sed -n 's/^peak_rss_mb *= *\([0-9.]*\).*/\1/p' "$profile" | head -n1)
      [ -n "$peak" ] || die "$profile has no peak_rss_mb"
      high=${peak%.*}
      max=$((high + high / 4))
      printf '# from device_tests/profiles/%s.toml (peak_rss_mb = %s)\n[Service]\nMemoryHigh=%sM\nMemoryMax=%sM\n' \
        "$PROFILE" "$peak" "$high" "$max" >"$R$UNIT_DIR/outpost-agent.service.d/memory.conf"
      say "memory limits from profile $PROFILE: MemoryHigh=${high}M MemoryMax=${max}M"
    fi
    if systemd_runs; then
      systemctl daemon-reload
      systemctl enable --now outpost-agent.service
      say "outpost-agent.service enabled and started"
    else
      say "systemd is not running here (or --root was given): the unit is in $UNIT_DIR;"
      say "  on the device: systemctl daemon-reload && systemctl enable --now outpost-agent"
    fi
  fi

  if [ -f "$R$STATE/device.json" ]; then
    say "this device is enrolled already"
  else
    say "to enroll this device with a control plane:"
    say "  sudo -u $USER_NAME $OPT/venv/bin/outpost-agent enroll --server https://CONTROL-PLANE \\"
    say "    --token ONE-TIME-TOKEN --root-sha256 SHA256-OF-1.root.json --state-dir $STATE"
    say "  then: systemctl restart outpost-agent"
  fi
}

uninstall_agent() {
  if systemd_runs; then
    systemctl disable --now outpost-agent.service 2>/dev/null || true
  fi
  rm -f "$R$UNIT_DIR/outpost-agent.service"
  rm -rf "$R$UNIT_DIR/outpost-agent.service.d"
  if systemd_runs; then systemctl daemon-reload; fi
  if [ "$OS" = Darwin ] && [ "$ROOT" = / ]; then
    launchctl bootout system/dev.outpost.agent 2>/dev/null || true
  fi
  rm -f "$R/Library/LaunchDaemons/dev.outpost.agent.plist"
  rm -rf "$R$OPT/venv"
  rmdir "$R$OPT" 2>/dev/null || true
  if [ "$PURGE" = yes ]; then
    rm -rf "$R$STATE"
    if [ -n "$(uid_of "$USER_NAME")" ] && [ "$OS" != Darwin ]; then
      if [ "$ROOT" = / ]; then userdel "$USER_NAME"; else userdel --root "$ROOT" "$USER_NAME"; fi
    fi
    say "removed the agent, its state ($STATE) and the $USER_NAME user"
  else
    say "removed the agent; kept its state in $STATE and the $USER_NAME user (--purge removes both)"
  fi
}

case "$ACTION" in
  install) install_agent ;;
  uninstall) uninstall_agent ;;
esac
