"""How much memory a model will take once loaded, before loading it (pure).

A GGUF file's header says how big the model's KV cache is per token (layers x KV heads x
head size); the estimate is the file (mapped weights) plus the KV cache of every slot plus
the RAM prompt cache plus a margin for llama.cpp's compute buffers. It decides, against
``memory_budget_mb``, which idle models the registry unloads before a load.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MIB = 1 << 20

# scalar GGUF value types: struct format per type id
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


class NotGGUFError(ValueError):
    pass


def _read(f: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise NotGGUFError("truncated GGUF header")
    value: int | float | bool = struct.unpack("<" + fmt, data)[0]
    return value


def _string(f: BinaryIO) -> str:
    n = int(_read(f, "Q"))
    if n > 1 << 24:
        raise NotGGUFError("implausible string length in GGUF header")
    return f.read(n).decode("utf-8", errors="replace")


def _skip(f: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        f.seek(struct.calcsize("<" + _SCALARS[kind]), 1)
    elif kind == _STRING:
        f.seek(int(_read(f, "Q")), 1)
    elif kind == _ARRAY:
        item, n = int(_read(f, "I")), int(_read(f, "Q"))
        if item in _SCALARS:
            f.seek(n * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(n):
                _skip(f, item)
    else:
        raise NotGGUFError(f"unknown GGUF value type {kind}")


def gguf_scalars(path: Path) -> dict[str, int | float | bool | str]:
    """The scalar and string metadata of a GGUF file (arrays skipped)."""
    out: dict[str, int | float | bool | str] = {}
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise NotGGUFError(f"{path} is not a GGUF file")
        version = int(_read(f, "I"))
        if version < 2:
            raise NotGGUFError(f"GGUF version {version} is not supported")
        _read(f, "Q")  # tensor count
        for _ in range(int(_read(f, "Q"))):
            key = _string(f)
            kind = int(_read(f, "I"))
            if kind in _SCALARS:
                out[key] = _read(f, _SCALARS[kind])
            elif kind == _STRING:
                out[key] = _string(f)
            else:
                _skip(f, kind)
    return out


@dataclass(frozen=True)
class KvShape:
    """What one token costs in a model's KV cache (f16 K and V)."""

    layers: int
    k_width: int  # K values per token per layer (KV heads x key length)
    v_width: int

    @property
    def bytes_per_token(self) -> int:
        return self.layers * (self.k_width + self.v_width) * 2


def kv_shape(meta: Mapping[str, int | float | bool | str]) -> KvShape | None:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def number(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )

    layers, embd, heads = (
        number("block_count"),
        number("embedding_length"),
        number("attention.head_count"),
    )
    if not layers or not embd or not heads:
        return None
    kv_heads = number("attention.head_count_kv") or heads
    head = embd // heads
    k = (number("attention.key_length") or head) * kv_heads
    v = (number("attention.value_length") or head) * kv_heads
    return KvShape(layers, k, v)


@dataclass(frozen=True)
class MemoryEstimate:
    file_mb: float
    kv_mb: float
    prompt_cache_mb: float
    overhead_mb: float

    @property
    def total_mb(self) -> float:
        return self.file_mb + self.kv_mb + self.prompt_cache_mb + self.overhead_mb

    def describe(self) -> str:
        return (
            f"about {self.total_mb:.0f} MB (weights {self.file_mb:.0f} + KV cache "
            f"{self.kv_mb:.0f} + prompt cache {self.prompt_cache_mb:.0f} + buffers "
            f"{self.overhead_mb:.0f})"
        )


def estimate(
    file_bytes: int, shape: KvShape | None, *, n_ctx: int, slots: int, prompt_cache_mb: int
) -> MemoryEstimate:
    """A loaded model's memory: weights, KV cache for ``slots`` x ``n_ctx`` tokens, the
    prompt cache, and 10% of the weights (at least 16 MB) for compute buffers."""
    file_mb = file_bytes / MIB
    kv_mb = (shape.bytes_per_token * n_ctx * slots / MIB) if shape is not None else 0.0
    return MemoryEstimate(file_mb, kv_mb, float(prompt_cache_mb), max(16.0, 0.1 * file_mb))


def estimate_file(path: Path, *, n_ctx: int, slots: int, prompt_cache_mb: int) -> MemoryEstimate:
    """``estimate`` for a model file (a file that is not GGUF counts its size only)."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    try:
        shape = kv_shape(gguf_scalars(path))
    except (OSError, NotGGUFError, UnicodeDecodeError):
        shape = None
    return estimate(size, shape, n_ctx=n_ctx, slots=slots, prompt_cache_mb=prompt_cache_mb)


@dataclass(frozen=True)
class Resident:
    """A model held in memory, as the budget sees it."""

    name: str
    mb: float
    idle: bool
    last_used: float


def plan_unloads(
    need_mb: float, budget_mb: float, resident: Sequence[Resident]
) -> list[str] | None:
    """Which idle models to unload (least recently used first) so that ``need_mb`` more
    fits in ``budget_mb``; None when even unloading every idle model is not enough."""
    used = sum(r.mb for r in resident)
    chosen: list[str] = []
    for r in sorted((r for r in resident if r.idle), key=lambda r: r.last_used):
        if used + need_mb <= budget_mb:
            break
        chosen.append(r.name)
        used -= r.mb
    return chosen if used + need_mb <= budget_mb else None
