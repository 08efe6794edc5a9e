"""Replay the tuning split's retrieval offline to compare second-stage variants.

    python -m evals.realdocs.replay --index FILE [--late]

Each tuning question is asked once (question embedding, BM25 list, cosine with every
chunk and every stored sentence); the variants of fusion and rerank in docs/rag.md
("Second tuning round") are then scored from those lists without asking again. Only the
tuning split: the held-out split is not what variants are chosen on. ``--late`` also
computes every chunk's token vectors once (minutes) and scores the late-interaction
variants of the third round.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.rag import RagIndex
from edge_agent.rag.chunking import with_context
from edge_agent.rag.engine import EmbeddingModel
from edge_agent.rag.fusion import reciprocal_rank_fusion
from edge_agent.rag.rerank import TokenVectors, late_interaction
from edge_agent.rag.text import normalize_text, question_terms, term_coverage, token_spans
from evals.rag.runner import occurrences
from evals.realdocs.harness import QUESTIONS

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Asked:
    """One tuning question's replayable lists, indexed by chunk position."""

    cosine: Floats
    sentence: Floats  # best stored sentence's cosine (the chunk's own when it has none)
    coverage: Floats
    lexical: list[int]
    gold: list[set[int]]  # per gold passage: the chunk positions that cover it
    terms: tuple[str, ...] = ()
    question: str = ""


def ask_all(index: RagIndex, embedder: EmbeddingModel) -> list[Asked]:
    """The answerable tuning questions, asked once each."""
    everything = index.exact_vector_search(np.zeros(index.identity.dimension, np.float32), 10**9)
    ids = sorted(i for i, _ in everything)
    position = {i: n for n, i in enumerate(ids)}
    stored = index.chunks(ids)
    sentences = index.sentence_vectors(ids)
    texts = [with_context(stored[i].as_chunk(), stored[i].title) for i in ids]
    asked = []
    for q in json.loads(QUESTIONS.read_text())["questions"]:
        if q["split"] != "tune" or not q["gold"]:
            continue
        question = normalize_text(q["question"])
        spans = token_spans(question)
        clipped = question if len(spans) <= 200 else question[: spans[199][1]]
        vector = np.asarray(embedder.embed([clipped])[0], dtype=np.float32)
        vector /= np.linalg.norm(vector)
        cosine = np.zeros(len(ids))
        for i, score in index.exact_vector_search(vector, len(ids)):
            cosine[position[i]] = score
        best = cosine.copy()
        for i, sv in sentences.items():
            if len(sv.spans):
                best[position[i]] = float((sv.vectors @ vector).max())
        terms = question_terms(q["question"])[:32]
        gold = []
        for g in q["gold"]:
            occs = occurrences(g["quote"], index.document_text(g["document"]) or "")
            gold.append(
                {
                    position[i]
                    for i in ids
                    if stored[i].document == g["document"]
                    and any(
                        min(stored[i].end, b) - max(stored[i].start, a) >= 0.5 * (b - a)
                        for a, b in occs
                    )
                }
            )
        asked.append(
            Asked(
                cosine=cosine,
                sentence=best,
                coverage=np.array([term_coverage(terms, t) for t in texts]),
                lexical=[position[i] for i in index.lexical_search(terms, 200)],
                gold=gold,
                terms=tuple(terms),
                question=clipped,
            )
        )
    return asked


def chunk_tokens(
    index: RagIndex, embed_tokens: Callable[[list[str]], list[TokenVectors]]
) -> list[TokenVectors]:
    """Every chunk's token vectors (title and heading included), by chunk position."""
    everything = index.exact_vector_search(np.zeros(index.identity.dimension, np.float32), 10**9)
    ids = sorted(i for i, _ in everything)
    stored = index.chunks(ids)
    return embed_tokens([with_context(stored[i].as_chunk(), stored[i].title) for i in ids])


def late_reranked(
    pool: int,
    late: float,
    chunks: list[TokenVectors],
    questions: dict[str, TokenVectors],
    terms: float = 0.3,
) -> Ranker:
    """The ``late`` mode: the first ``pool`` fused, cosine + terms + late x MaxSim."""

    def rank(a: Asked) -> list[int]:
        fused = hybrid(a)[:pool]
        li = late_interaction(questions[a.question], a.terms, [chunks[i] for i in fused])
        score = [a.cosine[i] + terms * a.coverage[i] + late * li[n] for n, i in enumerate(fused)]
        return [fused[j] for j in np.argsort(-np.array(score), kind="stable")]

    return rank


Ranker = Callable[[Asked], list[int]]


def dense(a: Asked, n: int = 40) -> list[int]:
    return [int(i) for i in np.argsort(-a.cosine, kind="stable")[:n]]


def hybrid(a: Asked) -> list[int]:
    return [i for i, _ in reciprocal_rank_fusion([a.lexical[:40], dense(a)], k=60)]


def reranked(pool: int, terms: float, sentence: float = 0.0) -> Ranker:
    def rank(a: Asked) -> list[int]:
        fused = hybrid(a)[:pool]
        score = [a.cosine[i] + terms * a.coverage[i] + sentence * a.sentence[i] for i in fused]
        return [fused[j] for j in np.argsort(-np.array(score), kind="stable")]

    return rank


def scores(asked: list[Asked], rank: Ranker) -> dict[str, float]:
    """Recall@1/5 and MRR@10 over the gold passages."""
    r1 = r5 = rr = 0.0
    n = 0
    for a in asked:
        top = rank(a)[:10]
        for gold in a.gold:
            hit = next((k + 1 for k, p in enumerate(top) if p in gold), None)
            r1 += hit == 1
            r5 += hit is not None and hit <= 5
            rr += 1 / hit if hit else 0.0
            n += 1
    return {"recall@1": round(r1 / n, 3), "recall@5": round(r5 / n, 3), "mrr": round(rr / n, 3)}


VARIANTS: dict[str, Ranker] = {
    "dense": dense,
    "bm25": lambda a: a.lexical[:40],
    "hybrid": hybrid,
    **{f"rerank first {p}, terms 0.3": reranked(p, 0.3) for p in (10, 20, 40)},
    **{f"rerank first {p}, cosine only": reranked(p, 0.0) for p in (10, 20, 40)},
    **{f"rerank first 20, terms {w}": reranked(20, w) for w in (0.1, 0.2, 0.5)},
    **{f"rerank first 20, + sentence {w}": reranked(20, 0.3, w) for w in (0.25, 0.5, 1.0)},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.replay", description=__doc__)
    parser.add_argument("--index", type=Path, required=True, help="an index of docs/")
    parser.add_argument("--late", action="store_true", help="also the late-interaction rows")
    args = parser.parse_args(argv)
    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.llama import LlamaEmbedder

    embedder = LlamaEmbedder(cached_gguf())
    variants = dict(VARIANTS)
    with RagIndex.open(args.index, embedder.identity) as index:
        asked = ask_all(index, embedder)
        if args.late:
            chunks = chunk_tokens(index, embedder.embed_tokens)
            questions = dict(
                zip(
                    [a.question for a in asked],
                    embedder.embed_tokens([a.question for a in asked]),
                    strict=True,
                )
            )
            for pool in (10, 20):
                for w in (0.5, 1.0, 1.5):
                    variants[f"late first {pool}, terms 0.3, late {w}"] = late_reranked(
                        pool, w, chunks, questions
                    )
                variants[f"late first {pool}, no terms, late 1.0"] = late_reranked(
                    pool, 1.0, chunks, questions, 0.0
                )
    for name, rank in variants.items():
        print(f"{name:34} {json.dumps(scores(asked, rank))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
