"""The abstention lead of docs/rag.md ("A lead, not shipped"), on the tuning packs only
(pack 1's tuning split, pack 3): for each question, the worst-matched content word (its
best centered token cosine, ``rerank.centered_tokens``, with any token of the shipped top 3
sources), the features the shipped rules read, and the fronts (answerable abstained ->
unanswerable caught) of the worst-matched word alone, of the shipped rules with other
thresholds, and of the shipped rules with rule 3 (similarity and term coverage) replaced by
a threshold on the worst-matched word.

    python -m evals.realdocs.abstain_tokens [--pack 1] [--pack 3] [--index FILE] [--out F]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.rag import RagEngine, RagIndex
from edge_agent.rag.chunking import with_context
from edge_agent.rag.grounding import EvidencePolicy
from edge_agent.rag.rerank import centered_tokens
from edge_agent.rag.text import content_terms, question_terms, stem
from evals.realdocs.harness import PACK1, PACK3, Pack, cached_index

if TYPE_CHECKING:
    from edge_agent.rag.llama import LlamaEmbedder


@dataclasses.dataclass(frozen=True)
class Features:
    """What an abstention rule can read about one question's answer."""

    id: str
    answerable: bool
    shipped: bool  # the shipped engine abstained
    shape: bool  # abstained with every evidence rule off (citation and answer-shape rules)
    similarity: float  # the best source's cosine
    coverage: float  # share of the question's terms in the best three sources
    unknown: float  # share of the question's terms that occur nowhere in the index
    worst_word: float  # the worst-matched content word's best centered token cosine


def front(rows: list[tuple[bool, float]]) -> dict[int, int]:
    """For each count of answerable questions below a threshold, the most unanswerable
    ones below the same threshold."""
    best: dict[int, int] = {}
    for t in [*sorted({v for _, v in rows}), float("inf")]:  # caught only grows with t
        best[sum(a and v < t for a, v in rows)] = sum(not a and v < t for a, v in rows)
    return best


def rule_front(
    features: list[Features], decisions: Iterable[tuple[Any, list[bool]]]
) -> dict[int, tuple[int, Any]]:
    """For each count of answerable questions abstained, the most unanswerable ones caught
    by any of the ``decisions`` (a setting and one abstain/answer per question), with the
    setting that does it."""
    best: dict[int, tuple[int, Any]] = {}
    for setting, abstain in decisions:
        wrong = sum(a and f.answerable for a, f in zip(abstain, features, strict=True))
        caught = sum(a and not f.answerable for a, f in zip(abstain, features, strict=True))
        if caught > best.get(wrong, (-1, None))[0]:
            best[wrong] = (caught, setting)
    out: dict[int, tuple[int, Any]] = {}
    most = -1
    for wrong in sorted(best):  # keep only points that catch more than every cheaper one
        if best[wrong][0] > most:
            out[wrong] = best[wrong]
            most = best[wrong][0]
    return out


def word_rule(
    features: list[Features], policy: EvidencePolicy | None = None
) -> Iterable[tuple[Any, list[bool]]]:
    """Shipped rules 1, 2, 4 and 5 as they are, rule 3 replaced by: abstain when the best
    similarity is below ``min`` or the worst-matched word's cosine is below ``word``."""
    max_unknown = (policy or EvidencePolicy()).max_unknown_share
    sims = np.arange(0.20, 0.46, 0.025)
    words = sorted({round(f.worst_word, 3) for f in features} | {-1.0, 2.0})
    for min_sim, word in itertools.product(sims, words):
        yield (
            {"min_similarity": round(float(min_sim), 3), "min_worst_word": word},
            [
                f.shape
                or (f.unknown >= max_unknown and f.similarity < 0.75)
                or f.similarity < min_sim
                or f.worst_word < word
                for f in features
            ],
        )


def threshold_rules(
    features: list[Features], policy: EvidencePolicy | None = None
) -> Iterable[tuple[Any, list[bool]]]:
    """The shipped rules with other thresholds (no token vectors): rule 2's unknown share
    and paraphrase similarity, rule 3's term coverage; rules 1, 4 and 5 as they ship."""
    base = policy or EvidencePolicy()
    for unknown, paraphrase, coverage in itertools.product(
        (0.2, 0.25, 0.3, 0.34, 0.4, 0.5), (0.6, 0.65, 0.7, 0.75), (0.0, 0.1, 0.2, 0.3, 0.4)
    ):
        yield (
            {
                "max_unknown_share": unknown,
                "paraphrase_similarity": paraphrase,
                "min_term_coverage": coverage,
            },
            [
                f.shape
                or (f.unknown >= unknown and f.similarity < paraphrase)
                or (
                    f.similarity < base.confident_similarity
                    and (f.similarity < base.min_similarity or f.coverage < coverage)
                )
                for f in features
            ],
        )


