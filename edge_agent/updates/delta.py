"""Delta downloads: rebuild a new artifact from the chunks the device already has, fetching
only the chunks it lacks as HTTP range requests against the full artifact.

The chunk manifest comes from the control plane beside the artifact; its sha256 and length
are in the artifact's signed target custom metadata (``chunks``), so it is checked like any
signed download. The new artifact is written, chunk by verified chunk and in order, into
the same ``downloads/<sha256>.part`` a full download would use, and it enters the store
through the same :meth:`ReleaseStore.admit_partial`: only bytes hashing to the signed
sha256 with the signed length are ever admitted. A resumed delta re-hashes the partial
file's chunks and continues after the last good one.

Anything that makes a delta impossible or untrustworthy (no manifest, a manifest that does
not match its signed hash or does not describe the artifact, no local chunk in common, a
server that ignores ``Range``, a chunk whose bytes do not hash as the manifest says, a
rebuilt artifact that does not hash as signed) raises :class:`DeltaUnavailable`: the caller
discards the partial file and downloads the artifact whole. A lost connection raises
:class:`TransportError` instead: the next cycle resumes the delta where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edge_agent.errors import StoreUnwritableError, TamperedArtifactError, TransportError
from edge_agent.release import InstalledArtifact
from edge_agent.store import ReleaseStore
from edge_agent.uplink.client import content_encoding
from protocol import TargetRef
from protocol.chunking import (
    CHUNKS_CUSTOM_KEY,
    MAX_MANIFEST_BYTES,
    ChunkManifest,
    ChunkManifestError,
    ChunkParams,
    ChunkRef,
    Copy,
    DeltaPlan,
    chunk_file,
    chunk_manifest_path,
    decode_manifest,
    encode_manifest,
    plan_delta,
)

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Checkpoint = Callable[[str], None]


class DeltaUnavailable(Exception):
    """This artifact cannot be rebuilt from a delta; download it whole (the reason says why).

    The partial file holds only chunks that hashed as the signed manifest says, in order:
    a correct start of the artifact, which the full download resumes from. ``discard``:
    the range answers themselves were wrong (corrupted, another range, no Range at all),
    so the full download starts from nothing, without ranges.
    """

    def __init__(self, reason: str, *, discard: bool = False) -> None:
        super().__init__(reason)
        self.discard = discard


@dataclass(frozen=True)
class DeltaResult:
    """What one delta download did (bytes over the network and from local blobs)."""

    fetched_bytes: int
    reused_bytes: int
    ranges: int
    manifest_bytes: int


def params_key(params: ChunkParams) -> str:
    return f"gear32-v1:{params.min}:{params.avg}:{params.max}"


def signed_chunks_entry(target: TargetRef, custom: Mapping[str, Any]) -> tuple[str, str, int]:
    """The manifest's (path, sha256, length) from the artifact's signed custom metadata."""
    entry = custom.get(CHUNKS_CUSTOM_KEY)
    if not isinstance(entry, Mapping):
        raise DeltaUnavailable("the artifact's signed metadata names no chunk manifest")
    path, sha256, length = entry.get("path"), entry.get("sha256"), entry.get("length")
    if path != chunk_manifest_path(target.path):
        raise DeltaUnavailable(f"the signed chunk manifest path {path!r} is not the artifact's")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise DeltaUnavailable("the signed chunk manifest sha256 is malformed")
    if not isinstance(length, int) or isinstance(length, bool):
        raise DeltaUnavailable("the signed chunk manifest length is not a number")
    if not 0 < length <= MAX_MANIFEST_BYTES:
        raise DeltaUnavailable(f"the signed chunk manifest length {length} is out of bounds")
    return path, sha256, length


class DeltaDownloader:
    """Rebuilds ``target`` into its partial file from local blobs and range requests."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        targets_url: str,
        store: ReleaseStore,
        stop: threading.Event,
        checkpoint: Checkpoint,
        max_range_bytes: int = 8 << 20,
    ) -> None:
        self._http = http
        self._base = targets_url.rstrip("/")
        self._store = store
        self._stop = stop
        self._checkpoint = checkpoint
        self._max_range = max_range_bytes

    # --- what the device has -------------------------------------------------------------

    def bases(self, target: TargetRef) -> list[InstalledArtifact]:
        """The verified blobs of the releases on the device (current, previous) that are of
        the target's kind: where its unchanged chunks are likely to be."""
        found: dict[str, InstalledArtifact] = {}
        for name in self._store.pointers():
            if name is None:
                continue
            try:
                release = self._store.release_of(name)
            except Exception:  # an unreadable release is no base; recovery deals with it
                continue
            for artifact in release.artifacts:
                if (
                    artifact.kind == target.kind
                    and artifact.sha256 != target.sha256
                    and self._store.has_blob(artifact.sha256, artifact.length)
                ):
                    found.setdefault(artifact.sha256, artifact)
        return list(found.values())

    def local_chunks(self, base: InstalledArtifact, params: ChunkParams) -> ChunkManifest:
        """The chunk list of a verified blob: from the state database, else computed once."""
        key = params_key(params)
        cached = self._store.db.blob_chunks(base.sha256, key)
        if cached is not None:
            try:
                manifest = decode_manifest(cached, artifact_sha256=base.sha256, length=base.length)
                if manifest.params == params:
                    return manifest
            except ChunkManifestError:
                pass
        manifest = chunk_file(self._store.blob_path(base.sha256), params)
        if manifest.artifact_sha256 != base.sha256:
            raise DeltaUnavailable(f"the local blob {base.sha256} no longer hashes to its name")
        with contextlib.suppress(StoreUnwritableError):  # a cache: computed again next time
            self._store.db.put_blob_chunks(base.sha256, key, encode_manifest(manifest))
        return manifest

    # --- the delta -----------------------------------------------------------------------

    def fetch(self, target: TargetRef, custom: Mapping[str, Any]) -> DeltaResult:
        """Write ``target``'s bytes into its partial file; the caller admits it."""
        path, sha256, length = signed_chunks_entry(target, custom)
        bases = self.bases(target)
        if not bases:
            raise DeltaUnavailable("no artifact of this kind on the device to build it from")
        manifest = self._manifest(target, path, sha256, length)
        self._checkpoint("delta-manifest")
        local: dict[bytes, tuple[str, int]] = {}
        for base in bases:
            for chunk in self.local_chunks(base, manifest.params).chunks:
                local.setdefault(chunk.sha256, (base.sha256, chunk.offset))
        plan = plan_delta(manifest, local, max_range=self._max_range)
        if plan.reused_bytes == 0:
            raise DeltaUnavailable("the device has none of the new artifact's chunks")
        log.info(
            "delta download of %s: %d bytes from local blobs, %d bytes in %d range(s)",
            target.name,
            plan.reused_bytes,
            plan.fetched_bytes,
            plan.ranges,
        )
        self._rebuild(target, manifest, plan)
        return DeltaResult(plan.fetched_bytes, plan.reused_bytes, plan.ranges, length)

    def _manifest(self, target: TargetRef, path: str, sha256: str, length: int) -> ChunkManifest:
        url = f"{self._base}/{path}"
        digest = hashlib.sha256()
        body = bytearray()
        try:
            with self._http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as r:
                if r.status_code != 200:
                    raise DeltaUnavailable(f"GET {path} answered HTTP {r.status_code}")
                if content_encoding(r) is not None:
                    raise DeltaUnavailable(f"GET {path} answered an encoded body")
                for piece in r.iter_bytes(64 * 1024):
                    if len(body) + len(piece) > length:
                        raise DeltaUnavailable(
                            f"the chunk manifest is longer than its {length} signed bytes"
                        )
                    body += piece
                    digest.update(piece)
        except httpx.HTTPError as e:
            raise TransportError(
                f"fetching the chunk manifest of {target.name} failed ({type(e).__name__});"
                " will retry"
            ) from e
        if len(body) != length or digest.hexdigest() != sha256:
            raise DeltaUnavailable("the chunk manifest does not match its signed sha256 and length")
        try:
            return decode_manifest(bytes(body), artifact_sha256=target.sha256, length=target.length)
        except ChunkManifestError as e:
            raise DeltaUnavailable(f"the signed chunk manifest is unusable: {e}") from e

    def _resume_from(self, target: TargetRef, part: Path, chunks: Sequence[ChunkRef]) -> int:
        """How many leading chunks the partial file already holds intact; the file is cut
        back to the end of the last of them (a kill mid-chunk leaves a torn tail)."""
        if part.is_symlink() or (part.exists() and not part.is_file()):
            self._store.discard_partial(target.sha256)  # never resume through a planted link
        if not part.exists():
            return 0
        good = 0
        with part.open("rb") as f:
            for chunk in chunks:
                piece = f.read(chunk.length)
                if len(piece) != chunk.length or hashlib.sha256(piece).digest() != chunk.sha256:
                    break
                good += 1
        keep = chunks[good - 1].end if good else 0
        with os.fdopen(os.open(part, os.O_WRONLY | os.O_NOFOLLOW), "wb") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return good

    def _rebuild(self, target: TargetRef, manifest: ChunkManifest, plan: DeltaPlan) -> None:
        part = self._store.partial_path(target.sha256)
        done = self._resume_from(target, part, manifest.chunks)
        if done:
            log.info("resuming the delta of %s after chunk %d", target.name, done)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_APPEND
        wrote_copy = wrote_fetch = False
        with os.fdopen(os.open(part, flags, 0o600), "ab") as out:
            for step in plan.steps:
                if isinstance(step, Copy):
                    if step.index < done:
                        continue
                    chunk = manifest.chunks[step.index]
                    self._copy(out, chunk, step)
                    if not wrote_copy:
                        self._sync(out)
                        self._first_bytes(wrote_fetch)
                        self._checkpoint("delta-copy")
                        wrote_copy = True
                else:
                    if step.last < done:
                        continue
                    first = max(step.first, done)
                    self._fetch(out, target, manifest.chunks[first : step.last + 1])
                    if not wrote_fetch:
                        self._sync(out)
                        self._first_bytes(wrote_copy)
                        self._checkpoint("delta-fetch")
                        wrote_fetch = True
                if self._stop.is_set():
                    self._sync(out)
                    raise TransportError(
                        f"delta download of {target.name} paused for shutdown; it resumes"
                    )
            self._sync(out)

    def _first_bytes(self, already: bool) -> None:
        """The download's first bytes are on disk: the step a full download calls
        ``download`` (a delta is a download too)."""
        if not already:
            self._checkpoint("download")

    @staticmethod
    def _sync(out: Any) -> None:
        out.flush()
        os.fsync(out.fileno())

    def _copy(self, out: Any, chunk: ChunkRef, step: Copy) -> None:
        with self._store.blob_path(step.source).open("rb") as f:
            f.seek(step.offset)
            piece = f.read(chunk.length)
        if hashlib.sha256(piece).digest() != chunk.sha256:
            raise DeltaUnavailable(f"local blob {step.source} does not hold the chunk it listed")
        out.write(piece)

    def _fetch(self, out: Any, target: TargetRef, chunks: Sequence[ChunkRef]) -> None:
        start, end = chunks[0].offset, chunks[-1].end  # within the signed length (manifest)
        url = f"{self._base}/{target.path}"
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}
        try:
            with self._http.stream("GET", url, headers=headers) as r:
                if r.status_code == 200:
                    raise DeltaUnavailable("the server ignores Range requests", discard=True)
                if r.status_code != 206:
                    raise TransportError(f"GET {target.path} (range) answered HTTP {r.status_code}")
                match = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                if (
                    match is None
                    or int(match.group(1)) != start
                    or int(match.group(2)) != end - 1
                    or match.group(3) not in ("*", str(target.length))
                ):
                    raise DeltaUnavailable(
                        f"the server answered another range than {start}-{end}", discard=True
                    )
                if content_encoding(r) is not None:
                    raise DeltaUnavailable(
                        f"GET {target.path} answered an encoded range", discard=True
                    )
                self._write_chunks(out, target, chunks, r)
        except httpx.HTTPError as e:
            raise TransportError(
                f"delta download of {target.name} interrupted ({type(e).__name__}); it resumes"
                " from the last whole chunk"
            ) from e

    def _write_chunks(
        self, out: Any, target: TargetRef, chunks: Sequence[ChunkRef], response: httpx.Response
    ) -> None:
        index = 0
        buffer = bytearray()
        for piece in response.iter_bytes(256 * 1024):
            buffer += piece
            while index < len(chunks) and len(buffer) >= chunks[index].length:
                chunk = chunks[index]
                data = bytes(buffer[: chunk.length])
                del buffer[: chunk.length]
                if hashlib.sha256(data).digest() != chunk.sha256:
                    raise DeltaUnavailable(
                        f"chunk at offset {chunk.offset} of {target.name} does not hash as its"
                        " signed manifest says",
                        discard=True,
                    )
                out.write(data)
                index += 1
            if index == len(chunks) and buffer:
                raise DeltaUnavailable(
                    "the server sent more bytes than the range asked for", discard=True
                )
        if index < len(chunks):
            raise TransportError(
                f"a range of {target.name} ended early; the delta resumes from the last whole chunk"
            )


def tampered_to_unavailable(error: TamperedArtifactError) -> DeltaUnavailable:
    return DeltaUnavailable(f"the rebuilt artifact was refused: {error}", discard=True)
