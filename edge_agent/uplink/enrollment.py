"""Enrollment: pin the image repository's root, make a device key, register the device."""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root

from edge_agent.errors import ConfigError, UntrustedSignatureError
from edge_agent.store import (
    DeviceIdentity,
    ReleaseFiles,
    create_api_token,
    is_enrolled,
    write_device_key,
    write_identity,
    write_trusted_root,
)
from edge_agent.store.identity import KIOSK_FILE
from edge_agent.trust import DirectorTrust
from edge_agent.uplink.client import enroll_device, fetch_root_metadata
from protocol import EnrollRequest, HardwareFacts, generate_key_pair
from protocol.messages import InstalledRelease


@dataclass(frozen=True)
class RootPin:
    """How the device decides which first root to trust.

    ``sha256`` pins the bytes of ``1.root.json`` fetched from the server; ``root`` gives the
    bytes out of band (then ``sha256``, if also given, is checked against them too).
    ``insecure_trust_first_root`` trusts whatever the server sends: only for throwaway demos.
    """

    sha256: str | None = None
    root: bytes | None = None
    insecure_trust_first_root: bool = False


def detect_hardware() -> HardwareFacts:
    """The facts an operator targets cohorts by."""
    return HardwareFacts(
        arch=platform.machine()[:32] or "unknown",
        os=platform.system().lower()[:32] or "unknown",
        cpu_count=os.cpu_count() or 1,
        ram_mb=max(1, psutil.virtual_memory().total // (1 << 20)),
        accelerators=[],
    )


def trusted_first_root(http: httpx.Client, pin: RootPin) -> bytes:
    """The root bytes to trust, checked against the pin; refuse otherwise."""
    if pin.sha256 is None and pin.root is None and not pin.insecure_trust_first_root:
        raise ConfigError(
            "give the root's sha256 (--root-sha256, printed by `control_plane init`) or the"
            " root file (--root); refusing to trust a root nobody vouched for"
        )
    root = pin.root if pin.root is not None else fetch_root_metadata(http, 1)
    if pin.sha256 is not None:
        actual = hashlib.sha256(root).hexdigest()
        if actual != pin.sha256.strip().lower():
            raise UntrustedSignatureError(
                f"the server's 1.root.json hashes to {actual}, not the pinned {pin.sha256};"
                " refusing to enroll (wrong server, or someone in the middle)"
            )
    try:
        metadata = Metadata[Root].from_bytes(root)
        metadata.signed.verify_delegate(Root.type, metadata.signed_bytes, metadata.signatures)
    except (RepositoryError, ValueError, TypeError) as e:
        raise UntrustedSignatureError(
            f"the pinned root is not valid self-signed TUF root: {e}"
        ) from e
    DirectorTrust.from_root_signed(metadata.signed.unrecognized_fields)
    return root


def installed_before_enrollment(state_dir: Path) -> InstalledRelease | None:
    """The release an offline bundle installed on this never-enrolled device, for the
    control plane to adopt (it then numbers assignments above its version)."""
    if not (state_dir / KIOSK_FILE).exists():
        return None
    release = ReleaseFiles(state_dir).serveable_release()
    if release is None:
        return None
    return InstalledRelease(
        release_id=release.release_id, assignment_version=release.assignment_version
    )


def enroll(
    http: httpx.Client,
    *,
    state_dir: Path,
    server_url: str,
    token: str,
    pin: RootPin,
    name: str,
    tags: list[str],
    hardware: HardwareFacts | None = None,
) -> DeviceIdentity:
    """Enroll this device and write its state; the state dir must not hold a device yet."""
    if is_enrolled(state_dir):
        raise ConfigError(
            f"{state_dir} already holds an enrolled device; use a fresh --state-dir to enroll again"
        )
    root = trusted_first_root(http, pin)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    key = generate_key_pair()
    request = EnrollRequest(
        token=token,
        device_public_key=key.public_hex,
        name=name,
        hardware=hardware or detect_hardware(),
        tags=tags,
        installed=installed_before_enrollment(state_dir),
    )
    response = enroll_device(http, request)
    write_device_key(state_dir, key)
    write_trusted_root(state_dir, root)
    create_api_token(state_dir)
    identity = DeviceIdentity(device_id=response.device_id, server_url=server_url, name=name)
    write_identity(state_dir, identity)
    return identity
