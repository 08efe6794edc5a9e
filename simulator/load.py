"""The concurrent driver: a fleet polling a real server at a rate, for a duration.

Each device is an asyncio task on one ``httpx.AsyncClient`` that polls every
``poll_interval`` seconds (each wait jittered by +-``jitter``), with its first poll spread
uniformly over the first interval. Devices that must enroll do so first, before the
timed phase. With ``processes > 1`` the devices are split over client processes that
start their timed phase together (one Python process saturates at about a thousand
requests per second), and their figures are merged.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx

from edge_agent.trust import DirectorTrust
from simulator import state
from simulator.behaviour import BehaviourFunction
from simulator.device import SimDevice
from simulator.errors import ServerError, SetupError
from simulator.exchange import (
    RoundOutcome,
    device_round,
    director_from_root,
    enrollment,
    root_call,
)
from simulator.transport import AsyncHttpClient, Latencies, run_async, send_async

MAX_ERROR_SAMPLES = 20
_SETUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class LoadPlan:
    """How the concurrent driver runs.

    ``concurrency``: the most requests in flight per client process (also its connection
    pool size). ``root``: the TUF root file to trust; None trusts the first one fetched.
    """

    server: str
    operator_token: str | None = None
    poll_interval: float = 5.0
    jitter: float = 0.2
    duration: float = 30.0
    processes: int = 1
    concurrency: int = 256
    root: bytes | None = None
    request_timeout: float = 30.0
    progress_every: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.duration <= 0:
            raise SetupError("poll interval and duration must be > 0 seconds")
        if not 0 <= self.jitter < 1:
            raise SetupError("jitter is a fraction of the poll interval, 0 <= jitter < 1")
        if self.processes < 1 or self.concurrency < 1:
            raise SetupError("processes and concurrency must be >= 1")


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds, nearest-rank percentiles."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(seconds)
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 50) * 1000,
            p90_ms=percentile(ordered, 90) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            max_ms=ordered[-1] * 1000,
            mean_ms=sum(ordered) / len(ordered) * 1000,
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[min(len(ordered), int(rank)) - 1]


@dataclass
class _Tally:
    """One client process's counts (plain values: it crosses process boundaries)."""

    enrolled: int = 0
    polls: int = 0
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    reports: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    enroll_latencies: dict[str, list[float]] = field(default_factory=dict)
    elapsed: float = 0.0

    def add(self, outcome: RoundOutcome) -> None:
        self.enrolled += outcome.enrolled
        self.polls += outcome.polled
        if outcome.outcome is not None:
            self.outcomes[outcome.outcome.value] += 1
        for report in outcome.reports:
            self.reports[report.value] += 1
        self.errors += len(outcome.errors)
        room = MAX_ERROR_SAMPLES - len(self.error_samples)
        self.error_samples.extend(outcome.errors[: max(room, 0)])

    def merge(self, other: _Tally) -> None:
        self.enrolled += other.enrolled
        self.polls += other.polls
        self.errors += other.errors
        room = MAX_ERROR_SAMPLES - len(self.error_samples)
        self.error_samples.extend(other.error_samples[: max(room, 0)])
        self.reports.update(other.reports)
        self.outcomes.update(other.outcomes)
        for target, source in (
            (self.latencies, other.latencies),
            (self.enroll_latencies, other.enroll_latencies),
        ):
            for kind, values in source.items():
                target.setdefault(kind, []).extend(values)


@dataclass(frozen=True)
class LoadResult:
    """The merged figures of a concurrent run. Latencies are per request, by kind, of the
    timed phase (enrollment calls are summarized separately)."""

    server: str
    devices: int
    processes: int
    poll_interval_s: float
    duration_s: float
    enrolled: int
    polls: int
    polls_per_second: float
    requests: int
    requests_per_second: float
    errors: int
    error_samples: tuple[str, ...]
    new_assignments: int
    refused: int
    reports: dict[str, int]
    outcomes: dict[str, int]
    latency: dict[str, LatencySummary]
    enrollment_latency: dict[str, LatencySummary]

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["error_samples"] = list(self.error_samples)
        return body


# --- one client process -------------------------------------------------------------------


