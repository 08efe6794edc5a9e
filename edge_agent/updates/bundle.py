"""Install a release from an offline bundle (``outpost-agent install-bundle``), no network.

The bundle (:mod:`protocol.bundle`, docs/packaging.md) is unpacked into the state
directory and then *served to the ordinary update loop* by :class:`BundleTransport`, an
``httpx`` transport that answers the control plane's paths from the unpacked files. So a
bundle install is verified and installed by exactly the code of a network update: TUF
metadata through python-tuf (:class:`~edge_agent.updates.ImageMetadataClient`), the
director's assignment (:func:`~edge_agent.trust.verify_assignment`), every artifact hash
(:class:`~edge_agent.updates.ArtifactDownloader`), the store's journal, activation, the
health window and rollback. Before that, the bundle's own checks: its tar structure and
size, the director-signed manifest (binding to this device or its class, expiry) and the
sha256 of every member, wheels and SBOM included.

Expiry rule: a bundle past its ``expires_at`` (or whose TUF metadata expired) installs
nothing; whatever the device serves keeps serving.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import httpx
from pydantic import ValidationError

from edge_agent.errors import (
    BadUpdateError,
    ConfigError,
    DiskFullError,
    ExpiredUpdateError,
    TamperedArtifactError,
)
from edge_agent.store import sha256_file
from edge_agent.store.durable import write_atomically
from edge_agent.store.identity import (
    DEVICE_KEY_FILE,
    KIOSK_FILE,
    TRUSTED_ROOT_FILE,
    DeviceIdentity,
    create_api_token,
    is_enrolled,
    load_identity,
    load_trusted_root,
    write_device_key,
    write_trusted_root,
)
from edge_agent.trust import open_director_document
from edge_agent.updates.tuf_client import ImageMetadataClient
from edge_agent.uplink.enrollment import RootPin, trusted_first_root
from protocol import SignedEnvelope, paths
from protocol.bundle import (
    ASSIGNMENT_FILE,
    BUNDLE_MANIFEST_PAYLOAD_TYPE,
    BUNDLE_ROOT,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_NAME,
    MAX_MEMBERS,
    METADATA_DIR,
    TARGETS_DIR,
    BundleManifest,
    device_class_binding,
)
from protocol.keys import generate_key_pair

BUNDLE_URL = "http://bundle.invalid"  # never resolved: BundleTransport answers it
WORK_DIR = "bundle-work"
BUNDLE_TUF_DIR = "tuf-bundle"  # bundle metadata never mixes with the network's
RUNBOOK = "docs/runbooks/bundle-refused.md"
_CHUNK = 1 << 20


def _refused(error: type[BadUpdateError], message: str) -> BadUpdateError:
    return error(f"bundle refused: {message}; nothing was installed (see {RUNBOOK})")


def unpack(bundle: Path, into: Path, *, free_bytes: int) -> Path:
    """Check the tar's structure, then unpack it into ``into``; the bundle root there.

    Only regular files under ``outpost-bundle/`` with plain relative names; no more than
    :data:`MAX_MEMBERS`; their total size must fit in ``free_bytes``. A damaged or cut
    short file is a :class:`TamperedArtifactError`."""
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            members = []
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise _refused(BadUpdateError, f"it has more than {MAX_MEMBERS} members")
                _check_member(member)
                total += member.size
            if total > free_bytes:
                raise DiskFullError(
                    f"the bundle unpacks to {total} bytes but {free_bytes} are free in {into};"
                    " free space and try again (the device keeps serving)"
                )
            into.mkdir(mode=0o700, parents=True, exist_ok=True)
            for member in members:
                target = into / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files only, checked above
                with source, target.open("wb") as out:
                    copied = 0
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                        copied += len(chunk)
                if copied != member.size:
                    raise tarfile.ReadError(f"{member.name} is cut short")
    except (tarfile.ReadError, EOFError) as e:
        raise _refused(
            TamperedArtifactError,
            f"{bundle.name} is not a complete tar file ({e}): truncated or"
            " damaged in transit; copy it again",
        ) from e
    root = into / BUNDLE_ROOT
    if not (root / MANIFEST_FILE).is_file():
        raise _refused(BadUpdateError, f"{bundle.name} holds no {BUNDLE_ROOT}/{MANIFEST_FILE}")
    return root


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if (
        len(name) > MAX_MEMBER_NAME + len(BUNDLE_ROOT) + 1
        or not member.isfile()
        or name.startswith("/")
        or len(parts) < 2
        or parts[0] != BUNDLE_ROOT
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in name
    ):
        raise _refused(BadUpdateError, f"member {name!r} is not a plain file of the bundle")


class BundleTransport(httpx.BaseTransport):
    """Answers the control plane's device paths from an unpacked bundle: TUF metadata,
    targets and the assignment; status reports get 503, so they stay in the outbox until
    the device reaches its control plane."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == paths.DEVICE_ASSIGNMENT:
            return self._file(self._root / ASSIGNMENT_FILE)
        if request.method == "GET" and path.startswith(paths.REPO_METADATA + "/"):
            name = path[len(paths.REPO_METADATA) + 1 :]
            return self._file(self._root / METADATA_DIR / name, plain=name)
        if request.method == "GET" and path.startswith(paths.REPO_TARGETS + "/"):
            name = path[len(paths.REPO_TARGETS) + 1 :]
            return self._file(self._root / TARGETS_DIR / name, plain=name)
        return httpx.Response(503, text="offline bundle: no control plane here")

    def _file(self, path: Path, *, plain: str | None = None) -> httpx.Response:
        if plain is not None and any(p in ("", ".", "..") for p in plain.split("/")):
            return httpx.Response(404)
        if not path.is_file():
            return httpx.Response(404)
        return httpx.Response(
            200,
            headers={"Content-Length": str(path.stat().st_size)},
            stream=_FileStream(path),
        )


