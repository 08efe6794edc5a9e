"""CI gate on real third-party documentation (evals/realdocs): the shipped retriever, on
the held-out questions, keeps the recorded baseline and beats BM25-only and dense-only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_agent.rag import RagIndex
from evals.rag.runner import regressions
from evals.realdocs.harness import (
    BASELINE,
    SHIPPED,
    beats_single_retrievers,
    cached_index,
    evaluate,
    index_key,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def realdocs(tmp_path_factory: pytest.TempPathFactory, embedder: object) -> Path:
    """The real-document index, from the model cache when one for this code exists."""
    from converters.sources import cache_root

    built = cached_index(cache_root() / "rag-eval", embedder)  # type: ignore[arg-type]
    path = tmp_path_factory.mktemp("realdocs") / "realdocs.sqlite"
    shutil.copy(built, path)
    return path


def test_heldout_quality_keeps_the_baseline_and_beats_single_retrievers(
    realdocs: Path, embedder: object
) -> None:
    with RagIndex.open(realdocs, embedder.identity) as index:  # type: ignore[attr-defined]
        report = evaluate(index, embedder, splits=("heldout",))  # type: ignore[arg-type]
    baseline = json.loads(BASELINE.read_text())["metrics"]
    assert regressions(report["metrics"], baseline) == []
    assert beats_single_retrievers(report["results"]["heldout"], SHIPPED) == []


def test_the_index_cache_key_names_the_embedding_model() -> None:
    assert index_key("a" * 64) == index_key("a" * 64)
    assert index_key("a" * 64) != index_key("b" * 64)
