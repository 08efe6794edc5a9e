"""Real agent processes for the packaging tests and benchmarks: an agent with no release
installed (what a device runs before its first assignment), ``bundle create`` and
``install-bundle`` as an operator runs them. Used by tests/packaging and
``benchmarks/footprint.py``, ``benchmarks/bundle_install.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edge_agent.store.identity import (
    DeviceIdentity,
    create_api_token,
    write_device_key,
    write_identity,
    write_trusted_root,
)
from protocol.keys import generate_key_pair
from tests.e2e.conftest import REPO, ControlPlane, _env, free_port

# Modules that cost memory or start-up time and that an agent serving no model never needs.
HEAVY_MODULES = (
    "cv2",
    "onnxruntime",
    "llama_cpp",
    "apsw",
    "sqlite_vec",
    "ai_edge_litert",
    "tflite_runtime",
    "coremltools",
    "pypdf",
    "sqlalchemy",
    "alembic",
    "torch",
    "onnx",
)


def enrolled_state_dir(path: Path) -> Path:
    """A state directory as enrollment leaves it, for a control plane nobody listens on."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_identity(path, DeviceIdentity("idle-probe", "http://127.0.0.1:9", "idle-probe"))
    write_device_key(path, generate_key_pair())
    write_trusted_root(path, b"{}")
    create_api_token(path)
    return path


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    port: int
    started_to_healthz_s: float

    def rss_kib(self) -> dict[str, int]:
        """VmRSS, RssAnon (private) and RssFile of the process, in KiB."""
        wanted = ("VmRSS", "RssAnon", "RssFile")
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0])
        return out

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def start_agent(
    state_dir: Path,
    *,
    stderr: Path,
    python_flags: tuple[str, ...] = (),
    executable: str = sys.executable,
    timeout: float = 60,
    extra_args: tuple[str, ...] = (),
) -> RunningAgent:
    """Start ``python -m edge_agent run`` and wait until ``/healthz`` answers."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    with stderr.open("wb") as log:
        process = subprocess.Popen(
            [
                executable,
                *python_flags,
                "-m",
                "edge_agent",
                "run",
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
                *extra_args,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the agent exited with {process.returncode}: see {stderr}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return RunningAgent(process, port, time.monotonic() - started)
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"the agent did not answer /healthz within {timeout} s: see {stderr}")


def imported_modules(importtime_log: str) -> set[str]:
    """Top-level module names from the ``-X importtime`` lines of a process's stderr."""
    names: set[str] = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".", 1)[0])
    return names


def bundle_create(cp: ControlPlane, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "control_plane",
            "bundle",
            "create",
            "--data-dir",
            str(cp.data_dir),
            *cp._database_args(),
            *(str(a) for a in args),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def install_bundle_cli(
    prefix: list[str], bundle: Path, state: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "edge_agent",
            "install-bundle",
            str(bundle),
            "--state-dir",
            str(state),
            *args,
        ],
        cwd=REPO,
        env={**_env(), "OUTPOST_AGENT_N_CTX": "512", "OUTPOST_AGENT_N_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
