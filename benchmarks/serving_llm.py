"""Streaming chat through the agent's local API vs llama.cpp's own llama-server and raw
llama-cpp-python, side by side in one run (issue 13's benchmark).

Same GGUF model (SmolLM2-135M-Instruct Q4_1), decode and prompt thread counts, max_tokens
and temperature 0 on every side:

- raw:          ``Llama.create_chat_completion(stream=True)`` in this process;
- agent:        ``POST /v1/chat/completions``, ``stream=True``, over loopback, served by
                uvicorn in a subprocess (the release also holds the MiniLM embedding model);
- llama-server: llama.cpp's server built from the same vendored llama.cpp that the pinned
                llama-cpp-python ships (scripts/build_llama_server.py, cached per CPU), run
                with ``-np 4 -cb`` (4 slots of ``n_ctx`` each, continuous batching), plus a
                second one with ``--embedding`` for the embedding model;

the agent and llama-server read with the official ``openai`` client. Every request is a
new prompt (a chunk of the Python standard library's own docstrings, text nobody here
wrote), so a first token includes reading the prompt. Cases:

1. one stream at a time (raw, agent, llama-server, and the agent with prompt threads =
   decode threads, i.e. before issue 13's item 3): first token and decode tok/s;
2. 2 and 4 streamed clients at once (agent, llama-server): total tok/s and first-token
   p50/p95 over all clients;
3. interleaved conversations (2 by default) taking turns, 6 turns each: first token per
   turn, the aim is on turn 6;
4. resident memory (RSS) with the chat and embedding models loaded, after the runs.

Each ratio is agent / llama-server next to the issue's aim; the report goes to
``benchmarks/results/serving_llm.json`` (docs/local-api.md quotes it).

    .venv/bin/python benchmarks/serving_llm.py [--runs 4] [--rounds 2] [--max-tokens 64]
        [--threads N] [--threads-batch N] [--conversations 2] [--turns 6]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "serving_llm.json"
TOKEN = "benchmark-token-0123456789"
MODEL = "smollm2"
EMBEDDER = "minilm"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
N_CTX = 2048
SLOTS = 4

# Aims from issue 13 (agent / llama-server).
AIMS = {
    "single_stream_decode_tok_s": (">=", 0.97),
    "four_clients_total_tok_s": (">=", 1.0),
    "four_clients_first_token_p95": ("<=", 1.2),
    "interleaved_turn6_first_token": ("<=", 1.2),
    "rss_models_loaded": ("<=", 1.1),
}

Messages = list[dict[str, str]]
Stream = Callable[[Messages], "Run"]


def smollm2_path() -> Path:
    from converters.sources import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


def minilm_path() -> Path:
    from converters.minilm_gguf import cached_gguf

    return cached_gguf()


# --- prompts: text nobody here wrote -------------------------------------------------------

# Module docstrings of the standard library (CPython's authors), cut into chunks.
SOURCE_MODULES = (
    "argparse", "asyncio", "calendar", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "decimal", "difflib", "doctest", "email", "fractions", "ftplib", "heapq",
    "http.cookies", "imaplib", "inspect", "ipaddress", "json", "logging", "mailbox",
    "multiprocessing", "optparse", "pickle", "pickletools", "pydoc", "queue", "random", "re",
    "sched", "shelve", "shlex", "smtplib", "socketserver", "sqlite3", "string", "subprocess",
    "tarfile", "textwrap", "threading", "timeit", "tokenize", "trace", "typing", "unittest",
    "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
)  # fmt: skip


def text_chunks(size: int) -> list[str]:
    """Paragraphs of the modules' docstrings, joined up to about ``size`` characters."""
    import importlib

    chunks: list[str] = []
    for name in SOURCE_MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except ImportError:
            continue
        current = ""
        for paragraph in (p.strip() for p in doc.split("\n\n")):
            if not paragraph:
                continue
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= size:
                chunks.append(current[: size * 2])
                current = ""
        if len(current) >= size // 3:
            chunks.append(current)
    return chunks


class Prompts:
    """An endless supply of prompts none of which was sent before in this run."""

    def __init__(self, size: int) -> None:
        chunks = text_chunks(size)
        if len(chunks) < 20:
            raise SystemExit(f"only {len(chunks)} text chunks from the standard library")
        self._chunks = itertools.cycle(chunks)
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def __next__(self) -> str:
        with self._lock:
            # the number keeps a prompt new when the cycle comes round again
            return f"Text {next(self._count)}:\n\n{next(self._chunks)}"

    def question(self) -> Messages:
        return [{"role": "user", "content": f"{next(self)}\n\nExplain this text in detail."}]


