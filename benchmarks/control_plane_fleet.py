"""The control plane under a simulated fleet: one node on SQLite beside two replicas on
PostgreSQL, same run, same devices, same machine load.

For each fleet size (``--devices 1000 10000``), two fresh control planes are initialized
(``sqlite_1_node``: one process on the default SQLite file; ``postgres_2_replicas``: two
processes on one PostgreSQL database, the load spread over both by the kernel, as the
replicas share one ``SO_REUSEPORT`` port), the same devices are seeded into each (real
Ed25519 keys; rows written as enrollment writes them, and a signed assignment of release
1.0.0 each, issued by the control plane's own director, so polls answer 200 with an
envelope as in a running fleet). Then, on each setup:

- ``fixed``: ``--rate`` polls/s offered in total, 20% jitter, for ``--duration`` s,
  through the simulator (``simulator.run_load``, two client processes), from
  max(1000, 2 x rate x duration) devices drawn at random from the fleet; p50/p99 poll
  latency, errors;
- ``saturation``: closed loop, ``--in-flight`` polls in flight (split over the two
  client processes), 1,000 random devices, for ``--duration`` s; polls/s where the
  server is the limit;
- ``idle``: no polls, before and after the rollout: the worker's own cost;
- ``rollout`` (sizes up to ``--rollout-max``): ``POST /api/v1/rollouts`` of 2.0.0 to
  the whole fleet, stages 1,10,50,100, worker tick ``--tick`` s, devices that commit at
  once; the fleet polls round after round (every device once per round,
  ``--in-flight`` at a time) until the rollout completes; create->100% wall time, the
  server's own event times, rounds, stage by stage.

Every phase records the server's CPU seconds (psutil on the server pids; the PostgreSQL
backends of the setup's database are counted apart) divided by the polls answered, which
does not depend on how loaded the machine was, and the client's CPU share of the box.
``inprocess``, on the SQLite database with the servers stopped: a poll's steps timed one
by one (signature, each transaction, a threadpool hop, the whole ASGI request) and the
rollout worker's passes (create, one judging pass, the cohort-default pass). ``profile``,
at the largest size: the SQLite server once more under a per-thread CPU profiler
(``cProfile`` with ``time.thread_time``) through a light fixed-load phase: where a
poll's server CPU goes, by component. ``--phases`` picks phases; ``--merge`` adds a run's
sizes and phases to the results file instead of replacing it.

Devices are seeded straight into the database: the poll path is what is measured, not
enrollment (``--enroll-sample`` real enrollments per setup are timed beside it).

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth); it
creates and drops its own database. ``--no-postgres`` measures the SQLite node alone.
Writes ``benchmarks/results/control_plane_fleet.json``; progress goes to stderr. See
``docs/benchmarks-fleet.md`` for the runs quoted there.

    .venv/bin/python benchmarks/control_plane_fleet.py [--devices 1000 10000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "control_plane_fleet.json"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
COHORT = "hw=rpi5"
STAGES = [1.0, 10.0, 50.0, 100.0]
RELEASE = "bench-assistant"
BAR = {"fleet": 100_000, "poll_interval_s": 300, "polls_per_s": 333, "p99_ms": 100}
SEED_CHUNK = 5000
PHASES = ("load", "profile", "rollout", "inprocess")
# The closed loop polls with at most this many devices, drawn at random from the fleet (it
# queues every device it runs, and each one queued at the deadline still polls once). The
# fixed rate draws max(1000, 2 x rate x duration): over a phase each polls about once or
# twice, as in a fleet that polls every N / rate seconds, and the client does not carry
# 100,000 idle tasks and their garbage-collector pauses.
SATURATION_DEVICES = 1000


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def log(message: str) -> None:
    print(f"[fleet-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- one control-plane process (this script re-run as a child) --------------------------


def serve_child(argv: Sequence[str]) -> int:
    """``outpost-cp serve`` as it is (migrate, check, ``create_app``, uvicorn), except
    that it listens on a shared ``SO_REUSEPORT`` port (the kernel spreads connections
    over the replicas) and on a port of its own, and can run under a CPU profiler."""
    parser = argparse.ArgumentParser(prog="control_plane_fleet.py --serve-child")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--shared-port", type=int, required=True)
    parser.add_argument("--own-port", type=int, required=True)
    parser.add_argument("--cprofile", type=Path, help="write merged per-thread CPU stats here")
    args = parser.parse_args(argv)

    import uvicorn

    from control_plane.app import create_app
    from control_plane.repository.metadata_store import is_initialized
    from control_plane.settings import ControlPlaneSettings
    from control_plane.storage.database import Database, migrate

    settings = ControlPlaneSettings(
        data_dir=args.data_dir, database_url=args.database_url, log_level="warning"
    )
    db = Database.from_url(settings.resolved_database_url)
    try:
        migrate(db.engine)
        with db.transaction() as session:
            if not is_initialized(session):
                raise SystemExit("the database holds no repository")
    finally:
        db.dispose()
    sockets = []
    for port, shared in ((args.shared_port, True), (args.own_port, False)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    if args.cprofile is None:
        server.run(sockets=sockets)
        return 0
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with a handler of
    # our own in place that returns, and the profile below gets written.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    with _thread_cpu_profile(args.cprofile):
        server.run(sockets=sockets)
    return 0


@contextmanager
def _thread_cpu_profile(out: Path) -> Iterator[None]:
    """cProfile in the threads that serve requests (the event loop and the threadpool; not
    the rollout worker's), timed by each thread's own CPU clock so that waits do not
    count; merged into one pstats file at the end."""
    import cProfile
    import pstats

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(_frame: Any, _event: str, _arg: Any) -> None:
        if threading.current_thread().name.startswith("worker-"):
            sys.setprofile(None)  # the rollout worker: measured apart, by the idle phases
            return
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(start_in_thread)
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(main)
        with lock:
            for profile in profiles:
                with suppress(TypeError, ValueError):  # a thread that never ran Python code
                    stats.add(profile)
        stats.dump_stats(str(out))


# --- a control plane under test ----------------------------------------------------------


class Replica:
    def __init__(
        self,
        name: str,
        setup: Setup,
        *,
        shared_port: int,
        tick: float,
        cprofile: Path | None = None,
    ) -> None:
        self.name = name
        self.own_port = free_port()
        self.url = f"http://127.0.0.1:{self.own_port}"
        self.log_path = setup.work / f"{name}.log"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-child",
            "--data-dir",
            str(setup.data_dir),
            "--shared-port",
            str(shared_port),
            "--own-port",
            str(self.own_port),
        ]
        if setup.database_url is not None:
            command += ["--database-url", setup.database_url]
        if cprofile is not None:
            command += ["--cprofile", str(cprofile)]
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            OUTPOST_CP_ROLLOUT_TICK_SECONDS=str(tick),
            OUTPOST_CP_WORKERS_ENABLED="true",
        )
        env.pop("OUTPOST_CP_TEST_PAUSE_AT", None)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.ps = psutil.Process(self.process.pid)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"replica {self.name} exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"replica {self.name} did not answer /healthz in {timeout} s")

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Setup:
    """One initialized control plane: its data dir, database, and the replicas serving it."""

    name: str
    work: Path
    database_url: str | None  # None: SQLite in the data dir
    pg_database: str | None
    replicas_wanted: int
    admin_token: str = ""
    root: bytes = b""
    releases: dict[str, str] = field(default_factory=dict)  # version -> release id
    shared_port: int = 0
    replicas: list[Replica] = field(default_factory=list)
    devices: list[Any] = field(default_factory=list)  # SimDevice

    @property
    def data_dir(self) -> Path:
        return self.work / "cp"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.shared_port}"

    def settings(self) -> Any:
        from control_plane.settings import ControlPlaneSettings

        return ControlPlaneSettings(data_dir=self.data_dir, database_url=self.database_url)

    def init(self) -> None:
        from control_plane.ops.initialization import initialize

        result = initialize(self.settings(), datetime.now(UTC))
        self.admin_token = result.admin_token
        self.root = Path(result.root_path).read_bytes()

    def start(self, tick: float, cprofile: Path | None = None) -> None:
        self.shared_port = free_port()
        self.replicas = [
            Replica(
                f"{self.name}-{i}",
                self,
                shared_port=self.shared_port,
                tick=tick,
                cprofile=cprofile,
            )
            for i in range(self.replicas_wanted)
        ]
        for replica in self.replicas:
            replica.wait_ready()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.replicas = []

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = httpx.request(
            method,
            f"{self.replicas[0].url}{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=120,
            **kwargs,
        )
        if not r.is_success:
            raise SystemExit(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json()

    def publish(self, version: str, artifact: bytes) -> str:
        uploaded = self.api(
            "POST",
            "/api/v1/artifacts",
            params={"name": f"tiny-chat-{version}", "kind": "llm", "format": "gguf"},
            content=artifact,
        )
        release = self.api(
            "POST",
            "/api/v1/releases",
            json={
                "name": RELEASE,
                "version": version,
                "artifacts": [uploaded["id"]],
                "config": {},
            },
        )
        self.releases[version] = str(release["id"])
        return self.releases[version]

    def postgres_backends(self) -> tuple[list[int], int]:
        """The backends serving this setup's database now, and the sessions it has had."""
        if self.pg_database is None:
            return [], 0
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.pg_database,)
            ).fetchall()
            sessions = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.pg_database,)
            ).fetchone()
        return [int(pid) for (pid,) in rows], int(sessions[0]) if sessions else 0


