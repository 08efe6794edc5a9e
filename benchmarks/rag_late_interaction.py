"""What the ``late`` rerank mode costs: one extractive ``RagEngine.answer`` on the
real-document index (``evals/realdocs``), shipped ``rerank`` beside ``late``, same run.

Every question of the pack is answered by both modes in turn (interleaved, so load on the
machine hits both alike), twice:

- ``cold``: a fresh engine per answer, so the late mode embeds its 20 candidates' tokens
  (llama.cpp without pooling, one text per call) and the question's tokens;
- ``warm``: one engine per mode for the whole pass, after a first pass over the same
  questions, so candidates' token vectors come from the engine's LRU cache and only the
  question is embedded (twice in the late mode: pooled and per token).

Writes ``benchmarks/results/rag_late_interaction.json`` (p50/p95 in ms, late / rerank ratios).

    .venv/bin/python benchmarks/rag_late_interaction.py [--index FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.rag import RagEngine, RagIndex, RetrievalSettings
from edge_agent.rag.engine import RetrievalMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "rag_late_interaction.json"
MODES: tuple[RetrievalMode, ...] = ("rerank", "late")


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=Path, help="an index of evals/realdocs/docs")
    args = parser.parse_args(argv)
    from converters.minilm_gguf import cached_gguf
    from converters.sources import cache_root
    from edge_agent.rag.llama import LlamaEmbedder
    from evals.realdocs.harness import QUESTIONS, cached_index

    embedder = LlamaEmbedder(cached_gguf())
    path = args.index or cached_index(cache_root() / "rag-eval", embedder)
    questions = [q["question"] for q in json.loads(QUESTIONS.read_text())["questions"]]
    ms: dict[str, dict[str, list[float]]] = {p: {m: [] for m in MODES} for p in ("cold", "warm")}
    load = [os.getloadavg()[0]]
    with RagIndex.open(path, embedder.identity, readonly=True) as index:
        engines = {m: RagEngine(index, embedder, settings=RetrievalSettings(mode=m)) for m in MODES}
        for n in range(2):  # the first pass fills the warm engines' caches
            for q in questions:
                for mode in MODES:
                    engine = engines[mode]
                    if n == 0:
                        cold = RagEngine(index, embedder, settings=engine.settings)
                        started = time.perf_counter()
                        cold.answer(q, generate=False)
                        ms["cold"][mode].append((time.perf_counter() - started) * 1000)
                        engine.answer(q, generate=False)
                    else:
                        started = time.perf_counter()
                        engine.answer(q, generate=False)
                        ms["warm"][mode].append((time.perf_counter() - started) * 1000)
    load.append(os.getloadavg()[0])
    report: dict[str, Any] = {
        "benchmark": "rag_late_interaction",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": load},
        "index": path.name,
        "questions": len(questions),
    }
    for phase, per in ms.items():
        report[phase] = {m: _summary(v) for m, v in per.items()}
        report[phase]["late_over_rerank_p50"] = round(
            report[phase]["late"]["p50_ms"] / report[phase]["rerank"]["p50_ms"], 1
        )
        report[phase]["late_over_rerank_p95"] = round(
            report[phase]["late"]["p95_ms"] / report[phase]["rerank"]["p95_ms"], 1
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
