"""The acceptance suite against the project's own benchmarks, in the same run.

One real agent (the local API over SmolLM2-135M, MiniLM-L6, a RAG index and the FP32
text-orientation classifier, on loopback) is measured three ways:

- **overhead**: the suite's chat TTFT and vision latency against the same requests timed
  the way ``benchmarks/serving_llm.py`` (the official ``openai`` client, its prompt and
  ``max_tokens``) and ``benchmarks/vision.py`` (``http.client`` keep-alive, raw PNG body,
  its ``http_raw_body`` mode) time them, query by query interleaved (suite, peer, peer,
  suite, ...) so machine load hits both alike; p50/p95 of each and their ratios;
- **full run**: ``device_tests``' runner with the ``x86-ci`` profile, as
  ``python -m device_tests run --profile x86-ci`` runs it: every figure, its interval,
  and the wall time (these numbers are what the x86-ci thresholds were derived from);
- **bounded on-device run**: the health window's suite (``ON_DEVICE_MEASUREMENT``) over the
  same release in process, through the agent's own observer: its wall time.

Usage: ``.venv/bin/python benchmarks/device_suite.py [--queries 60] [--out PATH]``
(``make setup`` provides the models).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_llm import PROMPT, agent_side
from device_tests.agent_client import HttpAgent
from device_tests.profile import load_profile
from device_tests.runner import load_average, run_suite
from device_tests.workload import load_workload
from edge_agent.updates.acceptance import QueryRules, estimate, measure
from edge_agent.updates.health import ON_DEVICE_MEASUREMENT

RESULTS = ROOT / "benchmarks" / "results" / "device_suite.json"
MAX_TOKENS = 16
VISION = "text-orientation"


def _stats(samples: list[float]) -> dict[str, Any]:
    rules = QueryRules()
    p50, p95 = estimate(samples, 50, rules), estimate(samples, 95, rules)
    return {
        "n": len(samples),
        "p50_ms": round(p50.value, 3),
        "p95_ms": round(p95.value, 3),
        "p95_interval_ms": [round(p95.low, 3), round(p95.high, 3)],
    }


def _ratio(suite: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    return {
        "p50": round(suite["p50_ms"] / peer["p50_ms"], 4),
        "p95": round(suite["p95_ms"] / peer["p95_ms"], 4),
    }


def _interleaved(
    suite: Callable[[], float], peer: Callable[[], float], rounds: int
) -> tuple[list[float], list[float]]:
    """ABBA order: suite, peer, peer, suite, ... (after one warm-up of each)."""
    suite(), peer()
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        first, second = (suite, peer) if i % 2 == 0 else (peer, suite)
        for run in (first, second):
            (a if run is suite else b).append(run())
    return a, b


def overhead(url: str, token: str, rounds: int) -> dict[str, Any]:
    workload = load_workload()
    agent = HttpAgent(url, token, workload)
    openai_chat = agent_side(url, MAX_TOKENS)  # serving_llm's measurement, its token baked in
    image = workload.images_for(VISION)[0]
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)

    def suite_chat() -> float:
        return agent.chat("smollm2", PROMPT, MAX_TOKENS)["ttft_ms"]

    def peer_chat() -> float:
        return openai_chat().ttft_ms

    def suite_vision() -> float:
        return agent.vision(VISION, image)["ms"]

    def peer_vision() -> float:  # benchmarks/vision.py, mode http_raw_body
        started = time.perf_counter()
        conn.request(
            "POST",
            f"/v1/vision/classify?model={VISION}&top_k=5",
            body=image,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"vision peer: HTTP {response.status}")
        return (time.perf_counter() - started) * 1e3

    try:
        chat_suite, chat_peer = _interleaved(suite_chat, peer_chat, rounds)
        vision_suite, vision_peer = _interleaved(suite_vision, peer_vision, rounds * 3)
    finally:
        agent.close()
        conn.close()
    out: dict[str, Any] = {}
    for name, suite, peer, peer_label in (
        ("chat_ttft", chat_suite, chat_peer, "benchmarks/serving_llm.py agent_side (openai)"),
        ("vision", vision_suite, vision_peer, "benchmarks/vision.py http_raw_body"),
    ):
        s, p = _stats(suite), _stats(peer)
        out[name] = {"suite": s, "peer": p, "peer_is": peer_label, "suite_vs_peer": _ratio(s, p)}
    return out


def full_run(url: str, token: str) -> dict[str, Any]:
    profile = load_profile("x86-ci")
    workload = load_workload()
    agent = HttpAgent(url, token, workload)
    started = time.perf_counter()
    try:
        result = run_suite(
            profile.thresholds,
            profile.measurement.rules(),
            agent,
            profile="x86-ci",
            device_class="x86-ci",
            workload_version=workload.version,
            target_label=f"agent {url}",
            clock=time.monotonic,
            now=lambda: datetime.now(UTC),
        )
    finally:
        agent.close()
    body = result.as_json()
    body["wall_s"] = round(time.perf_counter() - started, 2)
    return body


def bounded_run(serving: Any, release: Any) -> dict[str, Any]:
    """The health window's suite, in process, with x86-ci's thresholds."""
    profile = load_profile("x86-ci")
    started = time.perf_counter()
    figures = measure(
        profile.thresholds,
        ON_DEVICE_MEASUREMENT.rules(),
        serving.observer(release),
        time.monotonic,
    )
    return {
        "rules": ON_DEVICE_MEASUREMENT.model_dump(),
        "wall_s": round(time.perf_counter() - started, 2),
        "figures": [f.as_json() for f in figures],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=60, help="chat rounds (vision: 3x)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from benchmarks.serving_llm import TOKEN
    from tests.device_tests.agent import serving_release, suite_release

    tmp = Path(tempfile.mkdtemp(prefix="outpost-device-suite-"))
    release = suite_release(tmp, "fp32")
    load_before = load_average()
    with serving_release(release, tmp / "state", TOKEN, n_ctx=2048) as (url, serving):
        results = {
            "overhead": overhead(url, TOKEN, args.queries),
            "full_run_x86_ci": full_run(url, TOKEN),
            "bounded_on_device_run": bounded_run(serving, release),
        }
        n_threads = serving.settings.n_threads
    body = {
        "benchmark": "device_suite",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/device_suite.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": list(load_before),
            "loadavg_at_end": list(load_average()),
            "n_threads": n_threads,
        },
        "release": [a.name for a in release.artifacts],
        **results,
    }
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    ov = results["overhead"]
    print(
        f"chat TTFT p95 suite/peer {ov['chat_ttft']['suite_vs_peer']['p95']},"
        f" vision p95 suite/peer {ov['vision']['suite_vs_peer']['p95']};"
        f" full x86-ci run {results['full_run_x86_ci']['wall_s']} s, bounded on-device run"
        f" {results['bounded_on_device_run']['wall_s']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
