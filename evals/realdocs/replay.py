"""Replay the tuning split's retrieval offline to compare second-stage variants.

    python -m evals.realdocs.replay [--pack 1] [--pack 3] [--index FILE] [--late]

Each tuning question is asked once (question embedding, BM25 list, cosine with every
chunk and every stored sentence); the variants of fusion and rerank in docs/rag.md
("Second tuning round") are then scored from those lists without asking again. Only the
tuning split: the held-out split is not what variants are chosen on. ``--late`` also
computes every chunk's token vectors once (minutes) and scores the late-interaction
variants of the third round. ``--pack`` (repeatable; pack 1 by default) picks the tuning
packs, 1 and 3, whose questions are pooled; their indexes come from the model cache
(``$OUTPOST_MODEL_CACHE/rag-eval``, built when missing) unless ``--index`` names pack 1's.
"""

from __future__ import annotations

import argparse
import itertools
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
from evals.realdocs.harness import PACK1, PACK3, Pack, cached_index

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


def ask_all(
    index: RagIndex,
    embedder: EmbeddingModel,
    pack: Pack = PACK1,
    *,
    unanswerable: bool = False,
    split: str = "tune",
) -> list[Asked]:
    """The pack's answerable questions of ``split`` (and with ``unanswerable`` the
    unanswerable ones too, whose ``gold`` is empty), asked once each."""
    everything = index.exact_vector_search(np.zeros(index.identity.dimension, np.float32), 10**9)
    ids = sorted(i for i, _ in everything)
    position = {i: n for n, i in enumerate(ids)}
    stored = index.chunks(ids)
    sentences = index.sentence_vectors(ids)
    texts = [with_context(stored[i].as_chunk(), stored[i].title) for i in ids]
    asked = []
    for q in json.loads(pack.questions.read_text())["questions"]:
        if q["split"] != split or not (q["gold"] or unanswerable):
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


def pooled_rerank(dense_n: int, bm25_n: int, terms: float) -> Ranker:
    """Rerank a pool of the dense top ``dense_n`` and the BM25 top ``bm25_n`` (no RRF) by
    cosine + ``terms`` x term coverage."""

    def rank(a: Asked) -> list[int]:
        pool = list(dict.fromkeys([*dense(a, dense_n), *a.lexical[:bm25_n]]))
        score = [a.cosine[i] + terms * a.coverage[i] for i in pool]
        return [pool[j] for j in np.argsort(-np.array(score), kind="stable")]

    return rank


def weighted_hybrid(dense_weight: float, pool: int, terms: float) -> Ranker:
    """RRF with the dense list weighted ``dense_weight`` (BM25 1), then the shipped rerank."""

    def rank(a: Asked) -> list[int]:
        fused = [
            i
            for i, _ in reciprocal_rank_fusion(
                [a.lexical[:40], dense(a)], k=60, weights=[1.0, dense_weight]
            )
        ][:pool]
        score = [a.cosine[i] + terms * a.coverage[i] for i in fused]
        return [fused[j] for j in np.argsort(-np.array(score), kind="stable")]

    return rank


def head_then(m: int, first: Ranker, second: Ranker) -> Ranker:
    """The top ``m`` of ``first``, then ``second``'s order for the rest (no repeats)."""

    def rank(a: Asked) -> list[int]:
        return list(dict.fromkeys([*first(a)[:m], *second(a)]))

    return rank


def scores(asked: list[Asked], rank: Ranker) -> dict[str, float]:
    """Recall@1/5 and MRR@10 over the gold passages."""
    return scores_of([(a, rank) for a in asked])


def scores_of(ranked: list[tuple[Asked, Ranker]]) -> dict[str, float]:
    """``scores`` of questions that may each have their own ranker (one per pack)."""
    r1 = r5 = rr = 0.0
    n = 0
    for a, rank in ranked:
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
    **{
        f"rerank first {p}, terms {t}, sentence {w}": reranked(p, t, w)
        for p, t, w in itertools.product((10, 20, 40), (0.2, 0.3, 0.5), (0.25, 0.5, 0.75, 1.0))
    },
    **{
        f"pool dense {d} + bm25 {b}, terms {w}": pooled_rerank(d, b, w)
        for d, b, w in itertools.product((10, 20), (0, 5, 10), (0.1, 0.2, 0.3))
    },
    **{f"shipped top {m}, then dense": head_then(m, reranked(20, 0.3), dense) for m in (2, 3)},
    **{f"dense top {m}, then shipped": head_then(m, dense, reranked(20, 0.3)) for m in (1, 2)},
    **{
        f"rrf dense x{dw}, first {p}, terms {w}": weighted_hybrid(dw, p, w)
        for dw, p, w in itertools.product((1.5, 2.0, 3.0), (10, 20), (0.2, 0.3))
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.replay", description=__doc__)
    parser.add_argument(
        "--pack", action="append", choices=("1", "3"), help="a tuning pack (repeatable)"
    )
    parser.add_argument("--index", type=Path, help="an index of pack 1's docs/")
    parser.add_argument("--late", action="store_true", help="also the late-interaction rows")
    args = parser.parse_args(argv)
    from converters.minilm_gguf import cached_gguf
    from converters.sources import cache_root
    from edge_agent.rag.llama import LlamaEmbedder

    embedder = LlamaEmbedder(cached_gguf())
    packs = [{"1": PACK1, "3": PACK3}[name] for name in dict.fromkeys(args.pack or ["1"])]
    asked: dict[str, list[Asked]] = {}
    variants: dict[str, dict[str, Ranker]] = {}
    for pack in packs:
        path = (
            args.index
            if args.index and pack is PACK1
            else cached_index(cache_root() / "rag-eval", embedder, pack)
        )
        with RagIndex.open(path, embedder.identity) as index:
            asked[pack.name] = ask_all(index, embedder, pack)
            variants[pack.name] = dict(VARIANTS)
            if args.late:
                chunks = chunk_tokens(index, embedder.embed_tokens)
                texts = [a.question for a in asked[pack.name]]
                questions = dict(zip(texts, embedder.embed_tokens(texts), strict=True))
                for pool in (10, 20):
                    for w in (0.5, 1.0, 1.5):
                        variants[pack.name][f"late first {pool}, terms 0.3, late {w}"] = (
                            late_reranked(pool, w, chunks, questions)
                        )
                    variants[pack.name][f"late first {pool}, no terms, late 1.0"] = late_reranked(
                        pool, 1.0, chunks, questions, 0.0
                    )
    names = list(variants[packs[0].name])
    counts = ", ".join(f"{name}: {len(a)} answerable" for name, a in asked.items())
    print(f"tuning questions ({counts})")
    for name in names:
        per_pack = {p: scores(asked[p], variants[p][name]) for p in asked}
        line = f"{name:34} {json.dumps(pooled_scores(asked, variants, name))}"
        if len(asked) > 1:
            line += "  " + "  ".join(f"{p}: {json.dumps(v)}" for p, v in per_pack.items())
        print(line)
    return 0


def pooled_scores(
    asked: dict[str, list[Asked]], variants: dict[str, dict[str, Ranker]], name: str
) -> dict[str, float]:
    """``scores`` over every pack's questions together (each gold passage counted once)."""
    return scores_of([(a, variants[p][name]) for p, questions in asked.items() for a in questions])


if __name__ == "__main__":
    raise SystemExit(main())
