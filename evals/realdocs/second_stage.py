"""Sixth round: all-mpnet-base-v2 as a second embedding model (docs/rag.md, "Sixth round").

    python -m evals.realdocs.second_stage [--out FILE]             # tuning packs 1 and 3
    python -m evals.realdocs.second_stage --heldout [--out FILE]   # the one look
    python -m evals.realdocs.second_stage --pack4 [--out FILE]     # the fresh judge (once)

The shipped pool (reciprocal-rank fusion of BM25 and MiniLM's dense list, first 20) is
re-scored with a second cosine, the question's against each chunk under all-mpnet-base-v2
(:mod:`evals.realdocs.mpnet`; chunk vectors computed once per index and cached beside it):
score = MiniLM cosine + w x MPNet cosine + t x term coverage. Beside it, in the same run:
BM25, dense MiniLM, dense MPNet, the two hybrids and what ships. ``CHOSEN`` was fixed on
the tuning packs before the held-out judges were read; only ``--heldout`` reads them.
``--pack4`` reads pack 4, written after that look to judge ``CHOSEN`` on questions that no
round has seen (docs/rag.md, "Seventh round").
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.rag.fusion import reciprocal_rank_fusion
from evals.realdocs.abstain_tokens import front
from evals.realdocs.cross_encoder import Packed, load
from evals.realdocs.harness import PACK1, PACK2, PACK3, PACK4, Pack, index_key
from evals.realdocs.mpnet import MPNetEncoder, model_dir
from evals.realdocs.replay import Asked, Ranker, dense, hybrid, reranked, scores_of

POOL = 20
# (MPNet weight, term-coverage weight), chosen on the tuning packs (docs/rag.md)
CHOSEN = (1.0, 0.2)


def second_cosines(packed: Packed, enc: MPNetEncoder, cache: Path) -> dict[str, np.ndarray]:
    """Each question's MPNet cosine with every chunk, by chunk position."""
    if cache.exists():
        chunks = np.load(cache)
    else:
        chunks = enc.embed(packed.texts)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, chunks)
    questions = enc.embed([a.question for a in packed.asked])
    return {a.question: chunks @ q for a, q in zip(packed.asked, questions, strict=True)}


def rankers(second: dict[str, np.ndarray]) -> dict[str, Ranker]:
    def second_dense(a: Asked, n: int = 40) -> list[int]:
        return [int(i) for i in np.argsort(-second[a.question], kind="stable")[:n]]

    def second_hybrid(a: Asked) -> list[int]:
        return [i for i, _ in reciprocal_rank_fusion([a.lexical[:40], second_dense(a)], k=60)]

    def two_cosines(weight: float, terms: float, minilm: float = 1.0) -> Ranker:
        def rank(a: Asked) -> list[int]:
            pool = hybrid(a)[:POOL]
            s = second[a.question]
            score = [minilm * a.cosine[i] + weight * s[i] + terms * a.coverage[i] for i in pool]
            return [pool[j] for j in np.argsort(-np.array(score), kind="stable")]

        return rank

    out: dict[str, Ranker] = {
        "bm25": lambda a: a.lexical[:40],
        "dense MiniLM": dense,
        "dense MPNet": second_dense,
        "hybrid MiniLM (RRF)": hybrid,
        "hybrid MPNet (RRF)": second_hybrid,
        "shipped rerank": reranked(POOL, 0.3),
        f"chosen: cos + {CHOSEN[0]} x MPNet cos + {CHOSEN[1]} x terms": two_cosines(*CHOSEN),
    }
    for w, t in itertools.product((0.5, 1.0, 2.0), (0.0, 0.1, 0.2, 0.3)):
        out[f"cos + {w} x MPNet cos + {t} x terms"] = two_cosines(w, t)
    for t in (0.1, 0.2, 0.3):
        out[f"MPNet cos + {t} x terms (no MiniLM cos)"] = two_cosines(1.0, t, 0.0)
    return out


def best_score(rank: Ranker, second: dict[str, np.ndarray]) -> Any:
    """The top candidate's chosen score, as an abstention signal."""
    w, t = CHOSEN

    def value(a: Asked) -> float:
        i = rank(a)[0]
        return float(a.cosine[i] + w * second[a.question][i] + t * a.coverage[i])

    return value


