"""Duplicate detection and reciprocal-rank fusion."""

from __future__ import annotations

import pytest

from edge_agent.rag.dedupe import content_sha256, estimated_jaccard, minhash_signature
from edge_agent.rag.fusion import reciprocal_rank_fusion

DOC = (
    "Pika tags are coin-sized wireless sensors that ride inside pallets and cold boxes. Each "
    "tag measures temperature, humidity and shock, and reports to the nearest Kestrel "
    "gateway every 30 seconds. A Pika tag runs on a CR2032 coin cell. With the default "
    "reporting interval the battery lasts about 18 months."
)


def test_identical_text_has_the_same_content_hash() -> None:
    assert content_sha256(DOC) == content_sha256(str(DOC))
    assert content_sha256(DOC) != content_sha256(DOC + " ")


def test_a_lightly_edited_copy_is_a_near_duplicate() -> None:
    edited = DOC.replace("about 18 months", "about eighteen months")
    assert estimated_jaccard(minhash_signature(DOC), minhash_signature(edited)) >= 0.7


def test_unrelated_documents_are_not_near_duplicates() -> None:
    other = "Frozen food shipments must stay at or below minus 18 degrees Celsius at all times."
    assert estimated_jaccard(minhash_signature(DOC), minhash_signature(other)) < 0.1


def test_signatures_are_stable_across_calls() -> None:
    assert (minhash_signature(DOC) == minhash_signature(DOC)).all()


def test_rrf_rewards_items_ranked_well_by_both_lists() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]])
    assert [item for item, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_rrf_weights_and_ties_are_deterministic() -> None:
    assert [i for i, _ in reciprocal_rank_fusion([[1], [2]])] == [1, 2]
    assert [i for i, _ in reciprocal_rank_fusion([[1], [2]], weights=[1, 2])] == [2, 1]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=[1, 2])
