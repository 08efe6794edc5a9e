#!/bin/sh
# Control-plane container entrypoint: initialize the data volume on first start, then
# serve. The admin token and the offline keys that `init` creates never reach the logs:
# the token is in $DATA/init.json (0600); move keys/offline/ off the volume afterwards
# (docs/packaging.md, "Control-plane image").
#
#   OUTPOST_CP_DATA_DIR   the volume (default /var/lib/outpost-cp)
#   OUTPOST_CP_HOST/PORT  where to listen (default 0.0.0.0:8700)
#   OUTPOST_CP_DATABASE_URL  PostgreSQL instead of SQLite on the volume (optional)
#   OUTPOST_CP_BIN        the outpost-cp command (default: outpost-cp on PATH)
set -eu

DATA=${OUTPOST_CP_DATA_DIR:-/var/lib/outpost-cp}
HOST=${OUTPOST_CP_HOST:-0.0.0.0}
PORT=${OUTPOST_CP_PORT:-8700}
CP=${OUTPOST_CP_BIN:-outpost-cp}

if [ "$#" -gt 0 ]; then
  exec "$CP" "$@"  # e.g. `podman run IMAGE bundle create ...` or `rotate-key`
fi

umask 077
if [ ! -w "$DATA" ]; then
  echo "outpost-cp-entrypoint: $DATA is not writable by uid $(id -u); mount a volume there" >&2
  exit 2
fi
DB_ARGS=
if [ -n "${OUTPOST_CP_DATABASE_URL:-}" ]; then
  DB_ARGS="--database-url $OUTPOST_CP_DATABASE_URL"
fi
if [ ! -f "$DATA/root.json" ]; then
  # shellcheck disable=SC2086  # DB_ARGS holds two words or none
  "$CP" init --data-dir "$DATA" $DB_ARGS >"$DATA/init.json"
  chmod 0600 "$DATA/init.json"
  echo "outpost-cp-entrypoint: initialized $DATA; the admin token is in $DATA/init.json" \
    "(read it once, then delete it); move $DATA/keys/offline off this volume" >&2
fi
# shellcheck disable=SC2086
exec "$CP" serve --data-dir "$DATA" --host "$HOST" --port "$PORT" $DB_ARGS
