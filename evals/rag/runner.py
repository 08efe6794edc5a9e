"""Run the RAG eval pack and report retrieval, citation and abstention quality as JSON.

    python -m evals.rag [--out FILE] [--generate] [--check-baseline]

Every metric is reported per split: "tune" (the questions the abstention rule was tuned
on) and "heldout" (questions written before tuning and never used for it).
Retrieval: recall@1/5/10, nDCG@10 and MRR over gold passages (a retrieved chunk counts
for a gold passage when it covers at least half of it). Answers: citation support (a
cited quote contains the expected answer) and abstention precision/recall (abstaining is
the positive class; unanswerable questions should be abstained on).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.rag import RagEngine, RagIndex
from edge_agent.rag.engine import ChatModel, EmbeddingModel

PACK = Path(__file__).resolve().parent
DOCS = PACK / "docs"
QUESTIONS = PACK / "questions.json"
BASELINE = PACK / "baseline.json"
RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "ndcg@10", "mrr")
TOLERANCE = 0.02


@dataclass(frozen=True)
class GoldSpan:
    document: str
    start: int
    end: int


def occurrences(quote: str, text: str) -> list[tuple[int, int]]:
    """Every span of ``quote`` in ``text``, ignoring differences in whitespace."""
    pattern = r"\s+".join(re.escape(w) for w in quote.split())
    spans = [m.span() for m in re.finditer(pattern, text)]
    if not spans:
        raise ValueError(f"gold quote not found: {quote!r}")
    return spans


def locate(quote: str, text: str) -> tuple[int, int]:
    """Span of the first occurrence of ``quote`` in ``text``, ignoring whitespace."""
    return occurrences(quote, text)[0]


def _covers(chunk: tuple[str, int, int], gold: GoldSpan) -> bool:
    doc, start, end = chunk
    overlap = min(end, gold.end) - max(start, gold.start)
    return doc == gold.document and overlap >= 0.5 * (gold.end - gold.start)


def retrieval_scores(
    ranked: list[tuple[str, int, int]], gold: list[GoldSpan], k: int = 10
) -> dict[str, float]:
    """Recall@1/5/10, nDCG@10 and reciprocal rank of one question's ranked chunks."""
    first_rank: dict[int, int] = {}
    for rank, chunk in enumerate(ranked[:k], start=1):
        for g, span in enumerate(gold):
            if g not in first_rank and _covers(chunk, span):
                first_rank[g] = rank
    dcg = sum(1 / math.log2(r + 1) for r in first_rank.values())
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(gold), k)))
    hits = [r for r in first_rank.values()]
    return {
        "recall@1": sum(r <= 1 for r in hits) / len(gold),
        "recall@5": sum(r <= 5 for r in hits) / len(gold),
        "recall@10": sum(r <= 10 for r in hits) / len(gold),
        "ndcg@10": dcg / ideal,
        "mrr": 1 / min(hits) if hits else 0.0,
    }


def squash(text: str) -> str:
    return " ".join(text.casefold().split())


def build_index(path: Path, embedder: EmbeddingModel) -> RagEngine:
    index = RagIndex.create(path, embedder.identity)
    engine = RagEngine(index, embedder)
    files = sorted(p for p in DOCS.iterdir() if p.is_file())
    for result in engine.ingest_paths(files, root=DOCS):
        if isinstance(result, Exception):
            raise result
    return engine


SPLITS = ("tune", "heldout")


def split_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    abstained = [r for r in rows if r["abstained"]]
    metrics = {
        name: round(sum(r[name] for r in answerable) / len(answerable), 4)
        for name in RETRIEVAL_METRICS
    }
    metrics["citation_support"] = round(
        sum(r["citation_supported"] for r in answerable) / len(answerable), 4
    )
    right = sum(not r["answerable"] for r in abstained)
    metrics["abstention_precision"] = round(right / len(abstained), 4) if abstained else 1.0
    metrics["abstention_recall"] = round(right / len(unanswerable), 4)
    return metrics


