"""Where the repository's private keys live on disk, and loading them.

Offline keys (root, targets) sign rarely and belong on a release manager's machine;
the server reads the targets key only while publishing, from ``offline_keys_dir``.
Online keys (snapshot, timestamp, director) sign automatically and stay on the server.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from control_plane.errors import (
    AlreadyInitializedError,
    NotInitializedError,
    TargetsKeyOfflineError,
)
from protocol.keys import Ed25519KeyPair, generate_key_pair, load_private_key, write_private_key

OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp", "director")


@dataclass(frozen=True)
class OnlineKeys:
    snapshot: Ed25519KeyPair
    timestamp: Ed25519KeyPair
    director: Ed25519KeyPair


@dataclass(frozen=True)
class GeneratedKeys:
    root: Ed25519KeyPair
    targets: Ed25519KeyPair
    online: OnlineKeys


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


class Keyring:
    """The key files of one control plane."""

    def __init__(self, *, offline_dir: Path, online_dir: Path) -> None:
        self.offline_dir = offline_dir
        self.online_dir = online_dir

    def path(self, role: str) -> Path:
        folder = self.offline_dir if role in OFFLINE_ROLES else self.online_dir
        return folder / f"{role}.key"

    def generate(self) -> GeneratedKeys:
        """Create every key file (mode 0600, folders 0700); refuse to overwrite any."""
        existing = [
            str(self.path(r)) for r in OFFLINE_ROLES + ONLINE_ROLES if self.path(r).exists()
        ]
        if existing:
            raise AlreadyInitializedError(
                f"key files already exist ({', '.join(existing)}); refusing to overwrite them"
            )
        _private_dir(self.offline_dir.parent)
        _private_dir(self.offline_dir)
        _private_dir(self.online_dir)
        pairs = {role: generate_key_pair() for role in OFFLINE_ROLES + ONLINE_ROLES}
        for role, pair in pairs.items():
            write_private_key(pair, self.path(role))
        return GeneratedKeys(
            root=pairs["root"],
            targets=pairs["targets"],
            online=OnlineKeys(pairs["snapshot"], pairs["timestamp"], pairs["director"]),
        )

    def load_online(self) -> OnlineKeys:
        missing = [str(self.path(r)) for r in ONLINE_ROLES if not self.path(r).exists()]
        if missing:
            raise NotInitializedError(
                f"online key files are missing ({', '.join(missing)}); run 'outpost-cp init'"
            )
        return OnlineKeys(*(load_private_key(self.path(r)) for r in ONLINE_ROLES))

    def staged_path(self, role: str) -> Path:
        """Where ``rotate-key`` writes a new key before the database trusts it."""
        return self.path(role).with_name(f"{role}.key.new")

    def load_targets(self) -> Ed25519KeyPair:
        path = self.path("targets")
        if not path.exists():
            raise TargetsKeyOfflineError(
                f"the targets key is offline (no file at {path}): publishing needs it."
                " Mount or copy the targets key there (or set OUTPOST_CP_OFFLINE_KEYS_DIR)"
                " for the duration of the publish, then remove it again"
            )
        return load_private_key(path)


_FileStamp = tuple[int, int, int]


def _stamp(path: Path) -> _FileStamp:
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class OnlineKeySource:
    """The online keys of a running server, re-read when a key file is replaced.

    ``outpost-cp rotate-key`` swaps key files in place (new inode), so a server picks up
    a rotated key on its next signature without a restart. Three ``stat`` calls per use.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._lock = threading.Lock()
        self._stamps: tuple[_FileStamp, ...] = ()
        self._keys: OnlineKeys | None = None

    def current(self) -> OnlineKeys:
        with self._lock:
            try:
                stamps = tuple(_stamp(self.keyring.path(r)) for r in ONLINE_ROLES)
            except FileNotFoundError:
                if self._keys is not None:
                    return self._keys  # mid-swap; the caller checks root trusts the key
                stamps = ()
            if self._keys is None or stamps != self._stamps:
                self._keys = self.keyring.load_online()
                self._stamps = stamps
            return self._keys
