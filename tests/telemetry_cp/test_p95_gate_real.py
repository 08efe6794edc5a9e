"""Real processes: a rollout of a deliberately slower release halts on the p95 gate at its
first stage.

The control plane is the real ``python -m control_plane`` (its own rollout and telemetry
workers), on SQLite and on a fresh PostgreSQL database; the rollout is created with the
real ``outpost-cp rollout create --max-p95-regression 20%``. The latencies are measured
here with the real SmolLM2 in llama.cpp: release 1.0.0 answers a short prompt, release
2.0.0 carries a long system prompt (a prompt-pack regression: every chat first reads ~150
more tokens; the model is reset before each chat, so none reuses the previous one's
evaluated prefix). The devices are protocol clients over loopback that poll, install, report
and send signed telemetry reports holding those measured times (each measurement counted
for REPEAT requests, released with discrete Laplace noise as the protocol declares), so
the gate judges what llama.cpp really took. The same halt with real agents sending their
own telemetry: tests/agent_telemetry/test_p95_gate_real_agents.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from protocol import SignedEnvelope, generate_key_pair, paths, sign_device_request
from protocol.keys import Ed25519KeyPair
from simulator.telemetry import telemetry_report
from tests.control_plane.conftest import small_gguf
from tests.e2e.conftest import (
    REPO,
    ControlPlane,
    control_plane,
    fresh_postgres_database,
    wait_until,
)
from tests.requirements import require_module, smollm2_gguf_path

__all__ = ["control_plane", "fresh_postgres_database"]  # fixtures: SQLite and PostgreSQL

pytestmark = pytest.mark.slow

COHORT_TAG = "hw=p95-gate-lab"
DEVICES = 4
# Stage 1 is the whole cohort: by salted bucket, 50% of 12 devices drew fewer than the
# gate's sample of 2 (or all 12) about 0.3% of the time, and the test failed. A partial
# first stage is tested with a chosen salt in test_gate_rollout.py.
SAMPLES = 5  # measured chats per release (prompt processing is slow on a loaded 2-core box)
REPEAT = 4  # each measured chat stands for this many requests in a device's report
SHORT_PROMPT = "Say hello."
LONG_SYSTEM = " ".join(
    f"Rule {i}: answer politely, briefly and only about the kiosk's products." for i in range(8)
)


def _ttfts(model: Any, system: str | None, n: int) -> list[float]:
    """Time to the first streamed token of ``n`` real chats."""
    times = []
    for i in range(n):
        messages = [{"role": "user", "content": f"{SHORT_PROMPT} ({i})"}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        model.reset()
        started = time.perf_counter()
        for _chunk in model.create_chat_completion(messages=messages, max_tokens=1, stream=True):
            times.append(time.perf_counter() - started)
            break
    return times


@pytest.fixture(scope="module")
def measured() -> dict[str, list[float]]:
    llama_cpp = require_module("llama_cpp", "llama-cpp-python", "make setup installs it")
    model = llama_cpp.Llama(
        model_path=str(smollm2_gguf_path()), n_ctx=2048, n_threads=1, verbose=False
    )
    return {
        "1.0.0": _ttfts(model, None, SAMPLES),
        "2.0.0": _ttfts(model, LONG_SYSTEM, SAMPLES),
    }


class Device:
    """A device speaking the protocol over loopback: enroll, poll, report, telemetry."""

    def __init__(self, cp: ControlPlane, key: Ed25519KeyPair, device_id: str) -> None:
        self.cp, self.key, self.id = cp, key, device_id
        self.http = httpx.Client(base_url=cp.url, timeout=30)
        self.version = 0
        self.running: str | None = None
        self.sequence = 0

    @classmethod
    def enroll(cls, cp: ControlPlane, name: str) -> Device:
        key = generate_key_pair()
        r = httpx.post(
            f"{cp.url}{paths.ENROLL}",
            json={
                "token": cp.enrollment_token(),
                "device_public_key": key.public_hex,
                "name": name,
                "hardware": {"arch": "x86_64", "os": "linux", "cpu_count": 2, "ram_mb": 4096},
                "tags": [COHORT_TAG],
            },
        )
        assert r.status_code == 201, r.text
        return cls(cp, key, r.json()["device_id"])

    def _signed(self, method: str, path: str, body: bytes = b"") -> httpx.Response:
        auth = sign_device_request(self.key, self.id, method, path, body, time.time())
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        return self.http.request(method, path, content=body, headers=headers)

    def poll(self) -> None:
        """Install (and commit) a newer assignment, as a healthy agent would."""
        r = self._signed("GET", paths.DEVICE_ASSIGNMENT)
        if r.status_code == 204:
            return
        assert r.status_code == 200, r.text
        payload = json.loads(SignedEnvelope.model_validate_json(r.content).payload_bytes())
        if payload["version"] <= self.version:
            return
        self.version, release = payload["version"], payload["release_id"]
        for state in ("active", "committed"):
            report = {
                "report_id": uuid.uuid4().hex,
                "device_id": self.id,
                "state": state,
                "assignment_version": self.version,
                "release_id": release,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            r = self._signed("POST", paths.DEVICE_STATUS, json.dumps(report).encode())
            assert r.status_code == 200, r.text
        self.running = release

    def send_telemetry(self, ttfts: list[float], rng: np.random.Generator) -> None:
        self.sequence += 1
        period_end = datetime.now(UTC)
        report = telemetry_report(
            device_id=self.id,
            sequence=self.sequence,
            period_start=period_end - timedelta(minutes=5),
            period_end=period_end,
            release_id=self.running,
            device_class="p95-gate-lab",
            rng=rng,
            scale=0.5,
            latencies={"chat_ttft_seconds": ttfts * REPEAT},
            requests={"chat": len(ttfts) * REPEAT},
        )
        r = self._signed("POST", paths.DEVICE_TELEMETRY, report.model_dump_json().encode())
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def lab(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cp = control_plane
    folder = tmp_path_factory.mktemp("p95")
    releases = {}
    for seed, version in enumerate(("1.0.0", "2.0.0"), start=1):
        model = folder / f"m{seed}.gguf"
        model.write_bytes(small_gguf(folder, name=f"gate{seed}", values=64 + seed, seed=seed))
        artifact = cp.upload(model, name=f"p95-gate-{seed}", kind="llm", fmt="gguf")
        releases[version] = cp.release("p95-gate-assistant", version, [artifact["id"]])
    devices = [Device.enroll(cp, f"p95-lab-{i}") for i in range(DEVICES)]
    for device in devices:
        cp.assign(device.id, releases["1.0.0"])
        device.poll()
    yield cp, releases, devices
    for device in devices:
        device.http.close()


def _cli(cp: ControlPlane, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "control_plane", *args, "--server", cp.url, "--json"],
        cwd=REPO,
        env={"OUTPOST_CP_TOKEN": cp.init["admin_token"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def test_a_slower_release_halts_on_the_p95_gate_at_the_first_stage(
    lab: Any, measured: dict[str, list[float]]
) -> None:
    cp, releases, devices = lab
    fast, slow = np.median(measured["1.0.0"]), np.median(measured["2.0.0"])
    assert slow > 1.5 * fast, f"the long system prompt must be slower: {fast:.3f} vs {slow:.3f}"
    rng = np.random.default_rng(7)
    for device in devices:
        device.send_telemetry(measured["1.0.0"], rng)  # the previous release's baseline
    rollout = _cli(
        cp,
        "rollout",
        "create",
        "--release",
        "p95-gate-assistant@2.0.0",
        "--cohort",
        COHORT_TAG,
        "--stages",
        "100",
        "--min-sample",
        "2",
        "--max-p95-regression",
        "20%",
        "--telemetry-min-sample",
        "2",
    )
    assert rollout["state"] == "running"

    def moved() -> list[Device]:
        for device in devices:
            device.poll()
        return [d for d in devices if d.running == releases["2.0.0"]]

    stage1 = wait_until(lambda: moved() or None, timeout=30, what="stage 1 to be assigned")
    assert len(stage1) == DEVICES, f"stage 1 moved {len(stage1)} of {DEVICES} devices"
    for device in stage1:
        device.send_telemetry(measured["2.0.0"], rng)

    def halted() -> dict[str, Any] | None:
        shown = _cli(cp, "rollout", "status", rollout["id"])
        return shown if shown["state"] == "halted" else None

    shown = wait_until(halted, timeout=60, what="the rollout to halt on the p95 gate")
    assert shown["stage"] == 1
    reason = shown["reason"]
    assert "p95 time to first token" in reason and reason.count("95% CI") == 2, reason
    assert "p95-gate-assistant@2.0.0" in reason and "p95-gate-assistant@1.0.0" in reason
    assert "more than the allowed +20%" in reason
    for device in devices:  # the moved devices are sent back to 1.0.0
        device.poll()
    assert {d.running for d in devices} == {releases["1.0.0"]}