async def _fetch_director(client: AsyncHttpClient, root: bytes | None) -> DirectorTrust:
    if root is not None:
        return director_from_root(root)
    answer = await send_async(client, root_call(), {})
    if not answer.ok:
        raise ServerError(
            f"cannot fetch the TUF root from {root_call().path}:"
            f" {answer.error or f'HTTP {answer.status_code}'}; is the server up?"
        )
    return director_from_root(answer.content)


async def _enroll_all(
    client: AsyncHttpClient, devices: Sequence[SimDevice], plan: LoadPlan, tally: _Tally
) -> None:
    gate = asyncio.Semaphore(max(1, plan.concurrency // 2))

    async def one(device: SimDevice) -> None:
        async with gate:
            tally.add(
                await run_async(
                    client,
                    enrollment(device, operator_token=plan.operator_token),
                    tally.enroll_latencies,
                )
            )

    await asyncio.gather(
        *(one(d) for d in devices if not d.enrolled and d.behaviour.enroll_at == 0)
    )


async def _poll_phase(
    client: AsyncHttpClient,
    devices: Sequence[SimDevice],
    plan: LoadPlan,
    director: DirectorTrust,
    tally: _Tally,
    rng: random.Random,
    progress: Callable[[float, _Tally], None],
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + plan.duration
    gate = asyncio.Semaphore(plan.concurrency)
    latencies: Latencies = tally.latencies

    async def device_loop(device: SimDevice, first: float) -> None:
        round_, next_at = 0, start + first
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() >= deadline:
                break
            async with gate:
                exchange = device_round(
                    device,
                    round_=round_,
                    now=datetime.now(UTC),
                    director=director,
                    operator_token=plan.operator_token,
                )
                tally.add(await run_async(client, exchange, latencies))
            round_ += 1
            # a device that fell behind polls again at once, never in a burst to catch up
            wait = plan.poll_interval * (1 + rng.uniform(-plan.jitter, plan.jitter))
            next_at = max(next_at + wait, loop.time())

    async def reporter() -> None:
        while True:
            await asyncio.sleep(plan.progress_every)
            progress(loop.time() - start, tally)

    ticker = asyncio.create_task(reporter())
    try:
        await asyncio.gather(*(device_loop(d, rng.uniform(0, plan.poll_interval)) for d in devices))
    finally:
        ticker.cancel()
    tally.elapsed = loop.time() - start
    progress(tally.elapsed, tally)


async def _drive(
    devices: Sequence[SimDevice],
    plan: LoadPlan,
    *,
    shard: int,
    ready: Callable[[], None],
    out: TextIO,
) -> _Tally:
    tally = _Tally()
    limits = httpx.Limits(
        max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency
    )
    async with httpx.AsyncClient(
        base_url=plan.server,
        timeout=plan.request_timeout,
        limits=limits,
        headers={"User-Agent": "outpost-simulator/1", "Accept-Encoding": "identity"},
        follow_redirects=False,
    ) as client:
        director = await _fetch_director(client, plan.root)
        started = time.perf_counter()
        await _enroll_all(client, devices, plan, tally)
        print(
            f"[sim {shard}] {len(devices)} devices, {tally.enrolled} enrolled now"
            f" ({time.perf_counter() - started:.1f} s, {tally.errors} errors);"
            f" polling every {plan.poll_interval:g} s for {plan.duration:g} s",
            file=out,
            flush=True,
        )
        ready()
        rng = random.Random(plan.seed * 1_000_003 + shard)
        await _poll_phase(client, devices, plan, director, tally, rng, _printer(shard, out))
    tally.requests = sum(len(v) for v in tally.latencies.values())
    return tally


def _run_loop(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _printer(shard: int, out: TextIO) -> Callable[[float, _Tally], None]:
    def progress(elapsed: float, tally: _Tally) -> None:
        polls = tally.latencies.get("poll", [])
        recent = sorted(polls[-2000:])
        p50 = percentile(recent, 50) * 1000 if recent else 0.0
        print(
            f"[sim {shard}] {elapsed:5.1f} s: polls {tally.polls}, reports"
            f" {sum(tally.reports.values())}, errors {tally.errors}, poll p50 {p50:.1f} ms",
            file=out,
            flush=True,
        )

    return progress


def _worker(
    shard: int,
    entries: list[dict[str, Any]],
    behaviour: BehaviourFunction,
    plan: LoadPlan,
    barrier: Any,
    results: Any,
) -> None:
    try:
        devices = [state.device_from_json(e, behaviour) for e in entries]

        def ready() -> None:
            barrier.wait(timeout=_SETUP_TIMEOUT_S)

        tally = _run_loop(_drive(devices, plan, shard=shard, ready=ready, out=sys.stderr))
        results.put((shard, tally, [state.device_to_json(d) for d in devices], None))
    except BaseException as e:
        barrier.abort()
        results.put((shard, None, [], f"{type(e).__name__}: {e}"))


# --- the driver ---------------------------------------------------------------------------


def run_load(
    devices: Sequence[SimDevice],
    plan: LoadPlan,
    *,
    behaviour: BehaviourFunction,
    progress: TextIO | None = None,
) -> LoadResult:
    """Enroll what must enroll, then poll for ``plan.duration`` seconds; merge the figures.

    ``devices`` are updated in place (ids, install progress), so a caller may save them.
    ``behaviour`` must be picklable (e.g. :class:`simulator.behaviour.Mix`) when
    ``plan.processes > 1``: it rebuilds each device's behaviour in its client process.
    """
    out = progress or sys.stderr
    shards = [list(devices[i :: plan.processes]) for i in range(plan.processes)]
    shards = [s for s in shards if s]
    if len(shards) <= 1:
        tally = _run_loop(_drive(devices, plan, shard=0, ready=lambda: None, out=out))
        tallies = [tally]
    else:
        tallies = _run_processes(shards, plan, behaviour)
    return _result(plan, len(devices), len(shards), tallies)


def _run_processes(
    shards: list[list[SimDevice]], plan: LoadPlan, behaviour: BehaviourFunction
) -> list[_Tally]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(shards))
    results = context.Queue()
    by_index = {d.index: d for shard in shards for d in shard}
    workers = [
        context.Process(
            target=_worker,
            args=(n, [state.device_to_json(d) for d in shard], behaviour, plan, barrier, results),
            daemon=True,
        )
        for n, shard in enumerate(shards)
    ]
    for worker in workers:
        worker.start()
    tallies: list[_Tally] = []
    failures: list[str] = []
    wait = _SETUP_TIMEOUT_S + plan.duration + 2 * plan.request_timeout
    try:
        for _ in workers:
            try:
                shard, tally, entries, error = results.get(timeout=wait)
            except queue.Empty as e:
                raise ServerError(f"a client process did not finish within {wait:.0f} s") from e
            if error is not None:
                failures.append(f"client process {shard}: {error}")
                continue
            tallies.append(tally)
            for entry in entries:
                _update(by_index[int(entry["index"])], entry)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    if failures:
        raise ServerError("; ".join(failures))
    return tallies


def _update(device: SimDevice, entry: dict[str, Any]) -> None:
    fresh = state.device_from_json(entry, lambda index: device.behaviour)
    device.device_id = fresh.device_id
    device.serving = fresh.serving
    device.highest_accepted = fresh.highest_accepted
    device.given_up = fresh.given_up
    device.pending = None


def _result(plan: LoadPlan, devices: int, processes: int, tallies: list[_Tally]) -> LoadResult:
    total = _Tally()
    for tally in tallies:
        total.merge(tally)
    requests = sum(len(v) for v in total.latencies.values())
    # the client processes run their timed phases side by side: rates add up
    polls_per_second = sum(t.polls / t.elapsed for t in tallies if t.elapsed > 0)
    requests_per_second = sum(t.requests / t.elapsed for t in tallies if t.elapsed > 0)
    return LoadResult(
        server=plan.server,
        devices=devices,
        processes=processes,
        poll_interval_s=plan.poll_interval,
        duration_s=max((t.elapsed for t in tallies), default=0.0),
        enrolled=total.enrolled,
        polls=total.polls,
        polls_per_second=polls_per_second,
        requests=requests,
        requests_per_second=requests_per_second,
        errors=total.errors,
        error_samples=tuple(total.error_samples),
        new_assignments=total.outcomes.get("installing", 0),
        refused=total.outcomes.get("refused", 0),
        reports=dict(total.reports),
        outcomes=dict(total.outcomes),
        latency={k: LatencySummary.of(v) for k, v in sorted(total.latencies.items())},
        enrollment_latency={
            k: LatencySummary.of(v) for k, v in sorted(total.enroll_latencies.items())
        },
    )