# --- measuring a stream --------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    ttft_ms: float
    tokens: int
    decode_tok_s: float
    total_s: float
    text: str = ""


def measure(chunks: Iterable[str], started: float) -> Run:
    """Time a stream of text pieces: first non-empty piece, then the rest."""
    first = last = 0.0
    tokens = 0
    parts: list[str] = []
    for text in chunks:
        if not text:
            continue
        now = time.perf_counter()
        if tokens == 0:
            first = now
        last = now
        tokens += 1
        parts.append(text)
    if tokens < 2:
        raise RuntimeError("the model produced fewer than 2 tokens; raise --max-tokens")
    return Run(
        ttft_ms=(first - started) * 1000,
        tokens=tokens,
        decode_tok_s=(tokens - 1) / (last - first),
        total_s=last - started,
        text="".join(parts),
    )


def raw_stream(model: Path, threads: int, threads_batch: int, max_tokens: int) -> Stream:
    from llama_cpp import Llama

    llama = Llama(
        str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads_batch, verbose=False
    )

    def run(messages: Messages) -> Run:
        started = time.perf_counter()
        stream: Any = llama.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        return measure((c["choices"][0]["delta"].get("content") or "" for c in stream), started)

    return run


def openai_stream(url: str, max_tokens: int, model: str = MODEL) -> Stream:
    """Stream a chat through an OpenAI-compatible server with the official client."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=300)

    def pieces(stream: Any) -> Iterator[str]:
        for chunk in stream:
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""

    def run(messages: Messages) -> Run:
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        return measure(pieces(stream), started)

    return run


def agent_side(url: str, max_tokens: int) -> Callable[[], Run]:
    """One streamed chat of ``PROMPT`` through the agent (benchmarks/device_suite.py)."""
    stream = openai_stream(url, max_tokens)
    return lambda: stream([{"role": "user", "content": PROMPT}])


# --- the servers ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[Any]
    url: str
    log: Path | None = None

    def rss_mb(self) -> dict[str, float]:
        """Resident and peak resident memory of the process, from /proc."""
        fields: dict[str, float] = {}
        status = Path(f"/proc/{self.proc.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) / 1024
        return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_healthy(server: Server, path: str, seconds: float = 120) -> Server:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            if httpx.get(f"{server.url}{path}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = server.log.read_text()[-3000:] if server.log and server.log.exists() else ""
    server.stop()
    raise RuntimeError(f"{server.name} did not answer {path}\n{tail}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(model: Path, embedder: Path | None, threads: int, threads_batch: int) -> None:
    """Subprocess mode: serve the agent's local API and print the port."""
    import uvicorn

    from edge_agent.api import create_local_api
    from edge_agent.release import InstalledArtifact, InstalledRelease
    from edge_agent.runtime import ModelRegistry
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(n_threads=threads, n_threads_batch=threads_batch, n_ctx=N_CTX)
    registry = ModelRegistry(settings)
    artifacts = [InstalledArtifact(MODEL, "llm", "gguf", "0" * 64, model.stat().st_size, model)]
    if embedder is not None:
        size = embedder.stat().st_size
        artifacts.append(InstalledArtifact(EMBEDDER, "embedding", "gguf", "0" * 64, size, embedder))
    registry.activate(InstalledRelease("bench", "bench", "1", 1, tuple(artifacts)))
    registry.warm()
    app = create_local_api(registry, settings, api_token=TOKEN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def start_agent(
    name: str, model: Path, embedder: Path | None, threads: int, threads_batch: int
) -> Server:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--serve", "--model", str(model)]
    cmd += ["--threads", str(threads), "--threads-batch", str(threads_batch)]
    if embedder is not None:
        cmd += ["--embedding-model", str(embedder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise RuntimeError(f"{name} did not start")
    return wait_healthy(Server(name, proc, f"http://127.0.0.1:{port}"), "/healthz")


def start_llama_server(
    name: str, binary: Path, args: Sequence[str], logs: Path
) -> tuple[Server, list[str]]:
    port = free_port()
    cmd = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--no-webui", *args]
    log = logs / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    return wait_healthy(server, "/health"), cmd


def embed_once(url: str, model: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
    client.embeddings.create(model=model, input=["a lighthouse keeper", "a message in a bottle"])


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def p50_p95(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


def summary(runs: list[Run]) -> dict[str, Any]:
    return {
        "ttft_ms": p50_p95([r.ttft_ms for r in runs]),
        "decode_tok_s": p50_p95([r.decode_tok_s for r in runs]),
        "total_tok_s_mean": statistics.fmean(r.tokens / r.total_s for r in runs),
        "tokens": [r.tokens for r in runs],
        "runs": [{k: v for k, v in asdict(r).items() if k != "text"} for r in runs],
    }


def ratio(name: str, agent: float, peer: float) -> dict[str, Any]:
    op, aim = AIMS[name]
    value = agent / peer
    met = value >= aim if op == ">=" else value <= aim
    return {"agent": agent, "llama_server": peer, "ratio": value, "aim": f"{op} {aim}", "met": met}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the cases -----------------------------------------------------------------------------


def single_stream(
    sides: dict[str, Stream], prompts: Prompts, runs: int, warmup: int
) -> dict[str, list[Run]]:
    """One request at a time, each a new prompt, the sides' order rotating every run."""
    names = list(sides)
    results: dict[str, list[Run]] = {name: [] for name in names}
    for i in range(warmup + runs):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            run = sides[name](prompts.question())
            if i >= warmup:
                results[name].append(run)
            log(
                f"1 client  run {i} {name:28}: first token {run.ttft_ms:7.1f} ms, "
                f"{run.decode_tok_s:6.1f} tok/s, {run.tokens} tokens"
            )
    return results


def concurrent_round(stream: Stream, prompts: Prompts, clients: int) -> dict[str, Any]:
    """``clients`` streams started together; total tok/s from the start to the last token."""
    messages = [prompts.question() for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    runs: list[Run | BaseException] = [RuntimeError("not run")] * clients
    starts = [0.0] * clients

    def client(k: int) -> None:
        barrier.wait()
        starts[k] = time.perf_counter()
        try:
            runs[k] = stream(messages[k])
        except BaseException as e:  # reported below
            runs[k] = e

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    done = [r for r in runs if isinstance(r, Run)]
    if len(done) != clients:
        errors = [repr(r) for r in runs if not isinstance(r, Run)]
        raise RuntimeError(f"{clients - len(done)} of {clients} clients failed: {errors}")
    began = min(starts)
    ended = max(s + r.total_s for s, r in zip(starts, done, strict=True))
    return {
        "total_tokens": sum(r.tokens for r in done),
        "wall_s": ended - began,
        "total_tok_s": sum(r.tokens for r in done) / (ended - began),
        "ttft_ms": [r.ttft_ms for r in done],
    }


def concurrent(
    sides: dict[str, Stream], prompts: Prompts, clients: int, rounds: int
) -> dict[str, Any]:
    names = list(sides)
    rounds_by_side: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            result = concurrent_round(sides[name], prompts, clients)
            rounds_by_side[name].append(result)
            log(
                f"{clients} clients round {i} {name:12}: {result['total_tok_s']:6.1f} tok/s total, "
                f"first token max {max(result['ttft_ms']):7.1f} ms"
            )
    out: dict[str, Any] = {}
    for name, results in rounds_by_side.items():
        ttft = [t for r in results for t in r["ttft_ms"]]
        out[name] = {
            "total_tok_s": statistics.median(r["total_tok_s"] for r in results),
            "ttft_ms": p50_p95(ttft),
            "rounds": results,
        }
    return out


def interleaved(
    stream: Stream, name: str, prompts: Prompts, conversations: int, turns: int
) -> dict[str, Any]:
    """Conversations taking turns (A1 B1 A2 B2 ...), each turn a new part of a text."""
    histories: list[Messages] = [[] for _ in range(conversations)]
    ttft: list[list[float]] = [[] for _ in range(conversations)]
    prompt_chars: list[int] = [0] * conversations
    for turn in range(1, turns + 1):
        for c in range(conversations):
            histories[c].append(
                {"role": "user", "content": f"{next(prompts)}\n\nWhat does this part say?"}
            )
            run = stream(histories[c])
            histories[c].append({"role": "assistant", "content": run.text})
            ttft[c].append(run.ttft_ms)
            prompt_chars[c] = sum(len(m["content"]) for m in histories[c])
            log(f"conversation {c} turn {turn} {name:12}: first token {run.ttft_ms:7.1f} ms")
    last = [t[-1] for t in ttft]
    return {
        "first_token_ms_by_turn": ttft,
        "last_turn_first_token_ms": p50_p95(last),
        "history_chars_at_last_turn": prompt_chars,
    }


# --- the run -------------------------------------------------------------------------------


def default_thread_counts() -> tuple[int, int]:
    """The agent's own defaults on this machine (edge_agent/runtime/options.py)."""
    from edge_agent.runtime.options import default_batch_threads, default_threads
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(n_threads=None, n_threads_batch=None)
    cores = os.cpu_count()
    return default_threads(settings, cores), default_batch_threads(settings, cores)


def llama_server_version(binary: Path) -> str:
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    return next((line for line in lines if line.startswith("version")), lines[0] if lines else "")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from scripts.build_llama_server import llama_server_binary

    model = args.model or smollm2_path()
    embedder = args.embedding_model or minilm_path()
    threads, threads_batch = default_thread_counts()
    threads = args.threads or threads
    threads_batch = args.threads_batch or threads_batch
    binary = llama_server_binary()  # builds it the first time on this CPU (minutes)
    log(f"llama-server: {binary} ({llama_server_version(binary)})")
    log(f"threads: decode {threads}, prompt/batch {threads_batch}")

    chunk_size = args.prompt_chars
    prompts = Prompts(chunk_size)
    turn_prompts = Prompts(chunk_size // 2)
    servers: list[Server] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        stack.callback(lambda: [s.stop() for s in servers])
        logs = Path(tmp)
        agent = start_agent("agent", model, embedder, threads, threads_batch)
        servers.append(agent)
        before = start_agent("agent-batch-eq-decode", model, None, threads, threads)
        servers.append(before)
        threads_args = ["-t", str(threads), "-tb", str(threads_batch)]
        peer, peer_cmd = start_llama_server(
            "llama-server",
            binary,
            [
                "-m",
                str(model),
                "-a",
                MODEL,
                "-c",
                str(N_CTX * SLOTS),
                "-np",
                str(SLOTS),
                "-cb",
                *threads_args,
            ],
            logs,
        )
        servers.append(peer)
        peer_embed, embed_cmd = start_llama_server(
            "llama-server-embedding",
            binary,
            [
                "-m",
                str(embedder),
                "-a",
                EMBEDDER,
                "--embedding",
                "-c",
                "512",
                "-np",
                "1",
                *threads_args,
            ],
            logs,
        )
        servers.append(peer_embed)
        embed_once(agent.url, EMBEDDER)
        embed_once(peer_embed.url, EMBEDDER)

        agent_stream = openai_stream(agent.url, args.max_tokens)
        peer_stream = openai_stream(peer.url, args.max_tokens)
        one = single_stream(
            {
                "raw": raw_stream(model, threads, threads_batch, args.max_tokens),
                "agent": agent_stream,
                "llama_server": peer_stream,
                "agent_batch_threads_eq_decode": openai_stream(before.url, args.max_tokens),
            },
            prompts,
            args.runs,
            args.warmup,
        )
        before.stop()
        servers.remove(before)
        pair = {"agent": agent_stream, "llama_server": peer_stream}
        many = {str(c): concurrent(pair, prompts, c, args.rounds) for c in args.clients if c > 1}
        turns = {
            name: interleaved(stream, name, turn_prompts, args.conversations, args.turns)
            for name, stream in pair.items()
        }
        memory = {
            "agent (chat + embedding, one process)": agent.rss_mb(),
            "llama_server_chat": peer.rss_mb(),
            "llama_server_embedding": peer_embed.rss_mb(),
        }

    single = {name: summary(runs) for name, runs in one.items()}
    peer_rss = memory["llama_server_chat"]["rss_mb"] + memory["llama_server_embedding"]["rss_mb"]
    four = many.get(str(max(args.clients)))
    ratios: dict[str, Any] = {
        "single_stream_decode_tok_s": ratio(
            "single_stream_decode_tok_s",
            single["agent"]["decode_tok_s"]["p50"],
            single["llama_server"]["decode_tok_s"]["p50"],
        ),
        "interleaved_turn6_first_token": ratio(
            "interleaved_turn6_first_token",
            turns["agent"]["last_turn_first_token_ms"]["p50"],
            turns["llama_server"]["last_turn_first_token_ms"]["p50"],
        ),
        "rss_models_loaded": ratio(
            "rss_models_loaded",
            memory["agent (chat + embedding, one process)"]["rss_mb"],
            peer_rss,
        ),
    }
    if four is not None:
        ratios["four_clients_total_tok_s"] = ratio(
            "four_clients_total_tok_s",
            four["agent"]["total_tok_s"],
            four["llama_server"]["total_tok_s"],
        )
        ratios["four_clients_first_token_p95"] = ratio(
            "four_clients_first_token_p95",
            four["agent"]["ttft_ms"]["p95"],
            four["llama_server"]["ttft_ms"]["p95"],
        )
    clients_table = {
        "1": {
            name: {
                "total_tok_s": single[name]["total_tok_s_mean"],
                "ttft_ms": single[name]["ttft_ms"],
            }
            for name in ("agent", "llama_server")
        },
        **{
            c: {n: {k: v[k] for k in ("total_tok_s", "ttft_ms")} for n, v in r.items()}
            for c, r in many.items()
        },
    }
    before_s, after_s = single["agent_batch_threads_eq_decode"], single["agent"]
    return {
        "benchmark": "serving_llm",
        "model": model.name,
        "embedding_model": embedder.name,
        "n_ctx": N_CTX,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "threads": {"n_threads": threads, "n_threads_batch": threads_batch},
        "prompts": (
            f"a new prompt per request: chunks of about {chunk_size} characters of Python "
            f"{platform.python_version()} standard-library module docstrings"
        ),
        "peer": {
            "binary": str(binary),
            "version": llama_server_version(binary),
            "chat_command": peer_cmd,
            "embedding_command": embed_cmd,
        },
        "runs": {
            "single_stream_runs_per_side": args.runs,
            "warmup_runs_per_side": args.warmup,
            "concurrent_rounds": args.rounds,
            "conversations": args.conversations,
            "turns": args.turns,
        },
        "tokens_per_second": (
            "decode: (tokens - 1) / (last token - first token) of one stream; total: all "
            "clients' tokens / (last token of any client - start)"
        ),
        "ratios_agent_over_llama_server": ratios,
        "clients": clients_table,
        "threads_item3": {
            "agent n_threads_batch = n_threads (before)": {
                "ttft_ms": before_s["ttft_ms"],
                "decode_tok_s": before_s["decode_tok_s"],
            },
            f"agent n_threads_batch = {threads_batch} (after)": {
                "ttft_ms": after_s["ttft_ms"],
                "decode_tok_s": after_s["decode_tok_s"],
            },
            "first_token_after_over_before_p50": after_s["ttft_ms"]["p50"]
            / before_s["ttft_ms"]["p50"],
            "decode_after_over_before_p50": after_s["decode_tok_s"]["p50"]
            / before_s["decode_tok_s"]["p50"],
        },
        "agent_vs_raw": {
            "decode_tok_s_ratio_p50": after_s["decode_tok_s"]["p50"]
            / single["raw"]["decode_tok_s"]["p50"],
            "ttft_delta_ms_p50": after_s["ttft_ms"]["p50"] - single["raw"]["ttft_ms"]["p50"],
        },
        "single_stream": single,
        "concurrent": many,
        "interleaved": turns,
        "memory": memory,
        "machine": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="single-stream runs per side")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per side")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=700, help="size of a new prompt")
    parser.add_argument(
        "--threads", type=int, default=None, help="decode threads (default: the agent's)"
    )
    parser.add_argument(
        "--threads-batch", type=int, default=None, help="prompt threads (default: the agent's)"
    )
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--embedding-model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.model or smollm2_path(), args.embedding_model, args.threads, args.threads_batch)
        return 0
    report = bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report["ratios_agent_over_llama_server"].items():
        verdict = "met" if r["met"] else "NOT met"
        print(
            f"{name}: agent {r['agent']:.1f} / llama-server {r['llama_server']:.1f} = "
            f"{r['ratio']:.2f} (aim {r['aim']}: {verdict})"
        )
    item3 = report["threads_item3"]
    print(
        f"item 3: first token after/before {item3['first_token_after_over_before_p50']:.2f}, "
        f"decode after/before {item3['decode_after_over_before_p50']:.2f}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
