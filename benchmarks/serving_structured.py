"""What grammar-constrained sampling costs: decode tok/s of structured output and logprobs
against plain text, on the same model, prompts and thread count, in one run.

Cases, all through the agent's llama.cpp backend in this process (no HTTP, so the
differences are the sampler's), interleaved run by run so that machine load falls on
every case alike:

- ``text``: a plain chat (llama-cpp-python's own chat completion path, as served);
- ``loop``: the same prompt through the agent's token loop with no grammar (the loop
  that structured output and logprobs run on: its own cost, separated from the grammar's);
- ``json_object``: the loop with the grammar of any JSON object;
- ``json_schema``: the loop with the grammar of a schema with nested objects, enums,
  an array and bounded strings;
- ``logprobs``: the loop, no grammar, with ``top_logprobs`` 5;
- ``engine_*``: plain text, the two grammars and logprobs on the batched engine that
  serves chat models (one slot), compared with its own plain text.

Prompts ask about chunks of the Python standard library's own docstrings (text nobody
here wrote). Each case reports first-token p50 and decode tok/s p50/p95 (tokens after
the first over the time after the first), and its tok/s ratio to ``text`` and ``loop``.
The report goes to ``benchmarks/results/serving_structured.json``; docs/local-api.md
quotes it.

    .venv/bin/python benchmarks/serving_structured.py [--runs 6] [--max-tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "serving_structured.json"

from edge_agent.release import InstalledArtifact
from edge_agent.runtime import ChatTurn, ModelOptions, Sampling, TextPiece
from edge_agent.runtime.grammar import SchemaLimits, json_object_grammar, json_schema_grammar
from edge_agent.runtime.llama import LlamaTextGenerator
from edge_agent.runtime.llama_batched import BatchedTextGenerator
from edge_agent.runtime.llama_structured import format_chat
from tests.requirements import smollm2_gguf_path

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "kind": {"enum": ["module", "function", "class", "other"]},
        "summary": {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "maxLength": 40},
                "keywords": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 16},
                    "maxItems": 4,
                },
            },
            "required": ["topic", "keywords"],
            "additionalProperties": False,
        },
        "useful": {"type": "boolean"},
    },
    "required": ["title", "kind", "summary", "useful"],
    "additionalProperties": False,
}


def prompts(n: int) -> list[str]:
    """Questions about chunks of stdlib docstrings."""
    import collections
    import email
    import json as json_module
    import logging
    import pathlib
    import statistics as statistics_module
    import textwrap

    docs = [
        inspect.getdoc(m) or ""
        for m in (collections, email, json_module, logging, pathlib, statistics_module, textwrap)
    ]
    chunks = [d[:400] for d in docs if d]
    return [f"Describe this documentation as JSON:\n\n{chunks[i % len(chunks)]}" for i in range(n)]


def timed(pieces: Iterator[TextPiece]) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds after it, tokens generated)."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    for piece in pieces:
        if first is None and (piece.text or piece.finish_reason):
            first = time.perf_counter()
        if piece.finish_reason is not None:
            tokens = piece.completion_tokens
    end = time.perf_counter()
    first = first or end
    return first - start, end - first, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    path = smollm2_gguf_path()
    artifact = InstalledArtifact(
        name="smollm2",
        kind="llm",
        format="gguf",
        sha256="0" * 64,
        length=path.stat().st_size,
        path=path,
    )
    options = ModelOptions(n_ctx=1024, n_threads=args.threads)
    model = LlamaTextGenerator.load(artifact, options)
    llama = model._llama
    limits = SchemaLimits()
    grammars = {
        "json_object": json_object_grammar(),
        "json_schema": json_schema_grammar(SCHEMA, limits),
    }

    def loop(sampling: Sampling, turns: list[ChatTurn]) -> Iterator[TextPiece]:
        prompt = format_chat(llama, turns, sampling, None, name="smollm2")
        return model.generate_from(
            prompt.tokens, sampling, prompt.stop, prompt.stopping_criteria, prompt.sampler
        )

    base = Sampling(max_tokens=args.max_tokens, temperature=0.0)
    cases: dict[str, Callable[[list[ChatTurn]], Iterator[TextPiece]]] = {
        "text": lambda t: model.chat(t, base),
        "loop": lambda t: loop(base, t),
        "json_object": lambda t: loop(
            Sampling(max_tokens=args.max_tokens, temperature=0.0, grammar=grammars["json_object"]),
            t,
        ),
        "json_schema": lambda t: loop(
            Sampling(max_tokens=args.max_tokens, temperature=0.0, grammar=grammars["json_schema"]),
            t,
        ),
        "logprobs": lambda t: loop(
            Sampling(max_tokens=args.max_tokens, temperature=0.0, logprobs=5), t
        ),
    }
    # The batched engine that serves chat models (n_parallel slots; one here): the same
    # requests through its plain path and its structured path (generate_from).
    engine = BatchedTextGenerator.load(
        artifact, ModelOptions(n_ctx=1024, n_threads=args.threads, n_parallel=1)
    )
    cases.update(
        {
            "engine_text": lambda t: engine.chat(t, base),
            "engine_json_object": lambda t: engine.chat(
                t,
                Sampling(
                    max_tokens=args.max_tokens, temperature=0.0, grammar=grammars["json_object"]
                ),
            ),
            "engine_json_schema": lambda t: engine.chat(
                t,
                Sampling(
                    max_tokens=args.max_tokens, temperature=0.0, grammar=grammars["json_schema"]
                ),
            ),
            "engine_logprobs": lambda t: engine.chat(
                t, Sampling(max_tokens=args.max_tokens, temperature=0.0, logprobs=5)
            ),
        }
    )
    measured: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
    for case in cases.values():  # warm-up: one run each, not counted
        timed(case([ChatTurn("user", "Hello")]))
    load_before = os.getloadavg()[0]
    for text in prompts(args.runs):
        turns = [ChatTurn("user", text)]
        for name, case in cases.items():
            llama.reset()  # type: ignore[no-untyped-call]  # every case reads the whole prompt
            measured[name].append(timed(case(turns)))
    load_after = os.getloadavg()[0]
    model.close()
    engine.close()

    def rate(runs: list[tuple[float, float, int]]) -> list[float]:
        return [(n - 1) / after for _, after, n in runs if n > 1 and after > 0]

    report: dict[str, Any] = {"cases": {}}
    for name, runs in measured.items():
        rates = sorted(rate(runs))
        report["cases"][name] = {
            "first_token_ms_p50": round(statistics.median(r[0] for r in runs) * 1000, 1),
            "decode_tok_s_p50": round(statistics.median(rates), 1) if rates else None,
            "decode_tok_s_p95_low": round(rates[max(0, int(len(rates) * 0.05) - 1)], 1)
            if rates
            else None,
            "tokens_p50": statistics.median(r[2] for r in runs),
        }
    text_rate = report["cases"]["text"]["decode_tok_s_p50"]
    loop_rate = report["cases"]["loop"]["decode_tok_s_p50"]
    engine_rate = report["cases"]["engine_text"]["decode_tok_s_p50"]
    for name, case in report["cases"].items():
        if not (case["decode_tok_s_p50"] and text_rate and loop_rate and engine_rate):
            continue
        if name.startswith("engine_"):
            case["vs_engine_text"] = round(case["decode_tok_s_p50"] / engine_rate, 3)
        else:
            case["vs_text"] = round(case["decode_tok_s_p50"] / text_rate, 3)
            case["vs_loop"] = round(case["decode_tok_s_p50"] / loop_rate, 3)
    report["setup"] = {
        "model": "SmolLM2-135M-Instruct Q4_1",
        "runs_per_case": args.runs,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "temperature": 0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/serving_structured.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