def evaluate(engine: RagEngine, *, generate: bool = False) -> dict[str, Any]:
    """Every metric of the pack, per split, for an engine whose index holds ``DOCS``.

    ``splits`` holds the metrics of the tuning questions and of the held-out ones
    (written before the abstention rule was tuned); ``metrics`` is the same figures
    flattened to ``"split/metric"`` keys, which the baseline gate compares.
    """
    pack = json.loads(QUESTIONS.read_text())
    per_question = []
    started = time.perf_counter()
    for q in pack["questions"]:
        gold = []
        for g in q["gold"]:
            text = engine.index.document_text(g["document"])
            if text is None:
                raise ValueError(f"{q['id']}: gold document {g['document']} is not indexed")
            gold.append(GoldSpan(g["document"], *locate(g["quote"], text)))
        split = q.get("split", "tune")
        if split not in SPLITS:
            raise ValueError(f"{q['id']}: unknown split {split!r} (expected one of {SPLITS})")
        row: dict[str, Any] = {"id": q["id"], "split": split, "answerable": bool(gold)}
        if gold:
            sources = engine.retrieve(q["question"], k=10)
            row.update(retrieval_scores([(s.document, s.start, s.end) for s in sources], gold))
        result = engine.answer(q["question"], k=5, generate=generate)
        row.update(abstained=result.abstained, reason=result.reason)
        if gold:
            row["citation_supported"] = any(
                squash(q["answer"]) in squash(c.quote) for c in result.citations
            )
        per_question.append(row)
    splits = {
        name: split_metrics([r for r in per_question if r["split"] == name]) for name in SPLITS
    }
    return {
        "pack": {
            "documents": len(list(DOCS.iterdir())),
            **{
                name: {
                    "answerable": sum(r["answerable"] for r in per_question if r["split"] == name),
                    "unanswerable": sum(
                        not r["answerable"] for r in per_question if r["split"] == name
                    ),
                }
                for name in SPLITS
            },
        },
        "embedding_model": engine.index.identity.name,
        "embedding_sha256": engine.index.identity.sha256,
        "answers": "generated" if generate and engine.chat else "extractive",
        "splits": splits,
        "metrics": {f"{s}/{k}": v for s, m in splits.items() for k, v in m.items()},
        "seconds": round(time.perf_counter() - started, 2),
        "questions": per_question,
    }


def regressions(metrics: dict[str, float], baseline: dict[str, float]) -> list[str]:
    """Metrics that fell more than the tolerance below the recorded baseline."""
    return [
        f"{name}: {metrics[name]:.3f} < baseline {baseline[name]:.3f}"
        for name in baseline
        if metrics.get(name, 0.0) < baseline[name] - TOLERANCE
    ]


def _default_models(generate: bool) -> tuple[EmbeddingModel, ChatModel | None]:
    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.llama import LlamaChat, LlamaEmbedder

    embedder = LlamaEmbedder(cached_gguf())
    chat = None
    if generate:
        from converters.sources import smollm2_gguf

        try:
            chat = LlamaChat(smollm2_gguf())
        except FileNotFoundError as e:
            raise SystemExit(f"--generate {e}") from e
    return embedder, chat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.rag", description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--generate", action="store_true", help="answer with SmolLM2")
    parser.add_argument("--check-baseline", action="store_true", help="exit 1 on regression")
    parser.add_argument("--write-baseline", action="store_true", help="record a new baseline")
    args = parser.parse_args(argv)
    embedder, chat = _default_models(args.generate)
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_index(Path(tmp) / "eval.sqlite", embedder)
        engine.chat = chat
        report = evaluate(engine, generate=args.generate)
        engine.index.close()
    text = json.dumps(report, indent=2)
    summary = {k: v for k, v in report.items() if k not in ("questions", "metrics")}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.write_baseline:
        BASELINE.write_text(
            json.dumps({"answers": report["answers"], "metrics": report["metrics"]}, indent=2)
            + "\n"
        )
    if args.check_baseline:
        failed = regressions(report["metrics"], json.loads(BASELINE.read_text())["metrics"])
        for line in failed:
            print("REGRESSION", line, file=sys.stderr)
        return 1 if failed else 0
    return 0