class _FileStream(httpx.SyncByteStream):
    def __init__(self, path: Path) -> None:
        self._path = path

    def __iter__(self) -> Iterator[bytes]:
        with self._path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def bundle_http(root: Path) -> httpx.Client:
    return httpx.Client(base_url=BUNDLE_URL, transport=BundleTransport(root), timeout=60)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose manifest the director signed for this device and whose every
    member matches it. ``binding``: the device id the assignment inside must name."""

    root: Path
    manifest: BundleManifest
    binding: str
    trusted_root: bytes
    http: httpx.Client


def verify_bundle(
    root: Path,
    *,
    state_dir: Path,
    binding: str,
    pin: RootPin,
    now: datetime,
) -> VerifiedBundle:
    """Trust (the device's root, or the pinned first root), TUF metadata, the manifest
    and every member's hash, in that order; a :class:`BadUpdateError` says what failed."""
    http = bundle_http(root)
    try:
        trusted = (
            load_trusted_root(state_dir)
            if (state_dir / TRUSTED_ROOT_FILE).exists()
            else trusted_first_root(http, pin)
        )
        metadata = ImageMetadataClient(
            metadata_dir=state_dir / BUNDLE_TUF_DIR,
            metadata_url=BUNDLE_URL + paths.REPO_METADATA,
            trusted_root=trusted,
            http=http,
        ).refresh()
        if (root / MANIFEST_FILE).stat().st_size > MAX_MANIFEST_BYTES:
            raise _refused(BadUpdateError, f"its manifest is over {MAX_MANIFEST_BYTES} bytes")
        raw = (root / MANIFEST_FILE).read_bytes()
        try:
            envelope = SignedEnvelope.model_validate_json(raw)
        except ValidationError as e:
            raise _refused(BadUpdateError, "its manifest is not a signed envelope") from e
        manifest = open_director_document(
            envelope,
            director=metadata.director,
            device_id=binding,
            payload_type=BUNDLE_MANIFEST_PAYLOAD_TYPE,
            model=BundleManifest,
            what="bundle manifest",
            document="bundle manifest",
            keeping="release",
        )
        expires = manifest.expires_at
        if (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) <= now:
            raise _refused(
                ExpiredUpdateError,
                f"it expired at {expires.isoformat()}: no new install from it; the device"
                " keeps serving what it has. Ask for a fresh bundle",
            )
        _check_members(root, manifest)
    except BadUpdateError as e:
        http.close()
        if str(e).startswith("bundle refused"):
            raise
        raise _refused(type(e), str(e)) from e
    except BaseException:
        http.close()
        raise
    return VerifiedBundle(root, manifest, binding, trusted, http)


def _check_members(root: Path, manifest: BundleManifest) -> None:
    listed = {f.path: f for f in manifest.files}
    present = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()
    }
    present.discard(MANIFEST_FILE)
    extra = sorted(present - set(listed))
    if extra:
        raise _refused(TamperedArtifactError, f"it holds files its manifest does not list: {extra}")
    for name, entry in listed.items():
        path = root / name
        if not path.is_file() or path.is_symlink():
            raise _refused(TamperedArtifactError, f"{name} is missing (the manifest lists it)")
        if path.stat().st_size != entry.length or sha256_file(path) != entry.sha256:
            raise _refused(
                TamperedArtifactError,
                f"{name} does not match the sha256 and length its signed manifest gives",
            )


def binding_for(state_dir: Path, device_class: str | None) -> str:
    """Who this device is to a bundle: its device class when given, else its own id."""
    if device_class is not None:
        try:
            return device_class_binding(device_class)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if is_enrolled(state_dir):
        return load_identity(state_dir).device_id
    raise ConfigError(
        "this device is not enrolled: give its class with --device-class (the bundle's"
        " --device-class) so the bundle's assignment can be checked against it"
    )


def prepare_state_dir(state_dir: Path, *, root: bytes, binding: str) -> None:
    """What ``run`` needs on a device that was never enrolled: the trusted root the
    bundle was verified against, a device key (replaced at enrollment), a local API
    token, and the kiosk file that lets ``run`` serve without a control plane."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if is_enrolled(state_dir):
        return
    if not (state_dir / TRUSTED_ROOT_FILE).exists():
        write_trusted_root(state_dir, root)
    if not (state_dir / DEVICE_KEY_FILE).exists():
        write_device_key(state_dir, generate_key_pair())
    create_api_token(state_dir)
    write_atomically(
        state_dir / KIOSK_FILE, (json.dumps({"bound_to": binding}) + "\n").encode(), mode=0o644
    )


def offline_kiosk_identity(state_dir: Path) -> DeviceIdentity | None:
    """The identity ``run`` uses on a device set up by a bundle and never enrolled: its
    update loop finds no control plane (``offline.invalid``) and serves what it has."""
    if is_enrolled(state_dir) or not (state_dir / KIOSK_FILE).exists():
        return None
    try:
        bound = str(json.loads((state_dir / KIOSK_FILE).read_text())["bound_to"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{state_dir / KIOSK_FILE} is damaged; install the bundle again") from e
    return DeviceIdentity(device_id=bound, server_url="http://offline.invalid", name="kiosk")


def work_dir(state_dir: Path) -> Path:
    """Where a bundle is unpacked (same filesystem as the store); emptied first."""
    path = state_dir / WORK_DIR
    shutil.rmtree(path, ignore_errors=True)
    return path
