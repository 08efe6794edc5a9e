"""A bounded reader of GGUF file headers (metadata and tensor directory).

Reads only the header from a binary stream; checks every length against the file
size and fixed caps before allocating, so a hostile upload cannot make it allocate
or loop without bound. Tensor data is not read, but each tensor must lie inside
the file, so a truncated model is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KEY_BYTES = 65_535
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 16 * 1024 * 1024
MAX_KV_PAIRS = 65_536
MAX_TENSORS = 1_000_000
MAX_DIMS = 4

# value type id -> struct format of a scalar (little-endian)
_SCALARS: dict[int, str] = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING = 8
_ARRAY = 9

Scalar = int | float | bool | str


class GgufFormatError(ValueError):
    """The bytes are not a well-formed GGUF file; the message says where."""


@dataclass(frozen=True)
class GgufHeader:
    version: int
    tensor_count: int
    # scalar metadata only (arrays such as the tokenizer vocabulary are skipped)
    metadata: dict[str, Scalar] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def quantization(self) -> str | None:
        """The file type as llama.cpp names it, e.g. ``Q4_1`` or ``F16``."""
        value = self.metadata.get("general.file_type")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        try:
            name = LlamaFileType(value).name
        except ValueError:
            return None
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")

    @property
    def context_length(self) -> int | None:
        arch = self.architecture
        value = self.metadata.get(f"{arch}.context_length") if arch else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Reader:
    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream = stream
        self._size = size
        self.offset = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.offset + n > self._size:
            raise GgufFormatError(f"file ends inside the {what} at byte {self.offset}")
        data = self._stream.read(n)
        if len(data) != n:
            raise GgufFormatError(f"file ends inside the {what} at byte {self.offset}")
        self.offset += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.offset + n > self._size:
            raise GgufFormatError(f"file ends inside the {what} at byte {self.offset}")
        self._stream.seek(n, 1)
        self.offset += n

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        n = self.u64(f"{what} length")
        if n > limit:
            raise GgufFormatError(f"{what} is {n} bytes long; the limit is {limit}")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError as e:
            raise GgufFormatError(f"{what} is not UTF-8") from e


def _value(reader: _Reader, vtype: int, key: str) -> Scalar | None:
    """Read one value; return scalars, skip arrays (returning None)."""
    if vtype in _SCALARS:
        return reader.unpack(_SCALARS[vtype], f"value of {key!r}")
    if vtype == _STRING:
        return reader.string(f"string value of {key!r}")
    if vtype == _ARRAY:
        item_type = reader.u32(f"array type of {key!r}")
        count = reader.u64(f"array length of {key!r}")
        if count > MAX_ARRAY_ITEMS:
            raise GgufFormatError(
                f"array {key!r} has {count} items; the limit is {MAX_ARRAY_ITEMS}"
            )
        if item_type in _SCALARS:
            reader.skip(count * struct.calcsize(_SCALARS[item_type]), f"array {key!r}")
        elif item_type == _STRING:
            for _ in range(count):
                n = reader.u64(f"string length in array {key!r}")
                if n > MAX_STRING_BYTES:
                    raise GgufFormatError(f"a string in array {key!r} is {n} bytes long")
                reader.skip(n, f"array {key!r}")
        else:
            raise GgufFormatError(f"array {key!r} has unsupported item type {item_type}")
        return None
    raise GgufFormatError(f"metadata key {key!r} has unknown value type {vtype}")


def _tensor_bytes(dims: list[int], ggml_type: int, name: str) -> int:
    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as e:
        raise GgufFormatError(f"tensor {name!r} has unknown type {ggml_type}") from e
    elements = 1
    for d in dims:
        elements *= d
    if dims and dims[0] % block_size:
        raise GgufFormatError(f"tensor {name!r} row size is not a multiple of its block size")
    return elements // block_size * type_size


def read_gguf_header(stream: BinaryIO, size: int) -> GgufHeader:
    """Parse and check the header of a GGUF file of ``size`` bytes read from ``stream``."""
    reader = _Reader(stream, size)
    if size < 4 or reader.take(4, "magic") != MAGIC:
        raise GgufFormatError("not a GGUF file: it does not start with the bytes 'GGUF'")
    version = reader.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise GgufFormatError(
            f"GGUF version {version} is not supported (supported: 2, 3; little-endian only)"
        )
    tensor_count = reader.u64("tensor count")
    kv_count = reader.u64("metadata count")
    if tensor_count > MAX_TENSORS or kv_count > MAX_KV_PAIRS:
        raise GgufFormatError(f"implausible header: {tensor_count} tensors, {kv_count} keys")
    metadata: dict[str, Scalar] = {}
    for _ in range(kv_count):
        key = reader.string("metadata key", MAX_KEY_BYTES)
        value = _value(reader, reader.u32(f"value type of {key!r}"), key)
        if value is not None:
            metadata[key] = value
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GgufFormatError(f"general.alignment must be a power of two, got {alignment!r}")
    extents: list[tuple[str, int, int]] = []
    for _ in range(tensor_count):
        name = reader.string("tensor name", MAX_KEY_BYTES)
        n_dims = reader.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GgufFormatError(f"tensor {name!r} has {n_dims} dimensions")
        dims = [reader.u64(f"dimensions of tensor {name!r}") for _ in range(n_dims)]
        ggml_type = reader.u32(f"type of tensor {name!r}")
        offset = reader.u64(f"offset of tensor {name!r}")
        if offset % alignment:
            raise GgufFormatError(f"tensor {name!r} is not aligned to {alignment} bytes")
        extents.append((name, offset, _tensor_bytes(dims, ggml_type, name)))
    data_start = -(-reader.offset // alignment) * alignment
    for name, offset, length in extents:
        if data_start + offset + length > size:
            raise GgufFormatError(
                f"tensor {name!r} ends at byte {data_start + offset + length}, past the end of"
                f" the file ({size} bytes): the file is truncated"
            )
    return GgufHeader(version=version, tensor_count=tensor_count, metadata=metadata)
