"""Streaming chat through the agent's local API vs raw llama-cpp-python, side by side.

Same GGUF model, n_threads, prompt, max_tokens and temperature 0 on both sides:

- raw:   ``Llama.create_chat_completion(stream=True)`` in this process;
- agent: ``POST /v1/chat/completions`` with ``stream=True`` over loopback, served by
         uvicorn in a subprocess, read with the official ``openai`` client.

Runs alternate (raw, agent, agent, raw, ...) so both see the same machine load. Reports
time to first token and decode tokens/s (p50/p95) for each and their ratios, and writes
``benchmarks/results/serving_llm.json``.

    .venv/bin/python benchmarks/serving_llm.py [--runs 5] [--max-tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving_llm.json"
TOKEN = "benchmark-token-0123456789"
MODEL = "smollm2"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
N_CTX = 2048


def smollm2_path() -> Path:
    from converters.sources import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


@dataclass(frozen=True)
class Run:
    ttft_ms: float
    tokens: int
    decode_tok_s: float
    total_s: float


def measure(chunks: Iterable[str], started: float) -> Run:
    """Time a stream of text pieces: first non-empty piece, then the rest."""
    first = last = 0.0
    tokens = 0
    for text in chunks:
        if not text:
            continue
        now = time.perf_counter()
        if tokens == 0:
            first = now
        last = now
        tokens += 1
    if tokens < 2:
        raise RuntimeError("the model produced fewer than 2 tokens; raise --max-tokens")
    return Run(
        ttft_ms=(first - started) * 1000,
        tokens=tokens,
        decode_tok_s=(tokens - 1) / (last - first),
        total_s=last - started,
    )


# --- the two sides ------------------------------------------------------------------------


def raw_side(model: Path, threads: int, max_tokens: int) -> Callable[[], Run]:
    from llama_cpp import Llama

    llama = Llama(
        str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    messages: Any = [{"role": "user", "content": PROMPT}]

    def run() -> Run:
        started = time.perf_counter()
        stream: Any = llama.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=0, stream=True
        )
        return measure((c["choices"][0]["delta"].get("content") or "" for c in stream), started)

    return run


def agent_side(url: str, max_tokens: int) -> Callable[[], Run]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=120)

    def pieces(stream: Any) -> Iterator[str]:
        for chunk in stream:
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""

    def run() -> Run:
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        return measure(pieces(stream), started)

    return run


def serve(model: Path, threads: int) -> None:
    """Subprocess mode: serve the agent's local API and print the port."""
    import uvicorn

    from edge_agent.api import create_local_api
    from edge_agent.release import InstalledArtifact, InstalledRelease
    from edge_agent.runtime import ModelRegistry
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(n_threads=threads, n_ctx=N_CTX)
    registry = ModelRegistry(settings)
    artifact = InstalledArtifact(MODEL, "llm", "gguf", "0" * 64, model.stat().st_size, model)
    registry.activate(InstalledRelease("bench", "bench", "1", 1, (artifact,)))
    registry.warm()
    app = create_local_api(registry, settings, api_token=TOKEN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def start_server(model: Path, threads: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--serve", "--threads", str(threads), "--model", str(model)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise RuntimeError("the agent server did not start")
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the agent server did not answer /healthz")


# --- statistics and report ----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(runs: list[Run]) -> dict[str, Any]:
    ttft = [r.ttft_ms for r in runs]
    rate = [r.decode_tok_s for r in runs]
    return {
        "ttft_ms": {"p50": percentile(ttft, 0.5), "p95": percentile(ttft, 0.95)},
        "decode_tok_s": {"p50": percentile(rate, 0.5), "p95": percentile(rate, 0.95)},
        "tokens": [r.tokens for r in runs],
        "runs": [asdict(r) for r in runs],
    }


def compare(raw: list[Run], agent: list[Run]) -> dict[str, float]:
    raw_s, agent_s = summary(raw), summary(agent)
    paired_ttft = [a.ttft_ms - r.ttft_ms for r, a in zip(raw, agent, strict=True)]
    paired_rate = [a.decode_tok_s / r.decode_tok_s for r, a in zip(raw, agent, strict=True)]
    return {
        "tok_s_ratio_p50": agent_s["decode_tok_s"]["p50"] / raw_s["decode_tok_s"]["p50"],
        "tok_s_ratio_paired_median": statistics.median(paired_rate),
        "ttft_delta_ms_p50": agent_s["ttft_ms"]["p50"] - raw_s["ttft_ms"]["p50"],
        "ttft_delta_ms_p95": agent_s["ttft_ms"]["p95"] - raw_s["ttft_ms"]["p95"],
        "ttft_delta_ms_paired_median": statistics.median(paired_ttft),
    }


def bench_threads(model: Path, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    proc, url = start_server(model, threads)
    try:
        sides = {
            "raw": raw_side(model, threads, args.max_tokens),
            "agent": agent_side(url, args.max_tokens),
        }
        results: dict[str, list[Run]] = {"raw": [], "agent": []}
        for i in range(args.warmup + args.runs):
            order = ["raw", "agent"] if i % 2 == 0 else ["agent", "raw"]
            for side in order:
                run = sides[side]()
                if i >= args.warmup:
                    results[side].append(run)
                print(
                    f"n_threads={threads} run {i} {side:5}: ttft {run.ttft_ms:7.1f} ms, "
                    f"{run.decode_tok_s:6.1f} tok/s, {run.tokens} tokens",
                    file=sys.stderr,
                )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {
        "n_threads": threads,
        "load_avg_1m_at_end": os.getloadavg()[0],
        "raw_llama_cpp": summary(results["raw"]),
        "agent_api": summary(results["agent"]),
        "agent_vs_raw": compare(results["raw"], results["agent"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per side")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, os.cpu_count() or 1}),
        help="n_threads values to compare at (default: 1 and all cores)",
    )
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model = args.model or smollm2_path()
    if args.serve:
        serve(model, args.threads[0])
        return 0

    configs = [bench_threads(model, threads, args) for threads in args.threads]
    report = {
        "benchmark": "serving_llm",
        "model": model.name,
        "n_ctx": N_CTX,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "prompt": PROMPT,
        "runs_per_side": args.runs,
        "warmup_runs_per_side": args.warmup,
        "tokens_per_second": "decode rate: (tokens - 1) / (last token time - first token time)",
        "machine": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": configs,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for config in configs:
        print(f"n_threads={config['n_threads']}: {json.dumps(config['agent_vs_raw'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
