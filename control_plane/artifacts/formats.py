"""Type checks for uploaded artifacts, one per format (reads a stream, no other I/O).

GGUF gets a full header parse; the other formats a cheap sanity check that catches a
wrong file, not a subtly broken one.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from control_plane.artifacts.gguf_header import GgufFormatError, read_gguf_header
from control_plane.errors import InvalidArtifactError

FILE_EXTENSIONS = {
    "gguf": ".gguf",
    "onnx": ".onnx",
    "tflite": ".tflite",
    "mlpackage": ".mlpackage.zip",
    "sqlite": ".sqlite",
    "json": ".json",
}
MAX_JSON_BYTES = 64 * 1024 * 1024
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ZIP_MAGIC = b"PK\x03\x04"
_ONNX_GRAPH_FIELD = 7


def file_name(name: str, fmt: str) -> str:
    """The artifact's file name: its logical name with the format's extension."""
    ext = FILE_EXTENSIONS[fmt]
    return name if name.endswith(ext) else name + ext


def inspect_artifact(stream: BinaryIO, fmt: str, size: int) -> dict[str, Any]:
    """Check that ``stream`` holds a ``fmt`` file; return facts worth publishing.

    Raises :class:`InvalidArtifactError` saying what is wrong.
    """
    if size == 0:
        raise InvalidArtifactError("the uploaded artifact is empty")
    if fmt == "gguf":
        try:
            header = read_gguf_header(stream, size)
        except GgufFormatError as e:
            raise InvalidArtifactError(f"not a valid GGUF file: {e}") from e
        facts: dict[str, Any] = {"gguf_version": header.version, "tensors": header.tensor_count}
        for key, value in (
            ("architecture", header.architecture),
            ("quantization", header.quantization),
            ("context_length", header.context_length),
        ):
            if value is not None:
                facts[key] = value
        return facts
    if fmt == "onnx":
        _check_onnx(stream, size)
    elif fmt == "tflite":
        head = stream.read(8)
        if len(head) < 8 or head[4:8] != b"TFL3":
            raise InvalidArtifactError("not a TFLite model: the file identifier 'TFL3' is missing")
    elif fmt == "mlpackage":
        if stream.read(4) != _ZIP_MAGIC:
            raise InvalidArtifactError("an mlpackage must be uploaded as a zip archive")
    elif fmt == "sqlite":
        if stream.read(16) != _SQLITE_MAGIC:
            raise InvalidArtifactError("not a SQLite database: the SQLite header is missing")
    elif fmt == "json":
        if size > MAX_JSON_BYTES:
            raise InvalidArtifactError(f"JSON artifacts are limited to {MAX_JSON_BYTES} bytes")
        try:
            json.loads(stream.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidArtifactError(f"not valid JSON: {e}") from e
    else:
        raise InvalidArtifactError(f"unknown artifact format {fmt!r}")
    return {}


def _varint(stream: BinaryIO) -> int | None:
    result = 0
    for shift in range(0, 70, 7):
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise InvalidArtifactError("not an ONNX model: truncated protobuf varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
    raise InvalidArtifactError("not an ONNX model: protobuf varint too long")


def _check_onnx(stream: BinaryIO, size: int) -> None:
    """Walk the top-level protobuf fields of a ModelProto; require a graph."""
    offset = 0
    seen_graph = False
    while True:
        key = _varint(stream)
        if key is None:
            break
        field, wire = key >> 3, key & 7
        if field == 0:
            raise InvalidArtifactError("not an ONNX model: protobuf field number 0")
        if wire == 0:
            _varint(stream)
        elif wire == 1:
            stream.seek(8, 1)
        elif wire == 5:
            stream.seek(4, 1)
        elif wire == 2:
            length = _varint(stream)
            if length is None:
                raise InvalidArtifactError("not an ONNX model: truncated protobuf field")
            stream.seek(length, 1)
            seen_graph = seen_graph or field == _ONNX_GRAPH_FIELD
        else:
            raise InvalidArtifactError(f"not an ONNX model: protobuf wire type {wire}")
        offset = stream.tell()
        if offset > size:
            raise InvalidArtifactError("not an ONNX model: a protobuf field runs past the end")
    if not seen_graph:
        raise InvalidArtifactError("not an ONNX model: it has no graph")
