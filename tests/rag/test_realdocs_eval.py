"""CI gate on real third-party documentation (evals/realdocs): the shipped retriever, on
the held-out questions, keeps the recorded baseline and should beat BM25-only and
dense-only (it does not yet beat dense-only: a strict xfail records that).
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

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
    shipped_thresholds,
)

if TYPE_CHECKING:
    from edge_agent.rag.engine import RetrievalMode
    from edge_agent.rag.llama import LlamaEmbedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heldout_report(
    tmp_path_factory: pytest.TempPathFactory, embedder: LlamaEmbedder
) -> dict[str, Any]:
    """The held-out report over an index of the pack (kept in the model cache per code)."""
    from converters.sources import cache_root

    built = cached_index(cache_root() / "rag-eval", embedder)
    path = tmp_path_factory.mktemp("realdocs") / "realdocs.sqlite"
    shutil.copy(built, path)
    with RagIndex.open(path, embedder.identity) as index:
        # the gate reads the shipped retriever and the two single ones only
        modes: tuple[RetrievalMode, ...] = tuple(dict.fromkeys(("bm25", "dense", SHIPPED)))
        return evaluate(index, embedder, splits=("heldout",), modes=modes)


def test_heldout_quality_keeps_the_baseline(heldout_report: dict[str, Any]) -> None:
    baseline = json.loads(BASELINE.read_text())["metrics"]
    assert regressions(heldout_report["metrics"], baseline) == []


@pytest.mark.xfail(
    strict=True,
    reason="issue 14, open: on the held-out split dense-only reaches recall@5 0.87 / MRR 0.65"
    " and the shipped rerank 0.80 / 0.61 (it beats BM25-only and hybrid, and beat dense-only"
    " on the tuning split, 0.70 vs 0.57); a second tuning round found no variant that differs"
    " by more than two tuning questions, and the third (late interaction over MiniLM's token"
    " vectors, mode 'late': 0.73 / 0.53 on tuning) reached 0.80 / 0.64 on held-out, still"
    " below dense-only, at ~16x the answer latency, so it is not shipped (docs/rag.md)",
)
def test_heldout_shipped_retriever_beats_bm25_and_dense_alone(
    heldout_report: dict[str, Any],
) -> None:
    assert beats_single_retrievers(heldout_report["results"]["heldout"], SHIPPED) == []


def test_the_gate_compares_against_the_better_single_retriever() -> None:
    results = {
        "bm25": {"recall@5": 0.5, "mrr": 0.4},
        "dense": {"recall@5": 0.8, "mrr": 0.6},
        "rerank": {"recall@5": 0.7, "mrr": 0.65},
    }
    assert beats_single_retrievers(results, "rerank") == ["rerank recall@5 0.700 < 0.800"]


def test_the_baseline_records_the_thresholds_that_ship() -> None:
    """The gate's numbers hold for the abstention thresholds and rerank settings recorded
    with them: changing a default without re-recording the baseline fails here.
    """
    recorded = json.loads(BASELINE.read_text())["thresholds"]
    assert recorded == shipped_thresholds()
    assert recorded["retrieval.mode"] == SHIPPED


def test_the_index_cache_key_names_the_embedding_model() -> None:
    assert index_key("a" * 64) == index_key("a" * 64)
    assert index_key("a" * 64) != index_key("b" * 64)


def test_the_replay_scores_the_rank_of_the_first_chunk_covering_each_gold_passage() -> None:
    import numpy as np

    from evals.realdocs.replay import Asked, reranked, scores

    # chunk 2 is the gold passage; by cosine it is third, term coverage lifts it to first
    asked = Asked(
        cosine=np.array([0.6, 0.5, 0.45, 0.1]),
        sentence=np.array([0.6, 0.5, 0.45, 0.1]),
        coverage=np.array([0.0, 0.0, 1.0, 0.0]),
        lexical=[2, 3],
        gold=[{2}],
    )
    assert scores([asked], reranked(10, 0.0)) == {"recall@1": 0.0, "recall@5": 1.0, "mrr": 0.333}
    assert scores([asked], reranked(10, 0.3)) == {"recall@1": 1.0, "recall@5": 1.0, "mrr": 1.0}
