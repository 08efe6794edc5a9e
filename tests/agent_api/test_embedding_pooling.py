"""A release may ask for ``pooling: none`` on an embedding model; the agent then mean-pools
llama.cpp's per-token vectors itself. llama-cpp-python 0.3.36 reads the per-token outputs
of the second and later texts of one unpooled ``embed`` call at the wrong offset, so the
runtime embedder must give each text its own call there (real MiniLM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.release import InstalledArtifact
from edge_agent.runtime import resolve_options
from edge_agent.runtime.llama import LlamaEmbedder
from tests.agent_api.conftest import settings_for_tests

pytestmark = pytest.mark.slow

TEXTS = [
    "The cat sat on the mat by the door.",
    "Signed updates keep devices that run offline safe from tampered models.",
    "tar -x extracts files",
]


def _load(minilm: Path, pooling: str) -> LlamaEmbedder:
    artifact = InstalledArtifact("minilm", "embedding", "gguf", "0" * 64, 1, minilm)
    config = {"models": {"minilm": {"pooling": pooling}}}
    options = resolve_options(settings_for_tests(n_ctx=256), config, "minilm", cpu_count=2)
    return LlamaEmbedder.load(artifact, options)


def _cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    x, y = np.asarray(a), np.asarray(b)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return [round(float(c), 5) for c in (x * y).sum(axis=1)]


def test_pooling_none_embeds_every_text_of_a_request_like_the_model_mean(minilm: Path) -> None:
    by_agent = _load(minilm, "none")
    by_model = _load(minilm, "mean")
    try:
        together = by_agent.embed(TEXTS).vectors
        alone = [by_agent.embed([t]).vectors[0] for t in TEXTS]
        model_mean = by_model.embed(TEXTS).vectors
    finally:
        by_agent.close()
        by_model.close()
    assert min(_cosines(together, alone)) > 0.9999, "a text's vector depends on its batch"
    assert min(_cosines(together, model_mean)) > 0.999
