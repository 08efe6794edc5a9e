"""Indexes ship like models: checked against the release's embedding model, served from a
working copy, rolled back with the release."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_agent.errors import BadUpdateError, NoModelError
from edge_agent.rag.index import EmbeddingIdentity, RagIndex
from edge_agent.rag.release import check_release_index, working_index
from edge_agent.release import InstalledArtifact, InstalledRelease

MODEL_SHA = "c" * 64


def make_index(path: Path, sha: str) -> Path:
    RagIndex.create(path, EmbeddingIdentity("minilm", sha, 64)).close()
    return path


def release(tmp_path: Path, index: Path | None, model_sha: str = MODEL_SHA) -> InstalledRelease:
    artifacts = [
        InstalledArtifact("minilm", "embedding", "gguf", model_sha, 1, tmp_path / "m.gguf")
    ]
    if index is not None:
        digest = hashlib.sha256(index.read_bytes()).hexdigest()
        artifacts.append(
            InstalledArtifact("idx", "rag-index", "sqlite", digest, index.stat().st_size, index)
        )
    return InstalledRelease("rel-7", "r", "1", 7, tuple(artifacts))


def test_a_release_whose_index_matches_its_embedding_model_passes(tmp_path: Path) -> None:
    check_release_index(release(tmp_path, make_index(tmp_path / "i.sqlite", MODEL_SHA)))


def test_an_index_built_with_another_embedding_model_is_a_bad_update(tmp_path: Path) -> None:
    index = make_index(tmp_path / "i.sqlite", "d" * 64)
    with pytest.raises(BadUpdateError, match="rebuild the index with that model"):
        check_release_index(release(tmp_path, index))


def test_a_corrupt_shipped_index_is_a_bad_update(tmp_path: Path) -> None:
    index = tmp_path / "i.sqlite"
    index.write_bytes(b"\x00" * 8192)
    with pytest.raises(BadUpdateError, match="unusable"):
        check_release_index(release(tmp_path, index))


def test_an_index_without_an_embedding_model_is_a_bad_update(tmp_path: Path) -> None:
    index = make_index(tmp_path / "i.sqlite", MODEL_SHA)
    digest = hashlib.sha256(index.read_bytes()).hexdigest()
    bare = InstalledRelease(
        "rel-8", "r", "1", 8, (InstalledArtifact("idx", "rag-index", "sqlite", digest, 1, index),)
    )
    with pytest.raises(BadUpdateError, match="no embedding model"):
        check_release_index(bare)


def test_the_working_copy_is_per_release_and_leaves_the_artifact_alone(tmp_path: Path) -> None:
    shipped = make_index(tmp_path / "i.sqlite", MODEL_SHA)
    before = shipped.read_bytes()
    rel = release(tmp_path, shipped)
    copy = working_index(rel, tmp_path / "state")
    assert copy == tmp_path / "state" / "rag" / "rel-7" / "index.sqlite"
    with RagIndex.open(copy) as index:
        index.delete_document("nothing")
    assert copy.read_bytes() != b"" and shipped.read_bytes() == before
    assert working_index(rel, tmp_path / "state") == copy  # copied once


def test_no_release_means_no_rag(tmp_path: Path) -> None:
    from edge_agent.rag.release import open_release_engine

    with pytest.raises(NoModelError):
        open_release_engine(None, None, None, state_dir=tmp_path)  # type: ignore[arg-type]