def features_of(index: RagIndex, embedder: LlamaEmbedder, pack: Pack) -> list[Features]:
    """Every tuning question of the pack, asked once."""
    engine = RagEngine(index, embedder)
    open_policy = dataclasses.replace(
        EvidencePolicy(), min_similarity=-1.0, confident_similarity=-1.0, max_unknown_share=9.0
    )
    permissive = RagEngine(index, embedder, evidence=open_policy)
    out = []
    for q in json.loads(pack.questions.read_text())["questions"]:
        if q["split"] != "tune":
            continue
        sources = engine.retrieve(q["question"], k=5)
        terms = question_terms(q["question"])
        top = sorted(sources, key=lambda s: -s.similarity)[:3]
        words = {stem(w) for s in top for w in content_terms(s.text)}
        found = {t for t in terms if stem(t) in words}
        stored = index.chunks([s.chunk_id for s in top])
        texts = [with_context(stored[s.chunk_id].as_chunk(), stored[s.chunk_id].title) for s in top]
        tokens = centered_tokens(
            embedder.embed_tokens([q["question"]])[0],
            terms[:32],
            [embedder.embed_tokens([text])[0] for text in texts],
        )
        worst = 1.0
        if tokens is not None:
            best = (tokens.question @ np.concatenate(tokens.chunks).T).max(axis=1)
            per_word: dict[str, float] = {}
            for word, value in zip(tokens.words, best, strict=True):
                per_word[word] = max(per_word.get(word, -1.0), float(value))
            worst = min(per_word.values())
        out.append(
            Features(
                id=q["id"],
                answerable=bool(q["gold"]),
                shipped=engine.answer(q["question"], generate=False).abstained,
                shape=permissive.answer(q["question"], generate=False).abstained,
                similarity=round(max((s.similarity for s in sources), default=0.0), 4),
                coverage=round(len(found) / len(terms), 4) if terms else 1.0,
                unknown=round(len(index.unknown_terms(terms)) / len(terms), 4) if terms else 0.0,
                worst_word=round(worst, 4),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.abstain_tokens")
    parser.add_argument(
        "--pack", action="append", choices=("1", "3"), help="a tuning pack (repeatable)"
    )
    parser.add_argument("--index", type=Path, help="an index of pack 1")
    parser.add_argument("--out", type=Path, help="also write every question's features here")
    args = parser.parse_args(argv)
    from converters.minilm_gguf import cached_gguf
    from converters.sources import cache_root
    from edge_agent.rag.llama import LlamaEmbedder

    embedder = LlamaEmbedder(cached_gguf())
    features: list[Features] = []
    for name in dict.fromkeys(args.pack or ["1"]):
        pack = {"1": PACK1, "3": PACK3}[name]
        path = (
            args.index
            if args.index and pack is PACK1
            else cached_index(cache_root() / "rag-eval", embedder, pack)
        )
        with RagIndex.open(path, embedder.identity) as index:
            features += features_of(index, embedder, pack)
    answerable = sum(f.answerable for f in features)
    print(f"{answerable} answerable, {len(features) - answerable} unanswerable (tuning)")
    shipped = sum(f.shipped and f.answerable for f in features)
    caught = sum(f.shipped and not f.answerable for f in features)
    print(f"shipped rules: {shipped} answerable abstained, {caught} unanswerable caught")
    print(
        "worst-matched word alone:",
        front([(f.answerable, f.worst_word) for f in features]),
    )
    print("shipped rules, other thresholds (unknown share, paraphrase, term coverage):")
    for wrong, (n, setting) in rule_front(features, threshold_rules(features)).items():
        print(f"  {wrong:3} -> {n:3}  {json.dumps(setting)}")
    print("shipped rules with rule 3 replaced (min similarity, worst-matched word):")
    for wrong, (n, setting) in rule_front(features, word_rule(features)).items():
        print(f"  {wrong:3} -> {n:3}  {json.dumps(setting)}")
    if args.out:
        args.out.write_text(json.dumps([dataclasses.asdict(f) for f in features], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
