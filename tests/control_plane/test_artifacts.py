"""Artifact upload: streamed, hashed, capped, type-checked, content-addressed."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.artifacts.formats import inspect_artifact
from control_plane.errors import InvalidArtifactError
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    blob_files,
    make_control_plane,
    sha256_hex,
    small_gguf,
    smollm2_path,
)


def upload(cp: ControlPlaneUnderTest, content: Any, **params: str) -> httpx.Response:
    query = {"name": "model", "kind": "llm", "format": "gguf", **params}
    return cp.client.post(
        "/api/v1/artifacts", params=query, content=content, headers=cp.auth("release-manager")
    )


def test_gguf_is_stored_under_its_hash_with_header_facts(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    data = small_gguf(tmp_path)
    r = upload(cp, data, name="tiny-chat", runtime="llama.cpp")
    assert r.status_code == 201, r.text
    body = r.json()
    sha = sha256_hex(data)
    assert (body["sha256"], body["length"]) == (sha, len(data))
    assert body["target_path"] == f"{sha}/tiny-chat.gguf"
    assert body["custom"]["kind"] == "llm"
    assert body["custom"]["format"] == "gguf"
    assert body["custom"]["runtime"] == "llama.cpp"
    assert body["custom"]["quantization"] == "F32"  # read from the GGUF header
    assert body["custom"]["facts"]["architecture"] == "llama"
    assert body["custom"]["facts"]["context_length"] == 256
    assert (cp.settings.blobs_dir / "sha256" / sha).read_bytes() == data
    assert blob_files(cp.settings) == [f"sha256/{sha}"]


def test_same_bytes_twice_are_one_artifact(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    data = small_gguf(tmp_path)
    first = upload(cp, data)
    second = upload(cp, data, name="other-name")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["name"] == "model"
    assert len(blob_files(cp.settings)) == 1


def test_non_gguf_declared_as_gguf_is_refused(cp: ControlPlaneUnderTest) -> None:
    r = upload(cp, b'{"this": "is json"}')
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "invalid_artifact"
    assert "not a valid GGUF" in error["message"]
    assert blob_files(cp.settings) == []


def test_truncated_gguf_is_refused(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    data = small_gguf(tmp_path, values=4096)
    r = upload(cp, data[: len(data) - 100])
    assert r.status_code == 422
    assert "truncated" in r.json()["error"]["message"]
    assert blob_files(cp.settings) == []


def test_oversized_upload_is_refused_before_reading(tmp_path: Path) -> None:
    cp = make_control_plane(tmp_path, max_artifact_bytes=1024)
    with cp.client:
        r = upload(cp, small_gguf(tmp_path, values=1024))
        assert r.status_code == 413
        assert "1024" in r.json()["error"]["message"]
        assert blob_files(cp.settings) == []


def test_oversized_streamed_upload_stops_at_the_cap(tmp_path: Path) -> None:
    cp = make_control_plane(tmp_path, max_artifact_bytes=256 * 1024)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(64):
            yield b"\0" * 16384

    with cp.client:
        r = upload(cp, chunks())
        assert r.status_code == 413
        assert blob_files(cp.settings) == []
        assert list((cp.settings.blobs_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("fmt", "good", "bad", "complaint"),
    [
        ("json", b'{"prompt": "You are helpful."}', b"{nope", "not valid JSON"),
        ("tflite", b"\x1c\x00\x00\x00TFL3" + b"\0" * 32, b"\0" * 40, "TFL3"),
        ("mlpackage", b"PK\x03\x04" + b"\0" * 40, b"\0" * 44, "zip"),
    ],
)
def test_other_formats_get_a_sanity_check(
    cp: ControlPlaneUnderTest, fmt: str, good: bytes, bad: bytes, complaint: str
) -> None:
    assert upload(cp, good, format=fmt, kind="config").status_code == 201
    r = upload(cp, bad, format=fmt, kind="config")
    assert r.status_code == 422
    assert complaint in r.json()["error"]["message"]


def test_sqlite_index_is_checked(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, text TEXT)")
    r = upload(cp, path.read_bytes(), name="kb", kind="rag-index", format="sqlite")
    assert r.status_code == 201
    assert r.json()["target_path"].endswith("/kb.sqlite")
    assert upload(cp, b"not sqlite at all", kind="rag-index", format="sqlite").status_code == 422


def test_onnx_is_walked_as_protobuf() -> None:
    # ir_version = 8 (field 1, varint), graph (field 7, 3 bytes)
    model = bytes([0x08, 0x08, 0x3A, 0x03, 0x0A, 0x01, 0x78])
    inspect_artifact(io.BytesIO(model), "onnx", len(model))
    with pytest.raises(InvalidArtifactError, match="no graph"):
        inspect_artifact(io.BytesIO(model[:2]), "onnx", 2)
    with pytest.raises(InvalidArtifactError, match="past the end"):
        inspect_artifact(io.BytesIO(model[:-1]), "onnx", len(model) - 1)
    with pytest.raises(InvalidArtifactError, match="empty"):
        inspect_artifact(io.BytesIO(b""), "onnx", 0)


def test_bad_declarations_are_refused_with_the_choices(cp: ControlPlaneUnderTest) -> None:
    r = upload(cp, b"x", kind="spaceship")
    assert r.status_code == 422
    assert "embedding" in r.json()["error"]["message"]
    r = upload(cp, b"x", name="../etc/passwd")
    assert r.status_code == 422
    assert "name" in r.json()["error"]["message"]


def test_custom_metadata_header_lands_in_the_target(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    constraints = {"constraints": {"arch": ["x86_64", "aarch64"], "min_ram_mb": 512}}
    r = cp.client.post(
        "/api/v1/artifacts",
        params={"name": "m", "kind": "llm", "format": "gguf"},
        content=small_gguf(tmp_path),
        headers={**cp.auth("release-manager"), "X-Outpost-Custom": json.dumps(constraints)},
    )
    assert r.status_code == 201
    assert r.json()["custom"]["constraints"] == constraints["constraints"]
    clash = cp.client.post(
        "/api/v1/artifacts",
        params={"name": "m", "kind": "llm", "format": "gguf"},
        content=small_gguf(tmp_path, seed=3),
        headers={**cp.auth("release-manager"), "X-Outpost-Custom": '{"kind": "vision-detect"}'},
    )
    assert clash.status_code == 422
    assert "kind" in clash.json()["error"]["message"]


@pytest.mark.slow
def test_real_smollm2_gguf_uploads(cp: ControlPlaneUnderTest) -> None:
    path = smollm2_path()
    with open(path, "rb") as f:
        r = upload(cp, f.read(), name="smollm2-135m-instruct", runtime="llama.cpp")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["length"] == path.stat().st_size
    assert body["custom"]["quantization"] == "Q4_1"
    assert body["custom"]["facts"]["architecture"] == "llama"


def test_startup_removes_upload_leftovers_that_no_live_upload_holds(tmp_path: Path) -> None:
    """A temp file from a killed process goes at once, whatever its age; an upload in
    flight (here, or on a replica sharing the data dir) holds its lock and stays."""
    from control_plane.artifacts.blob_store import BlobStore

    store = BlobStore(tmp_path / "blobs")
    store.prepare()
    crashed = store.tmp_dir / "upload-of-a-killed-process"
    crashed.write_bytes(b"x" * 10)  # just written: young, but nobody holds it
    in_flight = store.start_upload(1 << 20)
    in_flight.write(b"y" * 10)
    assert store.prepare() == [crashed]
    assert not crashed.exists()
    assert in_flight.temp_path.exists()
    in_flight.finish()
    assert store.prepare() == [], "finished but not yet committed: still held"
    in_flight.discard()
