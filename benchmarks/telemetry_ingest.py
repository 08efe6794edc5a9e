"""Telemetry on the control plane: ingest throughput on SQLite and PostgreSQL (same run),
aggregation speed, and the accuracy of the DP-aware estimates at the policy's epsilon.

``ingest``: for each database a fresh control plane (``python -m control_plane serve``,
its workers on) and ``--devices`` enrolled devices; ``--clients`` threads each send
signed telemetry reports (built beforehand with the simulator's builder, signed at send
time) as fast as answers come, for ``--reports`` reports in total. Reports/s, p50/p95
latency of a report, errors. Then ``aggregate``: the stored reports folded into their
hourly rows in process (reports/s of ``TelemetryService.aggregate_pending``).

``accuracy``: 1,000 simulated devices, each releasing its chat request count (Poisson,
mean ``--requests``) and its TTFT histogram with the agent's own mechanism (OpenDP's
discrete Laplace) at the default policy's per-field scale (``epsilon_per_report`` split
evenly over the usage fields). The control plane's estimate of the fleet's chat count
against the true count, and how often its 95% interval covers it over ``--runs`` runs;
the same for the fleet's p95 TTFT (a lognormal, median 300 ms), also at 24 reports per
device (a day of hourly reports).

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) for its half of
``ingest``; ``--no-postgres`` skips it. Writes ``benchmarks/results/telemetry_ingest.json``.

    .venv/bin/python benchmarks/telemetry_ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database
from control_plane.telemetry.estimates import (
    NoisyValue,
    estimate_quantile,
    estimate_sum,
    interpolated_quantile,
    noise_variance,
)
from control_plane.telemetry.service import TelemetryService
from edge_agent.telemetry.mechanisms import OpenDPDiscreteLaplace
from edge_agent.telemetry.policy import resolve_policy
from edge_agent.telemetry.report import plan_release
from protocol import generate_key_pair, paths, sign_device_request
from protocol.telemetry import LATENCY_BUCKETS_SECONDS
from simulator.telemetry import telemetry_report

RESULTS = REPO / "benchmarks" / "results" / "telemetry_ingest.json"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def log(message: str) -> None:
    print(f"[telemetry_ingest] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- ingest --------------------------------------------------------------------------


def ingest(database: str, url: str | None, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / database
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OUTPOST_CP_TELEMETRY_RATE_LIMIT_REPORTS": "1000000",
        # aggregation is measured on its own below, in process
        "OUTPOST_CP_WORKERS_ENABLED": "false",
    }
    db_args = [] if url is None else ["--database-url", url]
    init = subprocess.run(
        [sys.executable, "-m", "control_plane", "init", "--data-dir", str(data), *db_args],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    admin = json.loads(init.stdout.strip().splitlines()[-1])["admin_token"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "control_plane", "serve", "--data-dir", str(data),
         "--port", str(port), *db_args],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit(f"{database}: the control plane did not start")
            time.sleep(0.3)
        operator = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"})
        devices = []
        for i in range(args.devices):
            token = operator.post("/api/v1/enrollment-tokens", json={}).json()["token"]
            key = generate_key_pair()
            r = httpx.post(
                f"{base}{paths.ENROLL}",
                json={
                    "token": token,
                    "device_public_key": key.public_hex,
                    "name": f"bench-{i}",
                    "hardware": {"arch": "x86_64", "os": "linux", "cpu_count": 2, "ram_mb": 4096},
                    "tags": ["hw=bench"],
                },
            )
            r.raise_for_status()
            devices.append((r.json()["device_id"], key))
        rng = np.random.default_rng(0)
        now = datetime.now(UTC)
        bodies = []
        for n in range(args.reports):
            device_id, key = devices[n % len(devices)]
            report = telemetry_report(
                device_id=device_id, sequence=n + 1, period_start=now - timedelta(hours=1),
                period_end=now, release_id=None, device_class="bench", rng=rng, scale=40.0,
                latencies={"chat_ttft_seconds": list(rng.lognormal(math.log(0.3), 0.5, 50))},
                requests={"chat": 50},
            )  # fmt: skip
            bodies.append((device_id, key, report.model_dump_json().encode()))
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        cursor = iter(range(len(bodies)))

        def client() -> None:
            with httpx.Client(base_url=base, timeout=60) as http:
                while True:
                    with lock:
                        index = next(cursor, None)
                    if index is None:
                        return
                    device_id, key, body = bodies[index]
                    auth = sign_device_request(
                        key, device_id, "POST", paths.DEVICE_TELEMETRY, body, time.time()
                    )
                    started = time.perf_counter()
                    r = http.post(
                        paths.DEVICE_TELEMETRY,
                        content=body,
                        headers={"Authorization": auth, "Content-Type": "application/json"},
                    )
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:120]}")

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    settings = ControlPlaneSettings(data_dir=data, database_url=url)
    db = Database.from_url(settings.resolved_database_url)
    service = TelemetryService(db, settings.telemetry_limits)
    pending = service.summary().reports_pending
    started = time.perf_counter()
    folded = 0
    while (n := service.aggregate_pending(datetime.now(UTC))) > 0:
        folded += n
    fold_wall = time.perf_counter() - started
    summary = service.summary()
    db.dispose()
    result = {
        "devices": args.devices,
        "clients": args.clients,
        "reports": args.reports,
        "report_bytes": len(bodies[0][2]),
        "wall_s": round(wall, 2),
        "reports_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "errors": len(errors),
        "error_samples": errors[:3],
        "stored": summary.reports_stored,
        "aggregate": {
            "pending_after_ingest": pending,
            "folded_in_process": folded,
            "wall_s": round(fold_wall, 2),
            "reports_per_s": round(folded / fold_wall, 1) if folded else None,
            "rows": summary.aggregate_rows,
        },
    }
    log(f"{database}: {result['reports_per_s']} reports/s, p95 {result['p95_ms']} ms")
    return result


def postgres_url() -> tuple[str, str] | None:
    try:
        import psycopg
    except ImportError:
        return None
    name = f"outpost_bench_tel_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        log(f"PostgreSQL unavailable ({e}); skipping it")
        return None
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_postgres(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- accuracy ------------------------------------------------------------------------


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    policy = resolve_policy(None, None)
    mechanism = OpenDPDiscreteLaplace()
    plans = plan_release(policy, mechanism)
    count_scale = plans["requests_by_feature"].scale
    ttft_scale = plans["chat_ttft_seconds"].scale
    variance_count = noise_variance("discrete_laplace", count_scale)
    variance_ttft = noise_variance("discrete_laplace", ttft_scale)
    edges = LATENCY_BUCKETS_SECONDS
    buckets = len(edges) + 1
    rng = np.random.default_rng(11)
    devices = 1000
    mu, sigma = math.log(0.3), 0.5
    population = np.bincount(
        np.searchsorted(edges, rng.lognormal(mu, sigma, 2_000_000), side="left"),
        minlength=buckets,
    )
    true_p95 = interpolated_quantile(list(population.astype(float)), edges, 0.95)
    count_errors, count_covered, widths = [], 0, []
    p95 = {1: {"errors": [], "covered": 0, "none": 0}, 24: {"errors": [], "covered": 0, "none": 0}}
    started = time.perf_counter()
    for run in range(args.runs):
        true = rng.poisson(args.requests, devices)
        released = mechanism.release([int(t) for t in true], count_scale)  # one per device
        estimate = estimate_sum(NoisyValue(float(v), variance_count) for v in released)
        count_errors.append((estimate.estimate - true.sum()) / true.sum())
        count_covered += estimate.covers(float(true.sum()))
        widths.append((estimate.high - estimate.low) / true.sum())
        if run >= args.p95_runs:
            continue
        for reports in (1, 24):
            exact = np.bincount(
                np.searchsorted(
                    edges, rng.lognormal(mu, sigma, devices * reports * args.requests), side="left"
                ),
                minlength=buckets,
            )
            # every device's every report noises each bucket once (one vector per call)
            draws = mechanism.release([0] * (buckets * devices * reports), ttft_scale)
            noise = np.asarray(draws, dtype=float).reshape(-1, buckets).sum(axis=0)
            q = estimate_quantile(
                list(exact + noise),
                [variance_ttft * devices * reports] * buckets,
                edges,
                0.95,
                rng,
                devices=devices,
            )
            entry = p95[reports]
            if q.value is None or q.low is None or q.high is None:
                entry["none"] += 1
                continue
            entry["errors"].append((q.value - true_p95) / true_p95)
            entry["covered"] += q.low <= true_p95 <= q.high
    wall = time.perf_counter() - started

    def summary(errors: list[float]) -> dict[str, float]:
        a = np.abs(np.asarray(errors))
        return {
            "median_abs_rel_error": round(float(np.median(a)), 4) if a.size else float("nan"),
            "p95_abs_rel_error": round(float(np.percentile(a, 95)), 4) if a.size else float("nan"),
            "mean_rel_error": round(float(np.mean(errors)), 4) if errors else float("nan"),
        }

    result = {
        "devices": devices,
        "policy": {
            "epsilon_per_report": policy.epsilon_per_report,
            "fields": len(plans),
            "requests_by_feature_scale": count_scale,
            "chat_ttft_scale": ttft_scale,
            "epsilon_per_field": round(plans["requests_by_feature"].epsilon, 5),
        },
        "fleet_chat_requests": {
            "true_mean": args.requests * devices,
            "runs": args.runs,
            **summary(count_errors),
            "interval_coverage": round(count_covered / args.runs, 3),
            "median_interval_width_rel": round(float(np.median(widths)), 4),
        },
        "fleet_p95_ttft": {
            "true_p95_s": round(true_p95, 4),
            "requests_per_device_per_report": args.requests,
            "runs": min(args.runs, args.p95_runs),
            **{
                f"{reports}_report{'s' if reports > 1 else ''}": {
                    **summary(entry["errors"]),
                    "interval_coverage": round(
                        entry["covered"] / max(1, len(entry["errors"]) + entry["none"]), 3
                    ),
                    "no_estimate": entry["none"],
                }
                for reports, entry in p95.items()
            },
        },
        "wall_s": round(wall, 1),
    }
    log(f"accuracy: {json.dumps(result['fleet_chat_requests'])}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--p95-runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=40, help="chats per device per report")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.reports, args.runs, args.p95_runs = 10, 200, 20, 4
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="outpost-bench-telemetry-") as tmp:
        work = Path(tmp)
        results["sqlite"] = ingest("sqlite", None, args, work)
        pg = None if args.no_postgres else postgres_url()
        if pg is None:
            results["postgresql"] = "skipped"
        else:
            try:
                results["postgresql"] = ingest("postgresql", pg[1], args, work)
            finally:
                drop_postgres(pg[0])
    sqlite_rate = results["sqlite"]["reports_per_s"]
    if isinstance(results["postgresql"], dict):
        results["postgresql_vs_sqlite"] = round(
            results["postgresql"]["reports_per_s"] / sqlite_rate, 2
        )
    document = {
        "benchmark": "telemetry_ingest",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/telemetry_ingest.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "ingest": results,
        "accuracy": accuracy(args),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
