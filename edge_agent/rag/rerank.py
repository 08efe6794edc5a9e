"""Second-stage ranking of the fused candidates: a pure scoring rule (no cross-encoder
model can be had offline here; see docs/rag.md).

Each candidate chunk is scored by the cosine of its own embedding with the question, the
cosine of its best-matching sentence (sentence embeddings are computed at ingest, so this
costs one matrix product per query), the share of the question's content words it
contains (title and heading included) and, in the ``late`` mode, a late-interaction
(ColBERT-style MaxSim) similarity of the question's content tokens to the chunk's token
vectors (:func:`late_interaction`). The weights were chosen on the tuning split of the
real-document eval (``evals/realdocs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Candidate", "RerankWeights", "TokenVectors", "late_interaction", "rerank"]

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RerankWeights:
    """Weights of the score's features. Chosen on the tuning split: the best sentence's
    cosine lowered recall@5 at every weight tried (0.25-1.0), so it is off by default (and
    the sentence vectors are then not read); term coverage 0.3-0.6 gave the same recall@5,
    0.3 the higher MRR. ``late`` (the MaxSim of token vectors) is 0 in the shipped
    ``rerank`` mode and 1.0 in the ``late`` mode (docs/rag.md, "Third round").
    """

    chunk: float = 1.0
    sentence: float = 0.0
    terms: float = 0.3
    late: float = 0.0


@dataclass(frozen=True)
class Candidate:
    id: int
    chunk_similarity: float
    sentence_similarity: float  # best sentence of the chunk; the chunk's own when it has none
    term_coverage: float
    late_similarity: float = 0.0  # :func:`late_interaction`; 0 when it was not computed


@dataclass(frozen=True)
class TokenVectors:
    """One text's per-token output vectors (one row per model token) and, for each token,
    the case-folded word it is part of ("" for the model's special tokens).
    """

    words: tuple[str, ...]
    vectors: Floats


def rerank(candidates: Sequence[Candidate], weights: RerankWeights = RerankWeights()) -> list[int]:
    """Candidate ids, best first; ties keep the fused order."""
    scored = [
        (
            -(
                weights.chunk * c.chunk_similarity
                + weights.sentence * c.sentence_similarity
                + weights.terms * c.term_coverage
                + weights.late * c.late_similarity
            ),
            n,
            c.id,
        )
        for n, c in enumerate(candidates)
    ]
    return [i for _, _, i in sorted(scored)]


def _unit(rows: Floats) -> Floats:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: Floats = (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return unit


def _centered_unit(rows: Floats, center: Floats) -> Floats:
    return _unit(rows - center)


@dataclass(frozen=True)
class CenteredTokens:
    """The question's picked tokens and each chunk's non-special tokens, as unit vectors
    centered on the mean unit token of the chunks (see ``late_interaction``)."""

    words: tuple[str, ...]  # the question word each row of ``question`` belongs to
    question: Floats
    chunks: list[Floats]  # one matrix per chunk, empty for a chunk without tokens


def centered_tokens(
    question: TokenVectors, content_words: Sequence[str], chunks: Sequence[TokenVectors]
) -> CenteredTokens | None:
    """The question's tokens that belong to ``content_words`` (all its non-special tokens
    when none does) and the chunks' tokens, centered; None when either side has none."""
    rows = [_unit(c.vectors[[i for i, w in enumerate(c.words) if w]]) for c in chunks]
    pooled = [r for r in rows if len(r)]
    if not pooled or not any(question.words):
        return None
    center = np.concatenate(pooled).mean(axis=0).astype(np.float32)
    wanted = set(content_words)
    picked = [i for i, w in enumerate(question.words) if w and w in wanted]
    if not picked:
        picked = [i for i, w in enumerate(question.words) if w]
    return CenteredTokens(
        words=tuple(question.words[i] for i in picked),
        question=_centered_unit(_unit(question.vectors[picked]), center),
        chunks=[_centered_unit(r, center) if len(r) else r for r in rows],
    )


def late_interaction(
    question: TokenVectors, content_words: Sequence[str], chunks: Sequence[TokenVectors]
) -> list[float]:
    """MaxSim of the question against each chunk: the mean, over the question's tokens
    that belong to ``content_words`` (all its non-special tokens when none does), of the
    best cosine with any non-special token of the chunk.

    Token vectors of a mean-pooled sentence model all point roughly the same way, so the
    unit token vectors are centered on the mean unit token vector of the candidates and
    normalized again (a chunk's tokens are otherwise all "similar" to every question
    token); chunks without tokens score 0.
    """
    tokens = centered_tokens(question, content_words, chunks)
    if tokens is None:
        return [0.0] * len(chunks)
    q = tokens.question
    return [float((q @ r.T).max(axis=1).mean()) if len(r) else 0.0 for r in tokens.chunks]
