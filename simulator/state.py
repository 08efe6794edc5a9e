"""The simulated fleet's identities and install progress as JSON, to resume a run.

The file holds device private keys: it is written with mode 0600, atomically. An install
in its health window is not saved (after a resume the device installs it again).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from protocol import Ed25519KeyPair, HardwareFacts
from simulator.behaviour import BehaviourFunction
from simulator.device import Serving, SimDevice
from simulator.errors import SetupError
from simulator.profiles import DeviceProfile

FORMAT = "outpost-simulator-state/v1"


def device_to_json(device: SimDevice) -> dict[str, Any]:
    raw = device.key.private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    serving = device.pending.prior if device.pending is not None else device.serving
    return {
        "index": device.index,
        "name": device.profile.name,
        "tags": list(device.profile.tags),
        "hardware": device.profile.hardware.model_dump(mode="json"),
        "private_key": raw.hex(),
        "device_id": device.device_id,
        "serving": None
        if serving is None
        else {"assignment_version": serving.assignment_version, "release_id": serving.release_id},
        "highest_accepted": device.highest_accepted,
        "given_up": device.given_up,
    }


def device_from_json(entry: dict[str, Any], behaviour: BehaviourFunction) -> SimDevice:
    try:
        index = int(entry["index"])
        key = Ed25519KeyPair(
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(entry["private_key"]))
        )
        serving = entry.get("serving")
        return SimDevice(
            index=index,
            profile=DeviceProfile(
                name=str(entry["name"]),
                tags=tuple(str(t) for t in entry["tags"]),
                hardware=HardwareFacts.model_validate(entry["hardware"]),
            ),
            behaviour=behaviour(index),
            key=key,
            device_id=entry.get("device_id"),
            serving=None
            if serving is None
            else Serving(int(serving["assignment_version"]), str(serving["release_id"])),
            highest_accepted=entry.get("highest_accepted"),
            given_up=entry.get("given_up"),
        )
    except (KeyError, TypeError, ValueError, ValidationError) as e:
        raise SetupError(f"a device entry in the state file is malformed: {e}") from e


def save(devices: Sequence[SimDevice], path: Path, *, server: str = "") -> None:
    """Write the fleet's state to ``path`` (mode 0600, temp file then rename)."""
    document = {
        "format": FORMAT,
        "server": server,
        "devices": [device_to_json(d) for d in devices],
    }
    data = json.dumps(document, indent=1).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load(path: Path, behaviour: BehaviourFunction) -> list[SimDevice]:
    """Read a state file written by :func:`save`; behaviours come from ``behaviour``."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise SetupError(f"cannot read the simulator state file {path}: {e}") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SetupError(f"{path} is not a simulator state file ({FORMAT})")
    entries = document.get("devices")
    if not isinstance(entries, list):
        raise SetupError(f"{path} lists no devices")
    devices = [device_from_json(e, behaviour) for e in entries]
    indices = [d.index for d in devices]
    if len(set(indices)) != len(indices):
        raise SetupError(f"{path} lists a device index twice")
    return sorted(devices, key=lambda d: d.index)
