"""Shared real models for the RAG tests: the converted MiniLM GGUF and SmolLM2."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge_agent.rag import RagEngine, RagIndex
from tests.requirements import LLAMA, MINILM, require_installed, smollm2_gguf_path

if TYPE_CHECKING:
    from edge_agent.rag.llama import LlamaChat, LlamaEmbedder

DOCS = Path(__file__).resolve().parents[2] / "evals" / "rag" / "docs"


def _needs_llama() -> None:
    require_installed(*LLAMA)


@pytest.fixture(scope="session")
def minilm_gguf() -> Path:
    """The converted all-MiniLM-L6-v2 GGUF, cached by source sha256 in the model cache."""
    require_installed(*MINILM)
    from converters.minilm_gguf import cached_gguf

    return cached_gguf()


@pytest.fixture(scope="session")
def embedder(minilm_gguf: Path) -> Iterator[LlamaEmbedder]:
    _needs_llama()
    from edge_agent.rag.llama import LlamaEmbedder

    model = LlamaEmbedder(minilm_gguf)
    yield model
    model.close()


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def chat(smollm_gguf: Path) -> Iterator[LlamaChat]:
    _needs_llama()
    from edge_agent.rag.llama import LlamaChat

    model = LlamaChat(smollm_gguf, n_ctx=4096)
    yield model
    model.close()


@pytest.fixture(scope="session")
def handbook_index(tmp_path_factory: pytest.TempPathFactory, embedder: LlamaEmbedder) -> Path:
    """The eval pack's handbook, ingested once; copy it before changing it."""
    path = tmp_path_factory.mktemp("handbook") / "handbook.sqlite"
    with RagIndex.create(path, embedder.identity) as index:
        engine = RagEngine(index, embedder)
        results = engine.ingest_paths(sorted(DOCS.iterdir()), root=DOCS)
        assert not [r for r in results if isinstance(r, Exception)]
    return path


@pytest.fixture
def handbook(tmp_path: Path, handbook_index: Path, embedder: LlamaEmbedder) -> Iterator[RagEngine]:
    """A private, writable copy of the handbook index with an engine around it."""
    path = tmp_path / "handbook.sqlite"
    shutil.copy(handbook_index, path)
    index = RagIndex.open(path, embedder.identity)
    yield RagEngine(index, embedder)
    index.close()
