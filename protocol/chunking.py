"""Content-defined chunking of artifacts and the signed chunk manifest (delta updates).

Pure functions shared by both sides: the control plane chunks every uploaded artifact and
publishes the manifest (its sha256 and length ride in the artifact's signed TUF custom
metadata); a device chunks the blobs it already has with the same parameters, and fetches
only the chunks it lacks. See docs/delta-updates.md.

The chunker is a gear rolling hash (FastCDC-style, with normalized chunking): the hash at
byte ``i`` is ``sum(GEAR[b[i-k]] << k for k in 0..31) mod 2**32``, so it depends on the last
32 bytes only and boundaries re-synchronize a few bytes after an insertion or a deletion.
It is computed for a whole block at once with numpy (five shift-and-add passes over 32-bit
words), so 100 MB chunks in a few seconds on one slow core. A cut is placed after byte
``i`` when the top bits of the hash are zero: ``bits_small`` of them while the chunk is
shorter than ``avg``, ``bits_large`` after that (fewer: a cut becomes likelier), never
before ``min`` bytes, always at ``max``.

Manifest wire format (big-endian), ``CHUNK_MANIFEST_MAGIC`` then::

    32 bytes  sha256 of the whole artifact
    u64       artifact length
    u32 x 3   min, avg, max chunk length
    u32       chunk count
    count x   (u32 length, 32 bytes sha256)      offsets are the running sum
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNKS_CUSTOM_KEY",
    "CHUNK_MANIFEST_MAGIC",
    "CHUNK_MANIFEST_SUFFIX",
    "DEFAULT_PARAMS",
    "ChunkManifest",
    "ChunkManifestError",
    "ChunkParams",
    "ChunkRef",
    "Copy",
    "DeltaPlan",
    "Fetch",
    "chunk_bytes",
    "chunk_file",
    "chunk_manifest_path",
    "chunk_stream",
    "decode_manifest",
    "delta_bytes",
    "encode_manifest",
    "plan_delta",
]

CHUNK_MANIFEST_MAGIC = b"OPCHUNK1"
CHUNKS_CUSTOM_KEY = "chunks"  # target custom: {"path", "sha256", "length"} of the manifest
CHUNK_MANIFEST_SUFFIX = ".chunks"  # no artifact file name ends so (they end in a format's)
MAX_MANIFEST_BYTES = 64 << 20
_HEADER = struct.Struct(">32sQIIII")
_ENTRY = struct.Struct(">I32s")
_BLOCK = 4 << 20  # bytes hashed per numpy pass (about 5 x this in temporaries)
_WINDOW = 32  # bytes the gear hash depends on (32-bit words)
MAX_CHUNK_LIMIT = 4 << 20
MIN_CHUNK_LIMIT = 256


class ChunkManifestError(ValueError):
    """A chunk manifest that is malformed or does not describe the artifact it claims."""


@dataclass(frozen=True)
class ChunkParams:
    """Chunk length bounds; ``avg`` (a power of two) sets the cut masks. The default
    (16 KiB on average) is four SQLite pages: a RAG index updated in place changes pages
    here and there, and a 64 KiB average fetched about three times the bytes there
    (docs/delta-updates.md); the manifest stays 0.2% of the artifact."""

    min: int = 4 * 1024
    avg: int = 16 * 1024
    max: int = 64 * 1024

    def __post_init__(self) -> None:
        if not MIN_CHUNK_LIMIT <= self.min <= self.avg <= self.max <= MAX_CHUNK_LIMIT:
            raise ChunkManifestError(
                f"chunk bounds must satisfy {MIN_CHUNK_LIMIT} <= min <= avg <= max <="
                f" {MAX_CHUNK_LIMIT}; got min={self.min} avg={self.avg} max={self.max}"
            )
        if self.avg & (self.avg - 1):
            raise ChunkManifestError(f"the average chunk length must be a power of two: {self.avg}")

    @property
    def bits_small(self) -> int:
        return self.avg.bit_length() - 1 + 2

    @property
    def bits_large(self) -> int:
        return self.avg.bit_length() - 1 - 2


DEFAULT_PARAMS = ChunkParams()


def _gear_table() -> npt.NDArray[np.uint32]:
    values = [
        int.from_bytes(hashlib.sha256(b"outpost-gear-v1" + bytes([i])).digest()[:4], "little")
        for i in range(256)
    ]
    return np.array(values, dtype=np.uint32)


_GEAR = _gear_table()


def gear_hashes(data: bytes, context: bytes = b"") -> npt.NDArray[np.uint32]:
    """The gear hash at every byte of ``data``; ``context``: the (up to 31) bytes before it
    (absent bytes count as zero contributions, as for the first bytes of a file)."""
    context = context[-(_WINDOW - 1) :] if context else b""
    ext = np.frombuffer(context + data, dtype=np.uint8)
    h = _GEAR[ext]
    tmp = np.empty_like(h)
    shift = 1
    while shift < _WINDOW:  # h[i] += h[i - shift] << shift, doubling the window each pass
        np.left_shift(h[:-shift], np.uint32(shift), out=tmp[:-shift])
        np.add(h[shift:], tmp[:-shift], out=h[shift:])
        shift *= 2
    return h[len(context) :]


def _candidates(
    read: Iterable[bytes], params: ChunkParams
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Positions (global byte index) where a cut may follow: with the large-chunk mask,
    with the small-chunk mask (a subset); and the total length read."""
    limit_l = np.uint32(1 << (32 - params.bits_large))
    limit_s = np.uint32(1 << (32 - params.bits_small))
    large: list[npt.NDArray[np.int64]] = []
    small: list[npt.NDArray[np.int64]] = []
    offset = 0
    tail = b""
    for block in read:
        if not block:
            continue
        h = gear_hashes(block, tail)
        hits = np.flatnonzero(h < limit_l)
        large.append(hits.astype(np.int64) + offset)
        small.append(hits[h[hits] < limit_s].astype(np.int64) + offset)
        tail = (tail + block)[-(_WINDOW - 1) :]
        offset += len(block)
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.concatenate(large) if large else empty,
        np.concatenate(small) if small else empty,
        offset,
    )


