"""A content-addressed blob store on disk: ``<root>/sha256/<hex>``.

Uploads stream into ``<root>/tmp`` while being hashed and counted against a hard cap;
a complete upload is fsynced and renamed into place, so a blob is either whole or
absent.

An upload holds an exclusive ``flock`` on its temp file until it is committed or
discarded: a temp file nobody holds a lock on belongs to a process that died (killed
mid-upload) and is removed at start-up and by the collector, whatever its age; replicas
sharing the data dir keep theirs. A committed blob whose row never got written (a kill
between the rename and the insert) is an orphan: :meth:`BlobStore.orphans` finds those
past a grace period, for ``control_plane.artifacts.collector`` to delete.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from control_plane.errors import ArtifactTooLargeError

# An upload temp file untouched for this long belongs to a process that died mid-upload.
STALE_UPLOAD_SECONDS = 24 * 3600

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Upload:
    """One incoming blob: ``write`` chunks, then ``finish``, then ``commit`` or ``discard``."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self.length = 0
        self.temp_path = store.tmp_dir / f"upload-{uuid.uuid4().hex}"
        # the file outlives __init__: finish() or discard() closes it, so no `with` here
        self._file: BinaryIO | None = open(self.temp_path, "xb")  # noqa: SIM115
        # held until commit() or discard(): "a live process owns this temp file"
        self._lock_fd: int | None = os.open(self.temp_path, os.O_RDONLY)
        _try_lock(self._lock_fd)

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError("upload already finished")
        self.length += len(chunk)
        if self.length > self._max_bytes:
            self.discard()
            raise ArtifactTooLargeError(
                f"artifact exceeds the limit of {self._max_bytes} bytes"
                " (OUTPOST_CP_MAX_ARTIFACT_BYTES); nothing was stored"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> str:
        """Flush to disk; return the hex SHA-256 of everything written."""
        if self._file is None:
            raise RuntimeError("upload already finished")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return self._hash.hexdigest()

    def commit(self, sha256: str) -> Path:
        """Move the finished upload to its content address (kept if already there)."""
        final = self._store.path(sha256)
        if final.exists():
            os.utime(final)  # the collector's grace period starts again: a row follows
            self.discard()
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.utime(self.temp_path)  # committed now (the collector's grace counts from here)
        os.replace(self.temp_path, final)
        _fsync_dir(final.parent)
        self._unlock()
        return final

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _try_lock(fd: int) -> bool | None:
    """Take an exclusive flock without waiting: True if taken, False if another open file
    holds it, None where the file system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    return True


def _abandoned(path: Path, cutoff: float) -> bool:
    """Whether no live upload owns this temp file (by its lock, else by its age)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        taken = _try_lock(fd)
        if taken is None:
            return os.fstat(fd).st_mtime < cutoff
        return taken
    finally:
        os.close(fd)  # releases the lock if we took it


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def prepare(self, *, now: float | None = None) -> list[Path]:
        """Create the folders; delete upload temp files a dead process left behind.

        A temp file is abandoned when no process holds its lock (where the file system
        has no locks: when untouched for :data:`STALE_UPLOAD_SECONDS`). Uploads in flight
        on replicas sharing the data dir hold theirs. Returns what was removed.
        """
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        cutoff = (time.time() if now is None else now) - STALE_UPLOAD_SECONDS
        removed = []
        for leftover in self.tmp_dir.iterdir():
            try:
                if leftover.is_file() and _abandoned(leftover, cutoff):
                    leftover.unlink()
                    removed.append(leftover)
            except FileNotFoundError:
                continue  # another replica cleaned it up first
        return removed

    def blob_names(self) -> list[str]:
        """The sha256 of every committed blob."""
        folder = self.root / "sha256"
        return sorted(p.name for p in folder.iterdir() if _SHA256.match(p.name))

    def orphans(self, known: set[str], *, now: float, grace_seconds: float) -> list[Path]:
        """Committed blobs not in ``known`` and committed more than ``grace_seconds`` ago
        (younger ones may be a live upload about to write its row)."""
        found = []
        for name in self.blob_names():
            if name in known:
                continue
            path = self.path(name)
            try:
                if path.stat().st_mtime < now - grace_seconds:
                    found.append(path)
            except FileNotFoundError:
                continue
        return found

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / "sha256" / sha256

    def start_upload(self, max_bytes: int) -> Upload:
        return Upload(self, max_bytes)
