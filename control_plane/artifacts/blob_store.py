"""A content-addressed blob store on disk: ``<root>/sha256/<hex>``.

Uploads stream into ``<root>/tmp`` while being hashed and counted against a hard cap;
a complete upload is fsynced and renamed into place, so a blob is either whole or
absent.
"""

from __future__ import annotations

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
            self.discard()
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.temp_path, final)
        _fsync_dir(final.parent)
        return final

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def prepare(self, *, now: float | None = None) -> list[Path]:
        """Create the folders; delete upload temp files a crashed process left behind.

        Only files older than :data:`STALE_UPLOAD_SECONDS` go: replicas sharing the data
        dir may have uploads in flight. Returns what was removed.
        """
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        cutoff = (time.time() if now is None else now) - STALE_UPLOAD_SECONDS
        removed = []
        for leftover in self.tmp_dir.iterdir():
            try:
                if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed.append(leftover)
            except FileNotFoundError:
                continue  # another replica cleaned it up first
        return removed

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / "sha256" / sha256

    def start_upload(self, max_bytes: int) -> Upload:
        return Upload(self, max_bytes)