def cut_points(
    large: npt.NDArray[np.int64], small: npt.NDArray[np.int64], length: int, params: ChunkParams
) -> list[int]:
    """Chunk end offsets (exclusive), the last one ``length``."""
    cuts: list[int] = []
    start = 0
    while start < length:
        if length - start <= params.min:
            end = length
        else:
            lo = start + params.min - 1  # a cut after byte p makes a chunk of p + 1 - start
            mid = start + params.avg - 1
            hi = min(start + params.max, length) - 1
            end = min(start + params.max, length)
            i = int(np.searchsorted(small, lo))
            if i < len(small) and small[i] < mid and small[i] <= hi:
                end = int(small[i]) + 1
            else:
                j = int(np.searchsorted(large, max(lo, mid)))
                if j < len(large) and large[j] <= hi:
                    end = int(large[j]) + 1
        cuts.append(end)
        start = end
    return cuts


@dataclass(frozen=True)
class ChunkRef:
    offset: int
    length: int
    sha256: bytes  # 32 raw bytes

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ChunkManifest:
    """The chunks of one artifact, in order; their lengths add up to ``length``."""

    artifact_sha256: str
    length: int
    params: ChunkParams
    chunks: tuple[ChunkRef, ...]


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(_BLOCK):
        yield block


def chunk_stream(stream: BinaryIO, params: ChunkParams = DEFAULT_PARAMS) -> ChunkManifest:
    """Chunk a seekable binary stream from its current position to its end (two passes:
    the cut points, then each chunk's sha256; memory stays a few blocks)."""
    start = stream.tell()
    large, small, length = _candidates(_blocks(stream), params)
    cuts = cut_points(large, small, length, params)
    stream.seek(start)
    whole = hashlib.sha256()
    chunks: list[ChunkRef] = []
    offset = 0
    for end in cuts:
        piece = stream.read(end - offset)
        if len(piece) != end - offset:
            raise ChunkManifestError("the stream changed while it was being chunked")
        whole.update(piece)
        chunks.append(ChunkRef(offset, end - offset, hashlib.sha256(piece).digest()))
        offset = end
    return ChunkManifest(whole.hexdigest(), length, params, tuple(chunks))


def chunk_file(path: Path, params: ChunkParams = DEFAULT_PARAMS) -> ChunkManifest:
    with path.open("rb", buffering=0) as f:
        return chunk_stream(f, params)


def chunk_bytes(data: bytes, params: ChunkParams = DEFAULT_PARAMS) -> ChunkManifest:
    import io

    return chunk_stream(io.BytesIO(data), params)


# --- the manifest on the wire ------------------------------------------------------------


def chunk_manifest_path(target_path: str) -> str:
    """Where the manifest of the artifact at ``target_path`` is served (under the targets)."""
    return target_path + CHUNK_MANIFEST_SUFFIX


