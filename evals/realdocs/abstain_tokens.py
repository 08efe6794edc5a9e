"""The abstention lead of docs/rag.md ("A lead, not shipped"), on pack 1's tuning split
only: for each question, the worst-matched content word (its best centered token cosine,
``rerank.centered_tokens``, with any token of the shipped top 3 sources), and the front of
a threshold on it (answerable abstained -> unanswerable caught).

    python -m evals.realdocs.abstain_tokens --index FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge_agent.rag import RagEngine, RagIndex
from edge_agent.rag.chunking import with_context
from edge_agent.rag.rerank import centered_tokens
from edge_agent.rag.text import question_terms
from evals.realdocs.harness import QUESTIONS


def front(rows: list[tuple[bool, float]]) -> dict[int, int]:
    """For each count of answerable questions below a threshold, the most unanswerable
    ones below the same threshold."""
    best: dict[int, int] = {}
    for t in [*sorted({v for _, v in rows}), float("inf")]:  # caught only grows with t
        best[sum(a and v < t for a, v in rows)] = sum(not a and v < t for a, v in rows)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.abstain_tokens")
    parser.add_argument("--index", type=Path, required=True, help="an index of pack 1")
    args = parser.parse_args(argv)
    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.llama import LlamaEmbedder

    embedder = LlamaEmbedder(cached_gguf())
    rows: list[tuple[bool, float]] = []
    with RagIndex.open(args.index, embedder.identity) as index:
        engine = RagEngine(index, embedder)
        for q in json.loads(QUESTIONS.read_text())["questions"]:
            if q["split"] != "tune":
                continue
            ids = [s.chunk_id for s in engine.retrieve(q["question"], k=3)]
            stored = index.chunks(ids)
            sources = [with_context(stored[i].as_chunk(), stored[i].title) for i in ids]
            tokens = centered_tokens(
                embedder.embed_tokens([q["question"]])[0],
                question_terms(q["question"])[:32],
                [embedder.embed_tokens([text])[0] for text in sources],
            )
            if tokens is None:
                continue
            best = (tokens.question @ np.concatenate(tokens.chunks).T).max(axis=1)
            per_word: dict[str, float] = {}
            for word, value in zip(tokens.words, best, strict=True):
                per_word[word] = max(per_word.get(word, -1.0), float(value))
            rows.append((bool(q["gold"]), min(per_word.values())))
    print(f"{sum(a for a, _ in rows)} answerable, {sum(not a for a, _ in rows)} unanswerable")
    print("answerable abstained -> unanswerable caught:", front(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
