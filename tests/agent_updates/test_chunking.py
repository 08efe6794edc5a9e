"""The content-defined chunker and the chunk manifest (protocol/chunking.py): deterministic,
boundaries that survive insertions and deletions, a strict manifest parser, delta plans."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from protocol.chunking import (
    _GEAR,
    CHUNK_MANIFEST_MAGIC,
    ChunkManifestError,
    ChunkParams,
    Copy,
    Fetch,
    chunk_bytes,
    chunk_file,
    decode_manifest,
    delta_bytes,
    encode_manifest,
    gear_hashes,
    plan_delta,
)

SMALL = ChunkParams(min=2048, avg=8192, max=32768)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def third_party_bytes() -> bytes:
    """Real binary data nobody here wrote: numpy's compiled core library."""
    core = Path(np.__file__).parent / "_core"
    libs = sorted(core.glob("_multiarray_umath*.so")) or sorted(
        Path(np.__file__).parent.rglob("*.so")
    )
    return libs[0].read_bytes()[: 4 << 20]


def test_the_vectorized_gear_hash_is_the_rolling_hash_byte_by_byte() -> None:
    data = data_of(1, 3000)
    expected = []
    h = 0
    for b in data:  # the textbook gear hash: shift in one byte at a time
        h = ((h << 1) + int(_GEAR[b])) & 0xFFFFFFFF
        expected.append(h)
    assert [int(v) for v in gear_hashes(data)] == expected
    # a block hashed with the bytes before it as context continues the same sequence
    assert [int(v) for v in gear_hashes(data[1000:], data[:1000])] == expected[1000:]


def test_chunking_is_deterministic_and_covers_the_input_within_bounds() -> None:
    data = third_party_bytes()
    first, second = chunk_bytes(data, SMALL), chunk_bytes(data, SMALL)
    assert first == second
    assert first.artifact_sha256 == hashlib.sha256(data).hexdigest()
    assert sum(c.length for c in first.chunks) == len(data) == first.length
    assert all(SMALL.min <= c.length <= SMALL.max for c in first.chunks[:-1])
    assert 0.25 * SMALL.avg < len(data) / len(first.chunks) < 4 * SMALL.avg
    for c in first.chunks[:50]:
        assert hashlib.sha256(data[c.offset : c.end]).digest() == c.sha256


def test_chunking_a_file_streams_blocks_and_agrees_with_bytes(tmp_path: Path) -> None:
    data = data_of(2, 9 << 20)  # more than two of the chunker's 4 MiB blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert chunk_file(path) == chunk_bytes(data)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_boundaries_are_stable_under_an_insertion_and_a_deletion(where: float) -> None:
    data = third_party_bytes()
    at = int(len(data) * where)
    base = chunk_bytes(data, SMALL)
    inserted = chunk_bytes(data[:at] + b"a new paragraph" * 7 + data[at:], SMALL)
    deleted = chunk_bytes(data[:at] + data[at + 5000 :], SMALL)
    for changed in (inserted, deleted):
        # only the chunks around the edit are new: a fixed-size split would change all after
        fetched = delta_bytes(changed, [base])
        assert fetched <= 3 * SMALL.max, fetched
        assert fetched > 0


def test_a_fixed_size_split_would_not_survive_the_insertion() -> None:
    """The peer the previous test is measured against: without content-defined cuts every
    block after an insertion changes (so the stability above is the chunker's doing)."""
    data = third_party_bytes()
    shifted = data[:1000] + b"x" + data[1000:]
    blocks = {
        hashlib.sha256(data[i : i + SMALL.avg]).digest() for i in range(0, len(data), SMALL.avg)
    }
    moved = [
        hashlib.sha256(shifted[i : i + SMALL.avg]).digest()
        for i in range(0, len(shifted), SMALL.avg)
    ]
    assert sum(d in blocks for d in moved) < len(moved) // 10  # (a few blocks of zeros)


def test_the_manifest_round_trips_and_binds_the_artifact() -> None:
    data = data_of(3, 300_000)
    manifest = chunk_bytes(data, SMALL)
    wire = encode_manifest(manifest)
    assert wire.startswith(CHUNK_MANIFEST_MAGIC)
    assert decode_manifest(wire, artifact_sha256=manifest.artifact_sha256, length=len(data)) == (
        manifest
    )
    with pytest.raises(ChunkManifestError, match="describes artifact"):
        decode_manifest(wire, artifact_sha256="0" * 64)
    with pytest.raises(ChunkManifestError, match="signed"):
        decode_manifest(wire, length=len(data) + 1)


def _entry_offset(index: int) -> int:
    return len(CHUNK_MANIFEST_MAGIC) + struct.calcsize(">32sQIIII") + index * 36


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda w: b"NOTCHUNK" + w[8:], "magic"),
        (lambda w: w[:-1], "bytes of entries"),
        (lambda w: w + b"\0" * 36, "bytes of entries"),
        (
            lambda w: w[: _entry_offset(0)] + struct.pack(">I", 1) + w[_entry_offset(0) + 4 :],
            "add up",
        ),
        (
            lambda w: w[: _entry_offset(0)] + struct.pack(">I", 0) + w[_entry_offset(0) + 4 :],
            "length 0",
        ),
        (lambda w: w[:48] + struct.pack(">III", 2048, 6000, 32768) + w[60:], "power of two"),
    ],
)
def test_a_malformed_manifest_is_refused_saying_what_is_wrong(
    corrupt: object, message: str
) -> None:
    wire = encode_manifest(chunk_bytes(data_of(4, 100_000), SMALL))
    assert callable(corrupt)
    with pytest.raises(ChunkManifestError, match=message):
        decode_manifest(corrupt(wire))


def test_a_delta_plan_copies_what_is_local_and_coalesces_adjacent_missing_chunks() -> None:
    old = data_of(5, 400_000)
    new = old[:100_000] + data_of(6, 60_000) + old[160_000:]
    base, target = chunk_bytes(old, SMALL), chunk_bytes(new, SMALL)
    local = {c.sha256: ("base", c.offset) for c in base.chunks}
    plan = plan_delta(target, local)
    fetches = [s for s in plan.steps if isinstance(s, Fetch)]
    assert len(fetches) == 1  # one changed region: one range request
    assert plan.fetched_bytes == fetches[0].length == delta_bytes(target, [base])
    assert plan.reused_bytes + plan.fetched_bytes == len(new)
    assert 60_000 <= plan.fetched_bytes <= 60_000 + 2 * SMALL.max
    # rebuilding by the plan gives the new bytes
    out = bytearray()
    for step in plan.steps:
        if isinstance(step, Copy):
            n = target.chunks[step.index].length
            out += old[step.offset : step.offset + n]
        else:
            out += new[step.offset : step.offset + step.length]
    assert bytes(out) == new
    # a cap on the range length splits one run of missing chunks into several ranges
    capped = plan_delta(target, local, max_range=SMALL.max)
    assert capped.ranges > 1 and capped.fetched_bytes == plan.fetched_bytes
    assert all(s.length <= SMALL.max for s in capped.steps if isinstance(s, Fetch))
