"""What measuring costs the agent: serving with telemetry on vs off, in the same run.

One model registry (the real SmolLM2 GGUF, loaded once) behind two local APIs in this
process, each on its own loopback port:

- off: ``create_local_api`` as before telemetry (no middleware, no generation observer);
- on:  the same plus what the daemon adds (``TelemetryAgent``: the counting middleware,
       the generation observer, ``GET /metrics``).

Requests alternate (off, on, on, off, ...) so both see the same machine load:

- chat: non-streaming ``/v1/chat/completions``, temperature 0, fixed ``max_tokens``:
  tokens/s and request seconds (p50/p95) per side, and the on/off ratio;
- light: ``GET /v1/models`` (no model work): requests/s per side, where the middleware's
  cost is the largest share of a request it can be;
- per request: the middleware and observer alone around a no-op ASGI app (microseconds).

Writes ``benchmarks/results/telemetry_overhead.json``.

    .venv/bin/python benchmarks/telemetry_overhead.py [--runs 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from edge_agent.settings import AgentSettings
from edge_agent.telemetry.instrument import GenerationObserver, TelemetryMiddleware
from edge_agent.telemetry.metrics import AgentMetrics
from tests.agent_api.conftest import release
from tests.agent_telemetry.helpers import telemetry_app
from tests.live_server import LiveServer

RESULTS = ROOT / "benchmarks" / "results" / "telemetry_overhead.json"
TOKEN = "benchmark-token-0123456789"
MODEL = "smollm2"
PROMPT = "Write one sentence about a lighthouse."


def smollm2_path() -> Path:
    from converters.sources import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p95": percentile(values, 0.95),
        "mean": statistics.fmean(values),
    }


def alternate(
    runs: int, off: Callable[[], float], on: Callable[[], float]
) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(runs):
        order = (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off))
        for name, run in order:
            got[name].append(run())
    return got


def micro_overhead(iterations: int) -> dict[str, float]:
    """Microseconds the middleware adds around a no-op app, and the observer per
    generation (pieces of a 32-token answer)."""

    async def noop(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    wrapped = TelemetryMiddleware(noop, metrics=AgentMetrics())
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings"}

    async def send(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def loop(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(iterations):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / iterations * 1e6

    bare = asyncio.run(loop(noop))
    counted = asyncio.run(loop(wrapped))

    class Piece:
        def __init__(self, text: str, finish: str | None) -> None:
            self.text, self.finish_reason = text, finish
            self.prompt_tokens, self.completion_tokens = 12, 32

    pieces = [Piece("x", None) for _ in range(31)] + [Piece("", "stop")]
    observer = GenerationObserver(AgentMetrics())
    started = time.perf_counter()
    for _ in range(iterations // 10):
        for _ in observer.wrap(lambda _m: iter(pieces), chat=True)(None):
            pass
    observed = (time.perf_counter() - started) / (iterations // 10) * 1e6
    started = time.perf_counter()
    for _ in range(iterations // 10):
        for _ in iter(pieces):
            pass
    plain = (time.perf_counter() - started) / (iterations // 10) * 1e6
    return {
        "middleware_us_per_request": counted - bare,
        "observer_us_per_32_token_generation": observed - plain,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--light-runs", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    model = smollm2_path()
    state = Path(tempfile.mkdtemp(prefix="telemetry-bench-"))
    settings = AgentSettings(state_dir=state, n_threads=args.threads, n_ctx=512, max_queue=8)
    registry = ModelRegistry(settings)
    registry.activate(release("bench", {MODEL: ("llm", model)}))
    registry.warm()
    off_app = create_local_api(registry, settings, api_token=TOKEN)
    on_app, _ = telemetry_app(registry, settings, api_token=TOKEN, device_id="bench")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    with LiveServer(off_app) as off_server, LiveServer(on_app) as on_server:
        off_url, on_url = off_server.url, on_server.url
        clients = {
            "off": httpx.Client(base_url=off_url, headers=auth, timeout=300),
            "on": httpx.Client(base_url=on_url, headers=auth, timeout=300),
        }
        tokens: dict[str, list[float]] = {"off": [], "on": []}

        def chat(side: str) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                answer = clients[side].post("/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
                tokens[side].append(answer.json()["usage"]["completion_tokens"] / elapsed)
                return elapsed

            return run

        def light(side: str) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                clients[side].get("/v1/models").raise_for_status()
                return time.perf_counter() - started

            return run

        chat("off")()  # warm both paths once
        chat("on")()
        tokens = {"off": [], "on": []}
        chat_seconds = alternate(args.runs, chat("off"), chat("on"))
        light_seconds = alternate(args.light_runs, light("off"), light("on"))
        scrape = clients["on"].get("/metrics").text
        for client in clients.values():
            client.close()
    registry.close()

    chat_result = {
        side: {
            "request_seconds": _stats(chat_seconds[side]),
            "tokens_per_second": _stats(tokens[side]),
        }
        for side in ("off", "on")
    }
    light_result = {
        side: {
            "request_seconds": _stats(light_seconds[side]),
            "requests_per_second": 1.0 / statistics.fmean(light_seconds[side]),
        }
        for side in ("off", "on")
    }
    micro = micro_overhead(20_000)
    chat_p50 = chat_result["off"]["request_seconds"]["p50"]
    result = {
        "benchmark": "telemetry_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "model": MODEL,
        "runs": args.runs,
        "light_runs": args.light_runs,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "chat": chat_result,
        "light": light_result,
        "per_request": micro,
        "ratios": {
            "chat_tokens_per_second_on_over_off": chat_result["on"]["tokens_per_second"]["p50"]
            / chat_result["off"]["tokens_per_second"]["p50"],
            "chat_p50_seconds_on_over_off": chat_result["on"]["request_seconds"]["p50"] / chat_p50,
            "light_requests_per_second_on_over_off": light_result["on"]["requests_per_second"]
            / light_result["off"]["requests_per_second"],
            # the median is robust to the other tenants' bursts that dominate the mean here
            "light_p50_seconds_on_over_off": light_result["on"]["request_seconds"]["p50"]
            / light_result["off"]["request_seconds"]["p50"],
            "per_request_cost_share_of_chat_p50": (
                micro["middleware_us_per_request"] + micro["observer_us_per_32_token_generation"]
            )
            / 1e6
            / chat_p50,
        },
        "metrics_scrape_bytes": len(scrape),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    print(json.dumps(result["per_request"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