class CpuMeter:
    """Server CPU (replica processes; PostgreSQL backends apart) and client CPU (this
    process and its finished children) between ``start`` and ``stop``."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def _postgres(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        pids, self.sessions = self.setup.postgres_backends()
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                seen[pid] = float(t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return seen

    @staticmethod
    def _client() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.server0 = [r.cpu_seconds() for r in self.setup.replicas]
        self.pg0 = self._postgres()
        self.sessions0 = self.sessions
        self.client0 = self._client()
        self.load0 = os.getloadavg()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        server = [
            r.cpu_seconds() - s for r, s in zip(self.setup.replicas, self.server0, strict=True)
        ]
        pg_now = self._postgres()
        pg = sum(v - self.pg0.get(pid, 0.0) for pid, v in pg_now.items())
        client = self._client() - self.client0
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 2),
            "server_cpu_s": round(sum(server), 3),
            "server_cpu_s_by_replica": [round(s, 3) for s in server],
            # backends that ended within the phase are not counted: see sessions_opened
            "postgres_cpu_s": round(pg, 3) if self.setup.pg_database else None,
            "postgres_sessions_opened": self.sessions - self.sessions0
            if self.setup.pg_database
            else None,
            "client_cpu_s": round(client, 3),
            "client_share_of_box": round(client / (wall * cores), 3),
            "server_share_of_box": round(sum(server) / (wall * cores), 3),
            "load_average_start": [round(v, 2) for v in self.load0],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        }


# --- the fleet ------------------------------------------------------------------------------


def tiny_gguf(work: Path, seed: int) -> bytes:
    """A real, small GGUF file (the artifact of each benchmark release)."""
    import gguf
    import numpy as np

    path = work / f"tiny-{seed}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-{seed}")
    writer.add_context_length(256)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_tensor(
        "token_embd.weight", np.random.default_rng(seed).random((64 + seed,), dtype=np.float32)
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@dataclass(frozen=True)
class Identity:
    index: int
    device_id: str
    key: Any  # Ed25519KeyPair


def make_identities(start: int, stop: int) -> list[Identity]:
    from control_plane.access.tokens import new_id
    from protocol import generate_key_pair

    return [Identity(i, new_id("dev"), generate_key_pair()) for i in range(start, stop)]


def seed(setup: Setup, identities: Sequence[Identity]) -> float:
    """Write the devices as enrollment writes them, plus one signed assignment of 1.0.0
    each (the director's own ``issue_many``), as if the fleet ran 1.0.0; seconds taken."""
    from sqlalchemy import insert

    from control_plane.services import ControlPlane
    from control_plane.storage.models import Device, Release
    from simulator import uniform

    started = time.perf_counter()
    profile = uniform([COHORT])(0)
    hardware = profile.hardware.model_dump(mode="json")
    now = datetime.now(UTC)
    cp = ControlPlane.build(setup.settings())
    try:
        v1 = setup.releases["1.0.0"]
        for chunk_start in range(0, len(identities), SEED_CHUNK):
            chunk = identities[chunk_start : chunk_start + SEED_CHUNK]
            with cp.db.transaction() as session:
                session.execute(
                    insert(Device),
                    [
                        {
                            "id": ident.device_id,
                            "name": f"sim-{ident.index:06d}",
                            "public_key_hex": ident.key.public_hex,
                            "hardware": hardware,
                            "tags": [COHORT],
                            "enrolled_at": now,
                            "last_seen_at": now,
                            "installed_release_id": v1,
                            "installed_assignment_version": 1,
                            "enrollment_token_id": None,
                        }
                        for ident in chunk
                    ],
                )
                release = session.get(Release, v1)
                assert release is not None
                cp.director.issue_many(
                    session,
                    [(ident.device_id, release) for ident in chunk],
                    issued_by="benchmark:seed",
                    now=now,
                )
        # the bulk load's write-ahead log is checkpointed now, not in the first phase
        with cp.db.engine.connect() as connection:
            if cp.db.dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                connection.exec_driver_sql("CHECKPOINT")
                connection.exec_driver_sql("ANALYZE")
            connection.commit()
    finally:
        cp.close()
    return time.perf_counter() - started


def sim_devices(setup: Setup, identities: Sequence[Identity]) -> list[Any]:
    from simulator import Always, SimDevice, uniform
    from simulator.device import Serving

    profile = uniform([COHORT])
    behaviour = Always()
    v1 = setup.releases["1.0.0"]
    return [
        SimDevice(
            ident.index,
            profile(ident.index),
            behaviour(ident.index),
            ident.key,
            device_id=ident.device_id,
            serving=Serving(1, v1),
            highest_accepted=1,
        )
        for ident in identities
    ]


def enroll_sample(setup: Setup, count: int) -> dict[str, Any]:
    """``count`` real enrollments (an enrollment token each, then the enrollment) through
    the simulator, timed; these devices are not part of the measured fleet."""
    from protocol import generate_key_pair
    from simulator import Always, LoadPlan, SimDevice, run_load, uniform

    profile = uniform(["bench=enroll-sample"])
    devices = [
        SimDevice(1_000_000 + i, profile(i), Always()(i), generate_key_pair()) for i in range(count)
    ]
    plan = LoadPlan(
        server=setup.url,
        operator_token=setup.admin_token,
        poll_interval=3600,
        duration=0.1,
        concurrency=16,
        root=setup.root,
    )
    started = time.perf_counter()
    result = run_load(devices, plan, behaviour=Always(), progress=_Quiet())
    seconds = time.perf_counter() - started
    enroll = result.enrollment_latency.get("enroll")
    return {
        "devices": count,
        "enrolled": result.enrolled,
        "errors": result.errors,
        "enrollments_per_s": round(result.enrolled / seconds, 1),
        "enroll_p50_ms": None if enroll is None else round(enroll.p50_ms, 1),
        "enroll_p99_ms": None if enroll is None else round(enroll.p99_ms, 1),
    }


class _Quiet:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


# --- phases ---------------------------------------------------------------------------------


def _latency(result: Any, kind: str) -> dict[str, float] | None:
    summary = result.latency.get(kind)
    if summary is None:
        return None
    return {
        "count": summary.count,
        "p50_ms": round(summary.p50_ms, 2),
        "p90_ms": round(summary.p90_ms, 2),
        "p99_ms": round(summary.p99_ms, 2),
        "max_ms": round(summary.max_ms, 2),
    }


def load_phase(
    setup: Setup,
    *,
    poll_interval: float,
    jitter: float,
    duration: float,
    processes: int,
    concurrency: int,
    sample: int | None = None,
) -> dict[str, Any]:
    """``sample``: poll with that many devices drawn at random (a closed loop queues every
    device it runs; each one queued at the deadline still polls once)."""
    import random

    from simulator import Always, LoadPlan, run_load

    devices = setup.devices
    if sample is not None and sample < len(devices):
        devices = random.Random(11).sample(devices, sample)

    plan = LoadPlan(
        server=setup.url,
        poll_interval=poll_interval,
        jitter=jitter,
        duration=duration,
        processes=processes,
        concurrency=concurrency,
        root=setup.root,
        progress_every=max(5.0, duration),
    )
    meter = CpuMeter(setup)
    meter.start()
    result = run_load(devices, plan, behaviour=Always(), progress=sys.stderr)
    cpu = meter.stop()
    polls = result.polls
    out: dict[str, Any] = {
        "devices": len(setup.devices),
        "devices_polling": len(devices),
        "poll_interval_s": round(poll_interval, 3),
        "in_flight_max": processes * concurrency,
        "duration_s": round(result.duration_s, 2),
        "polls": polls,
        "polls_per_s": round(result.polls_per_second, 1),
        "errors": result.errors,
        "error_samples": list(result.error_samples[:3]),
        "outcomes": result.outcomes,
        "poll_latency": _latency(result, "poll"),
        "cpu": cpu,
        "server_cpu_ms_per_poll": round(cpu["server_cpu_s"] / polls * 1000, 3) if polls else None,
    }
    if cpu["postgres_cpu_s"] is not None and polls:
        out["postgres_cpu_ms_per_poll"] = round(cpu["postgres_cpu_s"] / polls * 1000, 3)
    return out


class _RoundRobin:
    """Each request to the next replica in turn (a load balancer without affinity)."""

    def __init__(self, clients: Sequence[httpx.AsyncClient]) -> None:
        self.clients = list(clients)
        self.turn = 0

    def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        client = self.clients[self.turn % len(self.clients)]
        self.turn += 1
        return client.request(method, url, content=content, headers=headers)


async def _rollout_rounds(
    setup: Setup, rollout_id: str, in_flight: int, timeout: float
) -> dict[str, Any]:
    """Every device polls (and reports) once per round, ``in_flight`` at a time, until
    the rollout is no longer running; a watcher notes when each stage starts."""
    from simulator import device_round, director_from_root
    from simulator.transport import run_async

    director = director_from_root(setup.root)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    clients = [httpx.AsyncClient(base_url=r.url, timeout=60, limits=limits) for r in setup.replicas]
    admin = httpx.AsyncClient(
        base_url=setup.replicas[0].url,
        timeout=60,
        headers={"Authorization": f"Bearer {setup.admin_token}"},
    )
    http = _RoundRobin(clients)
    gate = asyncio.Semaphore(in_flight)
    latencies: dict[str, list[float]] = {}
    started = time.perf_counter()
    stage_seen: dict[int, float] = {}
    finished: dict[str, Any] = {}
    errors: list[str] = []
    rounds: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            r = await admin.get(f"/api/v1/rollouts/{rollout_id}")
            shown = r.json()
            stage_seen.setdefault(int(shown["stage"]), time.perf_counter() - started)
            if shown["state"] != "running":
                finished.update(shown, seen_after_s=time.perf_counter() - started)
                return
            await asyncio.sleep(0.25)

    async def one(device: Any, round_: int) -> Any:
        async with gate:
            if finished:  # the rollout is over: the rest of this round is not needed
                return None
            exchange = device_round(
                device, round_=round_, now=datetime.now(UTC), director=director, operator_token=None
            )
            return await run_async(http, exchange, latencies)

    watcher = asyncio.create_task(watch())
    round_ = 0
    try:
        while not finished and time.perf_counter() - started < timeout:
            t0 = time.perf_counter()
            ran = await asyncio.gather(*(one(d, round_) for d in setup.devices))
            outcomes = [o for o in ran if o is not None]
            for outcome in outcomes:
                errors.extend(outcome.errors[: max(0, 5 - len(errors))])
            rounds.append(
                {
                    "round": round_,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "new_assignments": sum(
                        1 for o in outcomes if o.outcome is not None and o.outcome == "installing"
                    ),
                    "reports": sum(len(o.reports) for o in outcomes),
                }
            )
            round_ += 1
    finally:
        watcher.cancel()
        for client in (*clients, admin):
            await client.aclose()
    wall = finished.get("seen_after_s")
    return {
        "state": finished.get("state", "running (timed out)"),
        "wall_s": None if wall is None else round(wall, 2),
        "rounds": round_,
        "round_details": rounds,
        "stage_seen_at_s": {str(k): round(v, 2) for k, v in sorted(stage_seen.items())},
        "errors": errors,
        "requests": {k: len(v) for k, v in latencies.items()},
        "finished": finished,
    }


def rollout_phase(setup: Setup, *, in_flight: int, tick: float, timeout: float) -> dict[str, Any]:
    meter = CpuMeter(setup)
    meter.start()
    t0 = time.perf_counter()
    created = setup.api(
        "POST",
        "/api/v1/rollouts",
        json={
            "release": f"{RELEASE}@2.0.0",
            "cohort": COHORT,
            "stages": STAGES,
            "max_failure_rate": 0.05,
            "min_sample": 10,
            "stage_timeout_seconds": 1800,
        },
    )
    create_s = time.perf_counter() - t0
    ran = asyncio.run(_rollout_rounds(setup, str(created["id"]), in_flight, timeout))
    cpu = meter.stop()
    shown = ran.pop("finished")
    events = shown.get("events", [])
    server_s = None
    if events and events[-1]["kind"] == "completed":
        first = datetime.fromisoformat(events[0]["at"])
        last = datetime.fromisoformat(events[-1]["at"])
        server_s = round((last - first).total_seconds() + create_s, 2)
    polls = ran["requests"].get("poll", 0)
    wall = ran["wall_s"]
    fleet_round_s = [r["seconds"] for r in ran["round_details"]]
    return {
        "devices": len(setup.devices),
        "stages": STAGES,
        "worker_tick_s": tick,
        "in_flight": in_flight,
        "create_request_s": round(create_s, 3),
        "create_to_100pct_s": wall,
        "create_to_100pct_server_events_s": server_s,
        "committed": shown.get("committed"),
        "moved": shown.get("moved"),
        "events": [(e["kind"], e["stage"], e["at"]) for e in events],
        "median_round_s": sorted(fleet_round_s)[len(fleet_round_s) // 2] if fleet_round_s else None,
        "create_to_100pct_in_fleet_rounds": round(
            wall / (sum(fleet_round_s) / len(fleet_round_s)), 2
        )
        if wall and fleet_round_s
        else None,
        **ran,
        "cpu": cpu,
        "server_cpu_ms_per_request": round(
            cpu["server_cpu_s"] / max(1, sum(ran["requests"].values())) * 1000, 3
        ),
        "polls": polls,
    }


def worker_passes(setup: Setup) -> dict[str, Any]:
    """The rollout worker's passes timed in process on the setup's database (servers
    stopped): create a rollout (stage 1 assigned); one judging pass of it while nobody
    has reported (what every tick costs during a stage); then, with no rollout running and
    a cohort default in place (left by the completed rollout, or written here as one
    would be), the cohort-default pass every tick makes once a rollout has completed."""
    from sqlalchemy import select

    from control_plane.rollouts.core import Action
    from control_plane.rollouts.service import RolloutRequest
    from control_plane.services import ControlPlane
    from control_plane.storage.models import CohortDefault

    cp = ControlPlane.build(setup.settings())
    try:
        now = datetime.now(UTC)
        request = RolloutRequest.of(
            release=f"{RELEASE}@3.0.0",
            cohort=COHORT,
            stages=STAGES,
            max_failure_rate=0.05,
            min_sample=10,
            stage_timeout_seconds=1800,
        )
        t0 = time.perf_counter()
        rollout = cp.rollouts.create(request, actor="benchmark", now=now)
        create_s = time.perf_counter() - t0
        passes = []
        step = None
        for i in range(3):
            t0 = time.perf_counter()
            step = cp.rollouts.advance(rollout.id, now + timedelta(seconds=i + 1))
            passes.append(time.perf_counter() - t0)
        cp.rollouts.act(rollout.id, Action.ABORT, actor="benchmark", now=now, roll_back=False)
        with cp.db.transaction() as session:
            default_written = session.scalars(select(CohortDefault.id)).first() is None
            if default_written:  # as a completed rollout of 1.0.0 would have left it
                session.add(
                    CohortDefault(
                        cohort=COHORT,
                        release_id=setup.releases["1.0.0"],
                        rollout_id=rollout.id,
                        set_at=now - timedelta(seconds=1),  # before stage 1's assignments
                    )
                )
        converge = []
        moved = 0
        for _ in range(3):
            t0 = time.perf_counter()
            moved += cp.rollouts.converge_defaults(now)
            converge.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cp.rollouts.active_ids()
        idle_s = time.perf_counter() - t0
    finally:
        cp.close()
    return {
        "devices": len(setup.devices),
        "create_ms": round(create_s * 1000, 1),
        "judging_pass_ms": round(sorted(passes)[1] * 1000, 1),
        "judging_pass_step": None if step is None else step.value,
        "converge_defaults_ms": round(sorted(converge)[1] * 1000, 1),
        "converge_defaults_moved": moved,
        "cohort_default_written_for_the_measure": default_written,
        "active_ids_ms": round(idle_s * 1000, 2),
    }


# --- the profile ------------------------------------------------------------------------------

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("ed25519 signature (cryptography)", ("cryptography", "_rust", "verify' of", "sign' of")),
    ("sqlite3 (C: execute, commit incl. fsync)", ("sqlite3",)),
    ("psycopg / PostgreSQL client", ("psycopg",)),
    ("SQLAlchemy ORM/Core", ("sqlalchemy",)),
    ("pydantic", ("pydantic",)),
    ("FastAPI / Starlette routing, deps, responses", ("fastapi", "starlette")),
    ("anyio threadpool hops", ("anyio", "threading.py", "queue.py", "concurrent")),
    ("uvicorn / httptools / uvloop (HTTP)", ("uvicorn", "httptools", "uvloop", "h11")),
    ("asyncio", ("asyncio",)),
    ("Outpost code (control_plane, protocol)", ("control_plane", "protocol")),
    ("json / hashlib / datetime / re (stdlib)", ("json", "hashlib", "datetime", "re.py", "_sre")),
]
KEY_FUNCTIONS = {
    "authenticate_device (header, body, key lookup, verify)": (
        "dependencies.py",
        "authenticate_device",
    ),
    "  public key lookup (one transaction)": ("dependencies.py", "lookup"),
    "  verify_device_request (Ed25519 verify)": ("device_auth.py", "verify_device_request"),
    "Director.current (newest assignment, one transaction)": ("director/service.py", "current"),
    "mark_seen (one write transaction, commit)": ("fleet/devices.py", "record_seen"),
    "  the threadpool work: Director.current + record_seen": ("device_routes.py", "work"),
}


def _category(key: tuple[str, int, str]) -> str:
    filename, _line, name = key
    where = f"{filename} {name}"
    for label, needles in CATEGORIES:
        if any(n in where for n in needles):
            return label
    if "site-packages" in filename:
        return "other libraries (sniffio, typing_extensions, ...)"
    if "/lib/python3" in filename:
        return "Python stdlib (contextlib, functools, enum, typing, ...)"
    return "other"


def read_profile(path: Path, polls: int) -> dict[str, Any]:
    """Self CPU time by component; a builtin (``isinstance``, ``dict.get``...) is charged
    to the components of its callers, in proportion to the time each caller spent in it."""
    import pstats

    stats = pstats.Stats(str(path))
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values())
    by_category: dict[str, float] = {}
    for key, (_cc, _nc, tt, _ct, callers) in table.items():
        label = _category(key)
        if label == "other" and key[0] == "~" and callers:  # a builtin
            spent = sum(c[2] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                owner = _category(caller)
                by_category[owner] = by_category.get(owner, 0.0) + tt * c[2] / spent
            continue
        by_category[label] = by_category.get(label, 0.0) + tt
    top = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    key_cum: dict[str, float] = {}
    for label, (file_end, name) in KEY_FUNCTIONS.items():
        key_cum[label] = sum(
            row[3]
            for (filename, _line, fname), row in table.items()
            if filename.endswith(file_end) and fname == name
        )
    per = max(1, polls)
    return {
        "profiled_cpu_s": round(total, 3),
        "polls": polls,
        "profiled_cpu_ms_per_poll": round(total / per * 1000, 3),
        "by_component": [
            {
                "component": label,
                "share": round(seconds / total, 3),
                "ms_per_poll_under_profiler": round(seconds / per * 1000, 3),
            }
            for label, seconds in sorted(by_category.items(), key=lambda kv: -kv[1])
        ],
        "key_functions_cumulative": [
            {
                "function": label,
                "share": round(seconds / total, 3),
                "ms_per_poll_under_profiler": round(seconds / per * 1000, 3),
            }
            for label, seconds in key_cum.items()
        ],
        "top_functions_self_time": [
            {
                "function": f"{Path(filename).name}:{line} {name}" if filename != "~" else name,
                "calls_or_resumes": nc,
                "share": round(tt / total, 3),
            }
            for (filename, line, name), (_cc, nc, tt, _ct, _callers) in top
        ],
    }


# --- the run ------------------------------------------------------------------------------


def create_pg_database() -> str:
    import psycopg

    name = f"outpost_fleet_bench_{secrets.token_hex(5)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3):
            return None
    except Exception as e:  # any failure means: measure without it
        return f"{type(e).__name__}: {e}"


def run_size(n: int, args: argparse.Namespace, work: Path, *, profile_here: bool) -> dict[str, Any]:
    log(f"=== {n} devices ===")
    setups = [Setup("sqlite_1_node", work / f"{n}-sqlite", None, None, 1)]
    if args.postgres:
        name = create_pg_database()
        setups.append(
            Setup(
                "postgres_2_replicas",
                work / f"{n}-pg",
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
                name,
                2,
            )
        )
    out: dict[str, Any] = {"devices": n, "setups": {}}
    try:
        t0 = time.perf_counter()
        identities = make_identities(0, n)
        out["key_generation_s"] = round(time.perf_counter() - t0, 2)
        artifacts = {v: tiny_gguf(work, seed) for seed, v in enumerate(("1.0.0", "2.0.0", "3.0.0"))}
        for setup in setups:
            setup.work.mkdir(parents=True)
            setup.init()
            setup.start(args.tick)
            for version, blob in artifacts.items():
                setup.publish(version, blob)
            log(f"{setup.name}: seeding {n} devices and their 1.0.0 assignments")
            seconds = seed(setup, identities)
            setup.devices = sim_devices(setup, identities)
            out["setups"][setup.name] = {
                "replicas": setup.replicas_wanted,
                "database": "postgresql" if setup.database_url else "sqlite",
                "seed_s": round(seconds, 1),
            }
        for setup in setups:
            if args.enroll_sample and "load" in args.phases:
                log(f"{setup.name}: {args.enroll_sample} real enrollments")
                out["setups"][setup.name]["enrollment_sample"] = enroll_sample(
                    setup, args.enroll_sample
                )
        # the fixed load and saturation phases, setups interleaved
        for phase in ("fixed", "saturation") if "load" in args.phases else ():
            for setup in setups:
                if phase == "fixed":
                    polling = min(n, max(1000, round(args.rate * args.duration * 2)))
                    interval, jitter, per_process = polling / args.rate, 0.2, 256
                    log(f"{setup.name}: {n} devices, fixed {args.rate:g} polls/s offered")
                else:
                    interval, jitter, per_process = 0.001, 0.0, max(1, args.in_flight // 2)
                    log(f"{setup.name}: {n} devices, closed loop, {args.in_flight} in flight")
                out["setups"][setup.name][phase] = load_phase(
                    setup,
                    poll_interval=interval,
                    jitter=jitter,
                    duration=args.duration,
                    processes=2,
                    concurrency=per_process,
                    sample=polling if phase == "fixed" else SATURATION_DEVICES,
                )
                _say(setup.name, phase, out["setups"][setup.name][phase])
        if profile_here and "profile" in args.phases:
            setups[0].stop()
            out["profile"] = profile_phase(setups[0], n, args)
            setups[0].start(args.tick)
        for setup in setups:
            out["setups"][setup.name]["idle_before_rollout"] = idle_phase(setup, args.idle)
        if n <= args.rollout_max and "rollout" in args.phases:
            for setup in setups:
                if setup.name != "sqlite_1_node" and n > args.rollout_max_postgres:
                    out["setups"][setup.name]["rollout"] = {
                        "skipped": f"over --rollout-max-postgres {args.rollout_max_postgres}"
                    }
                    continue
                log(f"{setup.name}: rollout of 2.0.0 to {n} devices")
                ran = rollout_phase(
                    setup, in_flight=args.in_flight, tick=args.tick, timeout=args.rollout_timeout
                )
                out["setups"][setup.name]["rollout"] = ran
                log(
                    f"{setup.name}: rollout {ran['state']} in {ran['create_to_100pct_s']} s,"
                    f" {ran['rounds']} rounds"
                )
                after = "completed" if ran["state"] == "completed" else "still_running"
                out["setups"][setup.name][f"idle_after_rollout_{after}"] = idle_phase(
                    setup, args.idle
                )
        for setup in setups:
            setup.stop()
        if "inprocess" in args.phases:
            log("poll steps, in process (SQLite)")
            out["setups"]["sqlite_1_node"]["poll_breakdown"] = poll_breakdown(setups[0], 300)
            log("rollout worker passes, in process (SQLite)")
            out["setups"]["sqlite_1_node"]["worker_passes"] = worker_passes(setups[0])
    finally:
        for setup in setups:
            setup.stop()
            if setup.pg_database is not None:
                drop_pg_database(setup.pg_database)
    return out


def ratios(size: Mapping[str, Any]) -> dict[str, float | None] | None:
    """PostgreSQL with two replicas over SQLite with one node, same size, same run."""
    sqlite = size["setups"].get("sqlite_1_node", {})
    pg = size["setups"].get("postgres_2_replicas", {})
    if "saturation" not in pg or "saturation" not in sqlite:
        return None
    return {
        "saturation_polls_per_s": _ratio(
            pg["saturation"]["polls_per_s"], sqlite["saturation"]["polls_per_s"]
        ),
        "fixed_p50": _ratio(
            pg["fixed"]["poll_latency"]["p50_ms"], sqlite["fixed"]["poll_latency"]["p50_ms"]
        ),
        "fixed_p99": _ratio(
            pg["fixed"]["poll_latency"]["p99_ms"], sqlite["fixed"]["poll_latency"]["p99_ms"]
        ),
        "saturation_p99": _ratio(
            pg["saturation"]["poll_latency"]["p99_ms"],
            sqlite["saturation"]["poll_latency"]["p99_ms"],
        ),
        "server_cpu_per_poll_saturation": _ratio(
            pg["saturation"]["server_cpu_ms_per_poll"],
            sqlite["saturation"]["server_cpu_ms_per_poll"],
        ),
    }


def idle_phase(setup: Setup, seconds: float) -> dict[str, Any]:
    """No device polls: what the server spends on its own (the rollout worker's ticks)."""
    meter = CpuMeter(setup)
    meter.start()
    time.sleep(seconds)
    cpu = meter.stop()
    out = {
        "seconds": cpu["wall_s"],
        "server_cpu_cores": round(cpu["server_cpu_s"] / cpu["wall_s"], 3),
    }
    if cpu["postgres_cpu_s"] is not None:
        out["postgres_cpu_cores"] = round(cpu["postgres_cpu_s"] / cpu["wall_s"], 3)
    log(f"{setup.name}: idle, server uses {out['server_cpu_cores']:.0%} of a core")
    return out


def profile_phase(setup: Setup, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The SQLite server once more, under the per-thread CPU profiler, through a light
    fixed-load phase (the profiler costs the server several times its CPU per call, so
    shares are the figure here, and they over-weigh code that makes many small calls)."""
    stats = setup.work / "server.pstats"
    rate = args.rate / 5
    log(f"{setup.name}: profiling the server at {n} devices, {rate:g} polls/s offered")
    setup.start(args.tick, cprofile=stats)
    try:
        polling = min(n, max(1000, round(rate * args.duration * 2)))
        ran = load_phase(
            setup,
            poll_interval=polling / rate,
            jitter=0.2,
            duration=args.duration,
            processes=2,
            concurrency=256,
            sample=polling,
        )
    finally:
        setup.stop()
    profile = read_profile(stats, ran["polls"])
    profile["devices"] = n
    profile["setup"] = setup.name
    profile["offered_polls_per_s"] = rate
    profile["under_profiler"] = {
        "polls_per_s": ran["polls_per_s"],
        "poll_latency": ran["poll_latency"],
        "server_cpu_ms_per_poll": ran["server_cpu_ms_per_poll"],
    }
    return profile


def poll_breakdown(setup: Setup, samples: int) -> dict[str, Any]:
    """A poll's server-side steps timed one by one, in process, on the setup's database
    (servers stopped), for ``samples`` devices: CPU (process time) and wall per call.
    The ASGI row is the whole request through the app (FastAPI, dependencies, both
    threadpool hops, all three transactions) called directly, without an HTTP server,
    socket or client; what the live server spends beyond it per poll is uvicorn,
    httptools, uvloop, the sockets, and the rollout worker's ticks."""
    import random

    from starlette.concurrency import run_in_threadpool

    from control_plane.app import create_app
    from control_plane.fleet.devices import mark_seen, public_key_of
    from control_plane.services import ControlPlane
    from protocol import paths, sign_device_request
    from protocol.device_auth import DeviceAuthHeader, verify_device_request
    from protocol.keys import public_key_from_hex

    rng = random.Random(7)
    devices = rng.sample(setup.devices, min(samples, len(setup.devices)))
    cp = ControlPlane.build(setup.settings())
    results: dict[str, dict[str, float]] = {}

    def timed(name: str, step: Any) -> None:
        step(devices[0])  # warm
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for device in devices:
            step(device)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        results[name] = {
            "cpu_ms": round(cpu / len(devices) * 1000, 3),
            "wall_ms": round(wall / len(devices) * 1000, 3),
        }

    def header(device: Any) -> tuple[DeviceAuthHeader, Any]:
        value = sign_device_request(
            device.key, device.device_id, "GET", paths.DEVICE_ASSIGNMENT, b"", time.time()
        )
        return DeviceAuthHeader.parse(value), public_key_from_hex(device.key.public_hex)

    signed = {d.device_id: header(d) for d in devices}
    try:
        timed(
            "verify_device_request (Ed25519)",
            lambda d: verify_device_request(
                signed[d.device_id][0],
                signed[d.device_id][1],
                "GET",
                paths.DEVICE_ASSIGNMENT,
                b"",
                time.time(),
            ),
        )

        def lookup(d: Any) -> None:
            with cp.db.transaction() as session:
                public_key_of(session, d.device_id)

        def seen(d: Any) -> None:
            with cp.db.transaction() as session:
                mark_seen(session, d.device_id, datetime.now(UTC))

        timed("public key lookup (read transaction)", lookup)
        timed(
            "Director.current (read transaction)",
            lambda d: cp.director.current(d.device_id, datetime.now(UTC)),
        )
        timed("mark_seen (write transaction, commit)", seen)
        app = create_app(setup.settings().model_copy(update={"workers_enabled": False}))
        with asyncio.Runner(loop_factory=_uvloop()) as runner:
            authorizations: dict[str, list[str]] = {}  # one per call: each nonce is used once

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            def asgi_poll(d: Any) -> None:
                statuses: list[int] = []

                async def send(message: Mapping[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        statuses.append(int(message["status"]))

                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": "GET",
                    "scheme": "http",
                    "path": paths.DEVICE_ASSIGNMENT,
                    "raw_path": paths.DEVICE_ASSIGNMENT.encode(),
                    "query_string": b"",
                    "root_path": "",
                    "headers": [
                        (b"host", b"127.0.0.1"),
                        (b"authorization", authorizations[d.device_id].pop().encode()),
                    ],
                    "client": ("127.0.0.1", 50000),
                    "server": ("127.0.0.1", 8700),
                    "state": {},
                }
                runner.run(app(scope, receive, send))
                if statuses != [200]:
                    raise SystemExit(f"in-process poll answered {statuses}")

            for d in devices:
                authorizations[d.device_id] = [
                    sign_device_request(
                        d.key, d.device_id, "GET", paths.DEVICE_ASSIGNMENT, b"", time.time()
                    )
                    for _ in range(2)  # the warm-up call and the timed one
                ]
            timed("ASGI app, whole poll (FastAPI, both threadpool hops, the above)", asgi_poll)

            async def hop() -> None:
                await run_in_threadpool(lambda: None)

            timed(
                "  one threadpool hop (run_in_threadpool of a no-op)", lambda d: runner.run(hop())
            )
    finally:
        cp.close()
    return {"devices": len(setup.devices), "samples": len(devices), "steps": results}


def _merged(earlier: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """``now`` over ``earlier``, key by key down the nested objects: a phase measured now
    replaces that phase, the phases measured only before are kept."""
    out = dict(earlier)
    for key, value in now.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 3)


def _say(setup: str, phase: str, ran: Mapping[str, Any]) -> None:
    lat = ran["poll_latency"] or {}
    log(
        f"{setup} {phase}: {ran['polls_per_s']} polls/s, p50 {lat.get('p50_ms')} ms,"
        f" p99 {lat.get('p99_ms')} ms, errors {ran['errors']},"
        f" server {ran['server_cpu_ms_per_poll']} ms CPU/poll,"
        f" client {ran['cpu']['client_share_of_box']:.0%} of the box"
    )


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def growth(sizes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Poll latency, server CPU per poll and the worker's costs by fleet size, and the
    latency and CPU relative to the smallest size."""
    out: dict[str, Any] = {}
    for name in ("sqlite_1_node", "postgres_2_replicas"):
        rows = [s for s in sizes if _get(s, "setups", name, "fixed") is not None]
        if not rows:
            continue
        base = rows[0]["setups"][name]
        out[name] = [
            {
                "devices": row["devices"],
                "fixed_p50_ms": _get(ran, "fixed", "poll_latency", "p50_ms"),
                "fixed_p99_ms": _get(ran, "fixed", "poll_latency", "p99_ms"),
                "saturation_polls_per_s": _get(ran, "saturation", "polls_per_s"),
                "saturation_p99_ms": _get(ran, "saturation", "poll_latency", "p99_ms"),
                "server_cpu_ms_per_poll_fixed": _get(ran, "fixed", "server_cpu_ms_per_poll"),
                "server_cpu_ms_per_poll_saturation": _get(
                    ran, "saturation", "server_cpu_ms_per_poll"
                ),
                "fixed_p99_vs_smallest": _ratio(
                    _get(ran, "fixed", "poll_latency", "p99_ms"),
                    _get(base, "fixed", "poll_latency", "p99_ms"),
                ),
                "cpu_per_poll_vs_smallest": _ratio(
                    _get(ran, "saturation", "server_cpu_ms_per_poll"),
                    _get(base, "saturation", "server_cpu_ms_per_poll"),
                ),
                "rollout_create_to_100pct_s": _get(ran, "rollout", "create_to_100pct_s"),
                "idle_server_cores_after_rollout": _get(
                    ran, "idle_after_rollout", "server_cpu_cores"
                )
                or _get(ran, "idle_after_rollout_completed", "server_cpu_cores"),
                "worker_judging_pass_ms": _get(ran, "worker_passes", "judging_pass_ms"),
                "worker_converge_defaults_ms": _get(ran, "worker_passes", "converge_defaults_ms"),
            }
            for row in rows
            for ran in [row["setups"][name]]
        ]
    return out


def bar_check(sizes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The bar: one node answers 100k devices polling every 5 min (333 polls/s) at p99 <
    100 ms. From the largest size measured: the CPU it needs at 333 polls/s."""
    measured = [s for s in sizes if _get(s, "setups", "sqlite_1_node", "saturation")]
    if not measured:
        return {**BAR, "measured_at_devices": None}
    largest = measured[-1]["setups"]["sqlite_1_node"]
    cpu_ms = largest["saturation"]["server_cpu_ms_per_poll"]
    return {
        **BAR,
        "measured_at_devices": measured[-1]["devices"],
        "sqlite_server_cpu_ms_per_poll": cpu_ms,
        "cores_needed_at_333_polls_per_s": round(cpu_ms * BAR["polls_per_s"] / 1000, 2)
        if cpu_ms
        else None,
        "saturation_polls_per_s_on_this_box": largest["saturation"]["polls_per_s"],
        "polls_per_s_one_whole_core_would_answer": round(1000 / cpu_ms, 1) if cpu_ms else None,
        "fixed_rate_p99_ms": _get(largest, "fixed", "poll_latency", "p99_ms"),
    }


def main() -> int:
    if sys.argv[1:2] == ["--serve-child"]:
        return serve_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load phase")
    parser.add_argument("--rate", type=float, default=60.0, help="fixed offered polls/s")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle phases")
    parser.add_argument("--in-flight", type=int, default=16, help="closed-loop polls in flight")
    parser.add_argument("--tick", type=float, default=0.2, help="rollout worker tick, seconds")
    parser.add_argument("--rollout-max", type=int, default=1000, help="largest fleet rolled out")
    parser.add_argument(
        "--rollout-max-postgres", type=int, default=1000, help="largest fleet rolled out on PG"
    )
    parser.add_argument("--rollout-timeout", type=float, default=600.0)
    parser.add_argument("--enroll-sample", type=int, default=100)
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="load: fixed rate and closed loop; profile: the server under cProfile (largest"
        " size); rollout; inprocess: a poll's steps and the worker's passes, timed in process",
    )
    parser.add_argument("--quick", action="store_true", help="300 devices, 5 s phases")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other fleet sizes already in --out (a size measured now replaces its"
        " entry), e.g. to add a 100000-device run to a 1000/10000 one",
    )
    args = parser.parse_args()
    if args.quick:
        args.devices, args.duration, args.enroll_sample, args.idle = [300], 5.0, 20, 2.0
    sizes = sorted(set(args.devices))
    skipped = None
    if args.postgres:
        skipped = postgres_available()
        if skipped is not None:
            log(f"PostgreSQL unavailable, measuring SQLite alone: {skipped}")
            args.postgres = False
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "control_plane_fleet",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/control_plane_fleet.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
        },
        "settings": {
            "sizes": sizes,
            "phase_duration_s": args.duration,
            "fixed_rate_polls_per_s": args.rate,
            "closed_loop_in_flight": args.in_flight,
            "client_processes": 2,
            "rollout_worker_tick_s": args.tick,
            "rollout_stages": STAGES,
            "postgres": "used" if args.postgres else f"skipped ({skipped or '--no-postgres'})",
        },
        "sizes": [],
    }
    report["runs"] = [
        {
            "when": report["when"],
            "command": report["command"],
            "sizes": sizes,
            "phases": args.phases,
            "postgres": report["settings"]["postgres"],
            "load_average_start": report["machine"]["load_average_start"],
        }
    ]
    work = Path(tempfile.mkdtemp(prefix="cp-fleet-bench-"))
    try:
        for n in sizes:
            report["sizes"].append(run_size(n, args, work, profile_here=n == sizes[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text())
        by_size = {s["devices"]: s for s in earlier.get("sizes", [])}
        for size in report["sizes"]:
            by_size[size["devices"]] = _merged(by_size.get(size["devices"], {}), size)
        report["sizes"] = [by_size[k] for k in sorted(by_size)]
        before = earlier.get("runs") or [
            {k: earlier.get(k) for k in ("when", "command")}
            | {"load_average_start": _get(earlier, "machine", "load_average_start")}
            | {"load_average_end": _get(earlier, "machine", "load_average_end")}
        ]
        report["runs"] = [*before, *report["runs"]]
    for size in report["sizes"]:
        size["ratios_postgres_2_replicas_to_sqlite_1_node"] = ratios(size)
    report["growth"] = growth(report["sizes"])
    report["bar"] = bar_check(report["sizes"])
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report["runs"][-1]["load_average_end"] = report["machine"]["load_average_end"]
    report["total_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} ({report['total_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
