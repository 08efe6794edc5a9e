"""The device's identity on disk: who it is, where its control plane is, what it trusts."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from edge_agent.errors import ConfigError
from edge_agent.store.durable import write_atomically
from protocol import Ed25519KeyPair, load_private_key, write_private_key

DEVICE_FILE = "device.json"
DEVICE_KEY_FILE = "device.key"
TRUSTED_ROOT_FILE = "trusted-root.json"
API_TOKEN_FILE = "api-token"
# written by install-bundle on a device that was never enrolled (edge_agent.updates.bundle)
KIOSK_FILE = "offline-kiosk.json"


@dataclass(frozen=True)
class DeviceIdentity:
    """What enrollment established. The key and root are loaded by their own functions."""

    device_id: str
    server_url: str
    name: str


def is_enrolled(state_dir: Path) -> bool:
    return (state_dir / DEVICE_FILE).exists()


def write_identity(state_dir: Path, identity: DeviceIdentity) -> None:
    body = {
        "device_id": identity.device_id,
        "server_url": identity.server_url,
        "name": identity.name,
    }
    write_atomically(state_dir / DEVICE_FILE, json.dumps(body, indent=2).encode(), mode=0o644)


def load_identity(state_dir: Path) -> DeviceIdentity:
    """Read ``device.json``; :class:`ConfigError` if the device was never enrolled."""
    path = state_dir / DEVICE_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return DeviceIdentity(
            device_id=str(body["device_id"]),
            server_url=str(body["server_url"]),
            name=str(body["name"]),
        )
    except FileNotFoundError as e:
        raise ConfigError(
            f"{state_dir} holds no enrolled device; run `python -m edge_agent enroll` first"
        ) from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged; re-enroll the device") from e


def write_device_key(state_dir: Path, pair: Ed25519KeyPair) -> None:
    write_private_key(pair, state_dir / DEVICE_KEY_FILE)


def load_device_key(state_dir: Path) -> Ed25519KeyPair:
    path = state_dir / DEVICE_KEY_FILE
    if not path.exists():
        raise ConfigError(f"device key {path} is missing; re-enroll the device")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"device key {path} is readable by others; run chmod 600 {path}")
    return load_private_key(path)


def write_trusted_root(state_dir: Path, root: bytes) -> None:
    write_atomically(state_dir / TRUSTED_ROOT_FILE, root, mode=0o644)


def load_trusted_root(state_dir: Path) -> bytes:
    path = state_dir / TRUSTED_ROOT_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"trusted root {path} is missing; re-enroll the device") from e


def create_api_token(state_dir: Path) -> None:
    """Write a fresh local API token (mode 0600) unless one exists."""
    path = state_dir / API_TOKEN_FILE
    if path.exists():
        return
    write_atomically(path, secrets.token_urlsafe(32).encode(), mode=0o600)


def load_api_token(state_dir: Path) -> SecretStr:
    path = state_dir / API_TOKEN_FILE
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others; run chmod 600 {path}")
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as e:
        raise ConfigError(f"local API token {path} is missing; re-enroll the device") from e
    if len(token) < 16:
        raise ConfigError(f"local API token in {path} is too short (16 characters at least)")
    return SecretStr(token)
