"""Resumable artifact downloads, bounded by the signed length, admitted only by hash, and
never started without room for them on the state directory's filesystem."""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from edge_agent.errors import DiskFullError, TamperedArtifactError, TransportError
from edge_agent.store import STORE_RUNBOOK, ReleaseStore, free_bytes
from edge_agent.updates.delta import (
    DeltaDownloader,
    DeltaResult,
    DeltaUnavailable,
    tampered_to_unavailable,
)
from edge_agent.uplink.client import content_encoding
from protocol import TargetRef
from protocol.chunking import CHUNKS_CUSTOM_KEY

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

Checkpoint = Callable[[str], None]
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def not_enough_space(*, need: int, have: int, margin: int, where: Path) -> str:
    """The words of a refused download: what it needs, what there is (bytes and MB)."""
    return (
        f"not enough space: need {need} bytes ({need / 1e6:.1f} MB, of which {margin} kept"
        f" free: setting download_free_space_margin_bytes), have {have} bytes"
        f" ({have / 1e6:.1f} MB) free on the filesystem of {where}; nothing was installed and"
        f" the device keeps serving its current release (free space, or see {STORE_RUNBOOK})"
    )


class ArtifactDownloader:
    """Fetch a target into ``downloads/<sha256>.part`` and admit it into the store.

    A partial file from an earlier attempt is resumed with an HTTP Range request. The
    signed length is a hard bound: the moment a response would exceed it, the partial
    file is deleted and :class:`TamperedArtifactError` is raised; no excess byte is
    written. Only bytes whose sha256 matches the signed hash ever leave ``downloads/``.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        targets_url: str,
        store: ReleaseStore,
        chunk_bytes: int = 1 << 20,
        stop: threading.Event | None = None,
        checkpoint: Checkpoint | None = None,
        free_space_margin: int = 0,
        delta: bool = True,
    ) -> None:
        """``delta``: first try to rebuild a changed artifact from the chunks the device
        already has (see :mod:`edge_agent.updates.delta`), else download it whole."""
        self._http = http
        self._base = targets_url.rstrip("/")
        self._store = store
        self._chunk = chunk_bytes
        self._margin = free_space_margin
        self._stop = stop or threading.Event()
        self._checkpoint = checkpoint or (lambda step: None)
        self._delta = (
            DeltaDownloader(
                http,
                targets_url=targets_url,
                store=store,
                stop=self._stop,
                checkpoint=self._checkpoint,
            )
            if delta
            else None
        )
        self.last_delta: dict[str, DeltaResult | str] = {}  # target name: result or why not
        self._no_delta: set[str] = set()  # fell back once: resume the full download instead

    def missing_bytes(self, targets: Sequence[TargetRef]) -> int:
        """How many bytes downloading ``targets`` still has to write (partials count)."""
        missing = 0
        for target in targets:
            if self._store.has_blob(target.sha256, target.length):
                continue
            part = self._store.partial_path(target.sha256)
            have = part.stat().st_size if part.is_file() and not part.is_symlink() else 0
            missing += target.length - have if have <= target.length else target.length
        return missing

    def ensure_space(self, targets: Sequence[TargetRef]) -> None:
        """Raise :class:`DiskFullError` unless the signed lengths still to download, plus
        the margin, fit in the free space; nothing is written either way."""
        missing = self.missing_bytes(targets)
        if missing == 0:
            return
        have = free_bytes(self._store.downloads_dir)
        need = missing + self._margin
        if need > have:
            raise DiskFullError(
                not_enough_space(
                    need=need, have=have, margin=self._margin, where=self._store.state_dir
                )
            )

    def fetch(self, target: TargetRef, custom: Mapping[str, Any] | None = None) -> Path:
        """Return the store path of the verified blob for ``target``.

        ``custom``: the target's signed custom metadata; when it names a chunk manifest,
        a delta download is tried first and any reason it cannot be used falls back to
        the full download (a lost connection does not: the next cycle resumes the delta).
        """
        if self._store.has_blob(target.sha256, target.length):
            return self._store.blob_path(target.sha256)
        if (
            self._delta is not None
            and custom is not None
            and CHUNKS_CUSTOM_KEY in custom
            and target.sha256 not in self._no_delta
        ):
            try:
                result = self._delta.fetch(target, custom)
                blob = self._store.admit_partial(target.sha256, target.length)
                self.last_delta[target.name] = result
                return blob
            except TamperedArtifactError as e:  # admit_partial discarded the partial file
                self._fell_back(target, tampered_to_unavailable(e))
            except DeltaUnavailable as e:
                self._fell_back(target, e)
            except OSError as e:
                if e.errno not in _DISK_FULL:
                    raise
                self._store.discard_partial(target.sha256)
                raise DiskFullError(
                    not_enough_space(
                        need=target.length + self._margin,
                        have=free_bytes(self._store.downloads_dir),
                        margin=self._margin,
                        where=self._store.state_dir,
                    )
                    + f"; the disk filled while {target.name} was rebuilt from a delta"
                ) from e
        part = self._store.partial_path(target.sha256)
        if part.is_symlink():  # never resume into (or through) a planted link
            self._store.discard_partial(target.sha256)
        offset = part.stat().st_size if part.exists() else 0
        if offset > target.length:
            self._store.discard_partial(target.sha256)
            offset = 0
        if offset < target.length:
            self._download(target, part, offset)
        return self._store.admit_partial(target.sha256, target.length)

    def _fell_back(self, target: TargetRef, why: DeltaUnavailable) -> None:
        """The delta cannot be used: the full download resumes from the verified chunks
        already written, or starts from nothing when the range answers were wrong."""
        log.info("%s: downloading it whole (no delta: %s)", target.name, why)
        self.last_delta[target.name] = str(why)
        self._no_delta.add(target.sha256)  # until a restart: retries resume the full download
        if why.discard:
            self._store.discard_partial(target.sha256)

    def _tampered(self, target: TargetRef, message: str) -> TamperedArtifactError:
        self._store.discard_partial(target.sha256)
        return TamperedArtifactError(
            f"artifact {target.name} ({target.path}): {message}; the download was discarded"
            " and the device keeps its current release"
        )

    def _download(self, target: TargetRef, part: Path, offset: int) -> None:
        url = f"{self._base}/{target.path}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                offset = self._resume_point(target, response, offset)
                encoding = content_encoding(response)
                if encoding is not None:  # never inflated: a gzip bomb bypasses the bound
                    raise TransportError(
                        f"GET {target.path} answered a {encoding!r}-encoded body; only identity"
                        " encoding is accepted; will retry"
                    )
                announced = response.headers.get("Content-Length")
                if (
                    announced is not None
                    and announced.isdigit()
                    and offset + int(announced) > target.length
                ):
                    raise self._tampered(
                        target,
                        f"the server announces {offset + int(announced)} bytes but only"
                        f" {target.length} are signed",
                    )
                self._write(target, part, offset, response)
        except OSError as e:
            if e.errno not in _DISK_FULL:
                raise
            self._store.discard_partial(target.sha256)  # give the space back at once
            raise DiskFullError(
                not_enough_space(
                    need=target.length + self._margin,
                    have=free_bytes(self._store.downloads_dir),
                    margin=self._margin,
                    where=self._store.state_dir,
                )
                + f"; the disk filled during the download of {target.name}, whose partial"
                " file was deleted"
            ) from e
        except httpx.HTTPError as e:
            raise TransportError(
                f"download of {target.name} interrupted ({type(e).__name__}); it resumes"
                " from the bytes already received"
            ) from e

    def _resume_point(self, target: TargetRef, response: httpx.Response, offset: int) -> int:
        status = response.status_code
        if status == 200:
            return 0
        if status == 206 and offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is not None and int(match.group(1)) == offset:
                return offset
            self._store.discard_partial(target.sha256)
            raise TransportError(
                f"the server answered an unexpected range for {target.name}; restarting it"
            )
        if status == 416:
            self._store.discard_partial(target.sha256)
        raise TransportError(f"GET {target.path} answered HTTP {status}; will retry")

    def _write(self, target: TargetRef, part: Path, offset: int, response: httpx.Response) -> None:
        received = offset
        first = True
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if offset else os.O_TRUNC)
        with os.fdopen(os.open(part, flags, 0o600), "ab" if offset else "wb") as f:
            for chunk in response.iter_bytes(self._chunk):
                if received + len(chunk) > target.length:
                    f.close()
                    raise self._tampered(
                        target, f"the server sent more than the {target.length} signed bytes"
                    )
                f.write(chunk)
                received += len(chunk)
                if first:
                    f.flush()
                    os.fsync(f.fileno())
                    self._checkpoint("download")
                    first = False
                if self._stop.is_set():
                    f.flush()
                    os.fsync(f.fileno())
                    raise TransportError(
                        f"download of {target.name} paused for shutdown at {received} bytes"
                    )
            f.flush()
            os.fsync(f.fileno())
        if received < target.length:
            raise TransportError(
                f"download of {target.name} ended after {received} of {target.length} bytes;"
                " it resumes from there"
            )