def encode_manifest(manifest: ChunkManifest) -> bytes:
    p = manifest.params
    parts = [
        CHUNK_MANIFEST_MAGIC,
        _HEADER.pack(
            bytes.fromhex(manifest.artifact_sha256),
            manifest.length,
            p.min,
            p.avg,
            p.max,
            len(manifest.chunks),
        ),
    ]
    parts += [_ENTRY.pack(c.length, c.sha256) for c in manifest.chunks]
    return b"".join(parts)


def decode_manifest(
    data: bytes, *, artifact_sha256: str | None = None, length: int | None = None
) -> ChunkManifest:
    """Parse and check a manifest; with ``artifact_sha256``/``length`` (the signed values of
    the artifact), also that it describes that artifact. Raises :class:`ChunkManifestError`."""
    head = len(CHUNK_MANIFEST_MAGIC) + _HEADER.size
    if len(data) < head or not data.startswith(CHUNK_MANIFEST_MAGIC):
        raise ChunkManifestError("not a chunk manifest (bad magic or truncated header)")
    digest, total, mn, avg, mx, count = _HEADER.unpack_from(data, len(CHUNK_MANIFEST_MAGIC))
    params = ChunkParams(mn, avg, mx)
    if len(data) != head + count * _ENTRY.size:
        raise ChunkManifestError(
            f"the manifest lists {count} chunks but has {len(data) - head} bytes of entries"
        )
    if count > total // params.min + 1 or (total > 0) != (count > 0):
        raise ChunkManifestError(f"{count} chunks cannot cover {total} bytes with min {mn}")
    chunks: list[ChunkRef] = []
    offset = 0
    for n, (size, sha) in enumerate(_ENTRY.iter_unpack(data[head:])):
        if not 0 < size <= params.max:
            raise ChunkManifestError(f"chunk {n} has length {size} (max {params.max})")
        chunks.append(ChunkRef(offset, size, sha))
        offset += size
    if offset != total:
        raise ChunkManifestError(f"the chunks add up to {offset} bytes, not {total}")
    manifest = ChunkManifest(digest.hex(), total, params, tuple(chunks))
    if artifact_sha256 is not None and manifest.artifact_sha256 != artifact_sha256:
        raise ChunkManifestError(
            f"the manifest describes artifact {manifest.artifact_sha256}, not {artifact_sha256}"
        )
    if length is not None and manifest.length != length:
        raise ChunkManifestError(f"the manifest describes {total} bytes, but {length} are signed")
    return manifest


# --- planning a delta ----------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """Chunk ``index`` of the new artifact is at ``offset`` in local source ``source``."""

    index: int
    source: str
    offset: int


@dataclass(frozen=True)
class Fetch:
    """Chunks ``first..last`` (inclusive, adjacent) come from one HTTP range request."""

    first: int
    last: int
    offset: int
    length: int


@dataclass(frozen=True)
class DeltaPlan:
    steps: tuple[Copy | Fetch, ...]
    reused_bytes: int
    fetched_bytes: int

    @property
    def ranges(self) -> int:
        return sum(1 for s in self.steps if isinstance(s, Fetch))


def plan_delta(
    target: ChunkManifest,
    local: Mapping[bytes, tuple[str, int]],
    *,
    max_range: int = 8 << 20,
) -> DeltaPlan:
    """How to build ``target`` from local chunks (``local``: chunk sha256 -> (source,
    offset)) and range requests for the rest; adjacent missing chunks share one range of
    at most ``max_range`` bytes (so a resumed delta repeats little)."""
    steps: list[Copy | Fetch] = []
    reused = fetched = 0
    run: list[ChunkRef] = []
    run_first = 0

    def flush() -> None:
        if run:
            size = run[-1].end - run[0].offset
            steps.append(Fetch(run_first, run_first + len(run) - 1, run[0].offset, size))
            run.clear()

    for index, chunk in enumerate(target.chunks):
        where = local.get(chunk.sha256)
        if where is not None:
            flush()
            steps.append(Copy(index, where[0], where[1]))
            reused += chunk.length
            continue
        if run and chunk.end - run[0].offset > max_range:
            flush()
        if not run:
            run_first = index
        run.append(chunk)
        fetched += chunk.length
    flush()
    return DeltaPlan(tuple(steps), reused, fetched)


def delta_bytes(target: ChunkManifest, bases: Sequence[ChunkManifest]) -> int:
    """Bytes a device holding ``bases`` downloads for ``target`` (chunk data only)."""
    have = {c.sha256 for base in bases for c in base.chunks}
    return sum(c.length for c in target.chunks if c.sha256 not in have)
