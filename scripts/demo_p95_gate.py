"""`make demo` act 13: a simulated lab fleet's staged rollout halts on the p95 gate.

Twenty simulated devices (real keys, signed requests, verified assignments; tag
``hw=lab``, so the real kiosk is not in the cohort) run ``lab-assistant@1.0.0`` and send
signed telemetry reports every second: time to first token around 300 ms, released with
discrete Laplace noise as the protocol declares (the latencies are simulated here; the
real-process test measures real ones). ``lab-assistant@2.0.0`` answers 50% slower; a
rollout created with ``--max-p95-regression 20%`` halts at its first stage and says why,
with both p95s and their intervals, and the moved devices go back to 1.0.0.

Run on its own against a running control plane (``--server``, ``--token-file``), or from
``scripts/demo.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LAB_DEVICES = 20
MEDIAN_TTFT = {"1.0.0": 0.30, "2.0.0": 0.45}


def p95_gate_act(
    server: str,
    token_file: Path,
    operator_token: str,
    root: bytes,
    artifacts: Sequence[str],
    info: Callable[[str], None],
) -> dict[str, Any]:
    """Publish two lab releases, run the lab fleet, roll 2.0.0 out; the halted rollout."""
    from protocol import paths, sign_device_request
    from simulator import Fleet, TagSpec
    from simulator.telemetry import telemetry_report

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "control_plane", *args, "--server", server,
             "--token-file", str(token_file), "--json"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"demo: outpost-cp {' '.join(args)} failed: {done.stderr.strip()}")
        body: dict[str, Any] = json.loads(done.stdout)
        return body

    http = httpx.Client(base_url=server, timeout=60)
    operator = {"Authorization": f"Bearer {operator_token}"}
    releases = {}
    for version in MEDIAN_TTFT:
        r = http.post(
            "/api/v1/releases",
            json={"name": "lab-assistant", "version": version, "artifacts": list(artifacts)},
            headers=operator,
        )
        if r.status_code >= 400:
            raise SystemExit(f"demo: publishing lab-assistant@{version}: {r.text}")
        releases[r.json()["id"]] = version
    sim = Fleet.create(
        http,
        size=LAB_DEVICES,
        clock=lambda: datetime.now(UTC),
        operator_token=operator_token,
        profile=TagSpec.parse(["hw=lab"]),
        root=root,
    )
    sim.step()
    info(f"enrolled {LAB_DEVICES} simulated lab devices (tag hw=lab)")
    first = cli(
        "rollout", "create", "--release", "lab-assistant@1.0.0", "--cohort", "hw=lab",
        "--stages", "100", "--min-sample", "5",
    )  # fmt: skip
    stop = threading.Event()
    rng = np.random.default_rng(13)
    sequence = [0]

    def send_telemetry() -> None:
        end = datetime.now(UTC)
        for device in sim.devices:
            version = releases.get(device.serving_release_id or "")
            if version is None or device.device_id is None:
                continue
            sequence[0] += 1
            samples = rng.lognormal(math.log(MEDIAN_TTFT[version]), 0.25, 60)
            report = telemetry_report(
                device_id=device.device_id, sequence=sequence[0],
                period_start=end - timedelta(seconds=1), period_end=end,
                release_id=device.serving_release_id, device_class="lab", rng=rng, scale=1.0,
                latencies={"chat_ttft_seconds": list(samples)}, requests={"chat": 60},
            )  # fmt: skip
            body = report.model_dump_json().encode()
            auth = sign_device_request(
                device.key, device.device_id, "POST", paths.DEVICE_TELEMETRY, body, time.time()
            )
            http.post(
                paths.DEVICE_TELEMETRY,
                content=body,
                headers={"Authorization": auth, "Content-Type": "application/json"},
            )

    def run_lab() -> None:
        while not stop.is_set():
            sim.step()
            send_telemetry()
            stop.wait(1.0)

    lab = threading.Thread(target=run_lab, name="lab-fleet", daemon=True)
    lab.start()
    try:
        deadline = time.monotonic() + 120
        while cli("rollout", "status", first["id"])["state"] == "running":
            if time.monotonic() > deadline:
                raise SystemExit("demo: the lab fleet did not reach lab-assistant@1.0.0")
            time.sleep(1)
        info("the lab fleet runs lab-assistant@1.0.0 and reports p95 TTFT ~ 0.4 s")
        time.sleep(2)  # a baseline of a few reports per device
        info(
            "outpost-cp rollout create --release lab-assistant@2.0.0 --cohort hw=lab"
            " --stages 25,100 --max-p95-regression 20% --telemetry-min-sample 3"
        )
        started = cli(
            "rollout", "create", "--release", "lab-assistant@2.0.0", "--cohort", "hw=lab",
            "--stages", "25,100", "--min-sample", "3", "--max-p95-regression", "20%",
            "--telemetry-min-sample", "3",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while (status := cli("rollout", "status", started["id"]))["state"] == "running":
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the slower release did not halt: {status['reason']}")
            time.sleep(1)
        return status
    finally:
        stop.set()
        lab.join(timeout=30)
        http.close()


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--token-file", type=Path, required=True, help="an operator token")
    parser.add_argument("--root", type=Path, required=True, help="the control plane's root.json")
    parser.add_argument("--artifact", action="append", required=True)
    args = parser.parse_args()
    token = args.token_file.read_text().strip()
    halted = p95_gate_act(
        args.server, args.token_file, token, args.root.read_bytes(), args.artifact, print
    )
    print(json.dumps({"state": halted["state"], "reason": halted["reason"]}, indent=1))
    return 0 if halted["state"] == "halted" else 1


if __name__ == "__main__":
    sys.exit(main())
