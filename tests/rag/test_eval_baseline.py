"""CI gate: retrieval, citation and abstention quality must not drop below the baseline."""

from __future__ import annotations

import json

import pytest

from edge_agent.rag import RagEngine
from evals.rag.runner import (
    BASELINE,
    GoldSpan,
    evaluate,
    locate,
    regressions,
    retrieval_scores,
)

pytestmark = pytest.mark.slow


def test_eval_pack_quality_does_not_regress(handbook: RagEngine) -> None:
    report = evaluate(handbook)
    baseline = json.loads(BASELINE.read_text())["metrics"]
    assert regressions(report["metrics"], baseline) == []


def test_the_gate_fires_when_a_metric_drops() -> None:
    assert regressions({"mrr": 0.5}, {"mrr": 0.9}) == ["mrr: 0.500 < baseline 0.900"]
    assert regressions({"mrr": 0.89}, {"mrr": 0.9}) == []


def test_retrieval_scores_count_each_gold_passage_once() -> None:
    gold = [GoldSpan("a", 10, 20)]
    ranked = [("b", 0, 100), ("a", 0, 30), ("a", 5, 25)]
    scores = retrieval_scores(ranked, gold)
    assert scores["recall@1"] == 0 and scores["recall@5"] == 1
    assert scores["mrr"] == 0.5 and scores["ndcg@10"] == pytest.approx(1 / 1.585, rel=1e-3)
    assert locate("two  words", "x two\nwords y") == (2, 11)
