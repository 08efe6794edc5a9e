"""Second-stage ranking of the fused candidates: a pure scoring rule over features the
index already holds (no cross-encoder model can be had offline here; see docs/rag.md).

Each candidate chunk is scored by the cosine of its own embedding with the question, the
cosine of its best-matching sentence (sentence embeddings are computed at ingest, so this
costs one matrix product per query), and the share of the question's content words it
contains (title and heading included). The weights were chosen on the tuning split of the
real-document eval (``evals/realdocs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "RerankWeights", "rerank"]


@dataclass(frozen=True)
class RerankWeights:
    """Weights of the score's three features. Chosen on the tuning split: the best
    sentence's cosine lowered recall@5 at every weight tried (0.25-1.0), so it is off by
    default (and the sentence vectors are then not read); term coverage 0.3-0.6 gave the
    same recall@5, 0.3 the higher MRR.
    """

    chunk: float = 1.0
    sentence: float = 0.0
    terms: float = 0.3


@dataclass(frozen=True)
class Candidate:
    id: int
    chunk_similarity: float
    sentence_similarity: float  # best sentence of the chunk; the chunk's own when it has none
    term_coverage: float


def rerank(candidates: Sequence[Candidate], weights: RerankWeights = RerankWeights()) -> list[int]:
    """Candidate ids, best first; ties keep the fused order."""
    scored = [
        (
            -(
                weights.chunk * c.chunk_similarity
                + weights.sentence * c.sentence_similarity
                + weights.terms * c.term_coverage
            ),
            n,
            c.id,
        )
        for n, c in enumerate(candidates)
    ]
    return [i for _, _, i in sorted(scored)]
