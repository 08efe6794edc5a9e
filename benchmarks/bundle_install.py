"""Installing a release from an offline bundle vs over the network, same release, same run.

One real control plane (SQLite, loopback) publishes ``kiosk-assistant@1.1.0`` (SmolLM2,
98 MB). Runs alternate:

- bundle: a fresh state dir, ``python -m edge_agent install-bundle`` (process start,
  tar checks and unpacking, TUF metadata, director-signed manifest and assignment, every
  hash, store journal, the runtime's health window, commit);
- network: a fresh enrolled agent, already running and polling every 0.3 s; from the
  operator's assignment to the ``committed`` report (download over loopback, the same
  verification, journal and health window).

Also: ``bundle create`` time and the bundle's size. Writes
``benchmarks/results/bundle_install.json``.

    .venv/bin/python benchmarks/bundle_install.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Agent, ControlPlane, smollm2_path, stop_agent
from tests.packaging.idle_agent import bundle_create, install_bundle_cli

RESULT = REPO / "benchmarks/results/bundle_install.json"
RELEASE = ("kiosk-assistant", "1.1.0")


def _stats(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "max_s": round(ordered[-1], 3),
        "runs": [round(v, 3) for v in values],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(
        {
            "OUTPOST_AGENT_N_CTX": "512",
            "OUTPOST_AGENT_N_THREADS": "2",
            # a busy shared box: a smoke request slower than the default 30 s is load, not
            # a broken model, and both paths run the same health window
            "OUTPOST_AGENT_HEALTH_CHECK_TIMEOUT_SECONDS": "120",
        }
    )
    with tempfile.TemporaryDirectory(prefix="outpost-bundle-bench-") as name:
        tmp = Path(name)
        cp = ControlPlane(tmp / "cp" / "data")
        try:
            artifact = cp.upload(smollm2_path(), name="smollm2", kind="llm", fmt="gguf")
            release_id = cp.release(*RELEASE, [artifact["id"]])
            bundle = tmp / "kiosk.bundle"
            started = time.monotonic()
            made = bundle_create(
                cp, "--release", "@".join(RELEASE), "--device-class", "x86-ci", "--out", bundle,
                "--model-license", "smollm2=Apache-2.0",
            )  # fmt: skip
            create_s = time.monotonic() - started
            if made.returncode != 0:
                raise RuntimeError(made.stderr)
            root_sha256 = json.loads(made.stdout)["root_sha256"]
            bundle_runs, network_runs = [], []
            for n in range(args.runs):
                state = tmp / f"kiosk-{n}"
                started = time.monotonic()
                done = install_bundle_cli(
                    [], bundle, state, "--device-class", "x86-ci", "--root-sha256", root_sha256
                )
                bundle_runs.append(time.monotonic() - started)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr)

                agent = Agent(cp, tmp / f"device-{n}")
                try:
                    agent.start()
                    started = time.monotonic()
                    version = cp.assign(agent.device_id, release_id)
                    try:
                        agent.wait_installed(version, timeout=300)
                    except AssertionError:
                        print(json.dumps(agent.status(), indent=2), file=sys.stderr)
                        print(agent.log_path.read_text()[-4000:], file=sys.stderr)
                        raise
                    network_runs.append(time.monotonic() - started)
                finally:
                    stop_agent(agent)
        finally:
            cp.stop()
        size = bundle.stat().st_size
    result = {
        "benchmark": "bundle_install",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "release": "@".join(RELEASE) + " (SmolLM2-135M-Instruct Q4_1, 98 MB)",
        "bundle_bytes": size,
        "bundle_create_s": round(create_s, 3),
        "bundle_install": _stats(bundle_runs),
        "network_install": _stats(network_runs),
        "bundle_over_network_p50": round(
            statistics.median(bundle_runs) / statistics.median(network_runs), 2
        ),
        "note": "bundle: whole install-bundle process (start, checks, health window);"
        " network: assignment to committed on an agent already running",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