def query_latency(enc: MPNetEncoder, packed: list[Packed]) -> dict[str, float]:
    """MPNet and MiniLM (llama.cpp) time to embed one question, one at a time."""
    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.llama import LlamaEmbedder

    questions = [a.question for p in packed for a in p.asked][:60]
    minilm = LlamaEmbedder(cached_gguf())
    timings: dict[str, list[float]] = {"mpnet": [], "minilm": []}
    for q in questions:
        t = time.perf_counter()
        enc.embed([q])
        timings["mpnet"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        minilm.embed([q])
        timings["minilm"].append((time.perf_counter() - t) * 1000)
    minilm.close()
    out: dict[str, float] = {"questions": len(questions)}
    for name, ms in timings.items():
        ms.sort()
        out[f"{name}_p50_ms"] = round(statistics.median(ms), 1)
        out[f"{name}_p95_ms"] = round(ms[int(0.95 * (len(ms) - 1))], 1)
    out["p50_ratio_mpnet_over_minilm"] = round(out["mpnet_p50_ms"] / out["minilm_p50_ms"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.realdocs.second_stage", description=__doc__
    )
    judge = parser.add_mutually_exclusive_group()
    judge.add_argument("--heldout", action="store_true", help="the held-out judges (once)")
    judge.add_argument("--pack4", action="store_true", help="the fresh judge, pack 4 (once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from converters.minilm_gguf import cached_gguf
    from converters.sources import cache_root
    from edge_agent.rag.llama import LlamaEmbedder

    judges: list[tuple[Pack, str]] = [(PACK1, "tune"), (PACK3, "tune")]
    if args.heldout:
        judges = [(PACK1, "heldout"), (PACK2, "heldout")]
    elif args.pack4:
        judges = [(PACK4, "heldout")]
    enc = MPNetEncoder(model_dir(), threads=args.threads)
    identity = LlamaEmbedder(cached_gguf())
    keys = {p.name: index_key(identity.identity.sha256, p) for p, _ in judges}
    identity.close()
    packed: list[Packed] = []
    second: dict[str, np.ndarray] = {}
    for pack, split in judges:
        p = load(pack, split)
        cache = cache_root() / "rag-eval" / f"{pack.name}-{keys[pack.name]}-mpnet.npy"
        print(f"{p.name}: {len(p.texts)} chunks, {len(p.asked)} questions", flush=True)
        cosines = second_cosines(p, enc, cache)
        if repeated := cosines.keys() & second.keys():  # the rankers look questions up by text
            raise SystemExit(f"a question is asked in two packs: {sorted(repeated)[0]!r}")
        second.update(cosines)
        packed.append(p)
    ranks = rankers(second)
    if args.heldout or args.pack4:  # the look is at the rows named before it, not at a grid
        ranks = {k: v for k, v in ranks.items() if not k.startswith(("cos +", "MPNet cos"))}
    report: dict[str, Any] = {"judges": [p.name for p in packed], "chosen": CHOSEN, "rows": {}}
    for name, rank in ranks.items():
        row = {"pooled": scores_of([(a, rank) for p in packed for a in p.asked])}
        for p in packed:
            row[p.name] = scores_of([(a, rank) for a in p.asked])
        report["rows"][name] = row
        print(
            f"{name:46} {json.dumps(row['pooled'])}  "
            + "  ".join(f"{p.name}: {row[p.name]['recall@5']}" for p in packed)
        )
    asked = [a for p in packed for a in p.asked]
    shipped = reranked(POOL, 0.3)
    chosen_name = next(k for k in ranks if k.startswith("chosen"))
    signals = {
        "shipped: top cosine + 0.3 x terms": lambda a: float(
            a.cosine[shipped(a)[0]] + 0.3 * a.coverage[shipped(a)[0]]
        ),
        "chosen: top score": best_score(ranks[chosen_name], second),
        "MPNet: top cosine": lambda a: float(second[a.question].max()),
    }
    report["abstention_front"] = {
        name: {
            str(k): v for k, v in front([(bool(a.gold), fn(a)) for a in asked]).items() if k <= 20
        }
        for name, fn in signals.items()
    }
    report["counts"] = {
        "answerable": sum(bool(a.gold) for a in asked),
        "unanswerable": sum(not a.gold for a in asked),
    }
    for name, f in report["abstention_front"].items():
        print(f"abstention front, {name} (answerable abstained: unanswerable caught): {f}")
    report["query_embedding"] = query_latency(enc, packed)
    print(json.dumps(report["query_embedding"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
