"""Off-topic questions: one pack's index asked another pack's questions.

    python -m evals.realdocs.foreign --index 4 --questions 2 [--out FILE]

The near-topic unanswerable questions of each pack are the hard case of abstention; this
measures the common one, a user asking about a tool the index does not hold. Every
question of the ``--questions`` pack (answerable there or not, all written in a user's
words by someone else) goes to the shipped engine over the ``--index`` pack's documents,
``generate=False`` and k=5, as ``/v1/rag/query`` would answer it. The documents of two
packs can overlap in topic (git-stash and git-worktree, say), so the questions answered
rather than refused are listed with their top source, to be read by eye before a count
of refusals is quoted. Nothing here is tuned: the engine runs with the shipped settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from evals.realdocs.harness import PACKS, cached_index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.foreign", description=__doc__)
    parser.add_argument("--index", choices=sorted(PACKS), required=True, help="whose documents")
    parser.add_argument("--questions", choices=sorted(PACKS), required=True, help="whose questions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.index == args.questions:
        parser.error("--index and --questions name the same pack: its own eval covers that")
    from converters.minilm_gguf import cached_gguf
    from converters.sources import cache_root
    from edge_agent.rag import RagIndex
    from edge_agent.rag.engine import RagEngine
    from edge_agent.rag.llama import LlamaEmbedder

    indexed, asking = PACKS[args.index], PACKS[args.questions]
    questions = json.loads(asking.questions.read_text())["questions"]
    embedder = LlamaEmbedder(cached_gguf())
    path = cached_index(cache_root() / "rag-eval", embedder, indexed)
    rows: list[dict[str, Any]] = []
    with RagIndex.open(path, embedder.identity) as index:
        engine = RagEngine(index, embedder)
        for q in questions:
            answer = engine.answer(q["question"], k=5, generate=False)
            top = answer.sources[0] if answer.sources else None
            rows.append(
                {
                    "id": q["id"],
                    "question": q["question"],
                    "abstained": answer.abstained,
                    "reason": answer.reason,
                    "top_document": top.document if top else None,
                    "top_similarity": round(top.similarity, 3) if top else None,
                    "answer": "" if answer.abstained else answer.answer[:200],
                }
            )
    embedder.close()
    refused = sum(r["abstained"] for r in rows)
    report = {
        "index": indexed.name,
        "questions": asking.name,
        "asked": len(rows),
        "abstained": refused,
        "rows": rows,
    }
    print(f"{indexed.name} asked {asking.name}'s {len(rows)} questions: {refused} abstained")
    for r in rows:
        if not r["abstained"]:
            print(f"  answered {r['id']} <- {r['top_document']} ({r['top_similarity']})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
