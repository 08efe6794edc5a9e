"""The p95 gate inside the rollout engine (control plane in process, on SQLite and on
PostgreSQL): the stage's devices on the new release against the previous release on the
same cohort, from real signed telemetry reports."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from control_plane.rollouts import service as rollout_service
from control_plane.rollouts.core import StagePlan, bucket_of
from tests.control_plane.conftest import make_control_plane
from tests.rollouts.conftest import Fleet, Kiosk
from tests.telemetry_cp.conftest import Reporter, telemetry_of

TTFT_GATE = {
    "type": "latency_regression",
    "metric": "chat_ttft",
    "max_regression": 0.2,
    "min_sample": 3,
}


@pytest.fixture
def gated(tmp_path: Path, database_url: str | None) -> Iterator[Fleet]:
    cp = make_control_plane(tmp_path, database_url, workers_enabled=False)
    with cp.client:
        fleet = Fleet(cp)
        fleet.enroll(20, ["hw=rpi5"])
        v1 = fleet.release("1.0.0", 1, tmp_path)
        for kiosk in fleet.kiosks:
            cp.assign(kiosk.id, v1["id"])
        fleet.step()
        fleet.release("1.1.0", 2, tmp_path)
        yield fleet


def _send(kiosks: list[Kiosk], release_id: str, median: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kiosk in kiosks:
        reporter = Reporter(kiosk.device)
        latencies = {"chat_ttft_seconds": list(rng.lognormal(np.log(median), 0.3, 300))}
        report = reporter.build(
            release_id=release_id, latencies=latencies, requests={"chat": 300}, rng=rng
        )
        r = reporter.send(report)
        assert r.status_code == 200, r.text


def _on(fleet: Fleet, version: str) -> list[Kiosk]:
    return [k for k in fleet.kiosks if k.running == fleet.releases[version]["id"]]


def _salt_drawing(fleet: Fleet, stages: list[float], low: int, high: int) -> str:
    """A salt whose first stage holds ``low`` to ``high`` of the fleet's devices, by the
    engine's own buckets: 30% of 20 devices by a random salt holds fewer than the gate's
    sample of 3 about 3.5% of the time, and the test then failed."""
    plan = StagePlan.parse(stages)
    for n in itertools.count():
        salt = f"gate-rollout-{n}"
        drawn = sum(plan.covers(0, bucket_of(salt, k.id)) for k in fleet.kiosks)
        if low <= drawn <= high:
            return salt
    raise AssertionError("unreachable")


def _start(fleet: Fleet, monkeypatch: pytest.MonkeyPatch, **body: Any) -> dict[str, Any]:
    _send(fleet.kiosks, fleet.releases["1.0.0"]["id"], 0.30, seed=1)  # the baseline
    stages = [30.0, 100.0]
    salt = _salt_drawing(fleet, stages, 3, 10)
    with monkeypatch.context() as m:  # the rollout's salt, else secrets.token_hex(16)
        m.setattr(rollout_service, "secrets", SimpleNamespace(token_hex=lambda _n: salt))
        r = fleet.create(
            "kiosk-assistant@1.1.0", stages=stages, min_sample=2, gates=[TTFT_GATE], **body
        )
    assert r.status_code == 201, r.text
    rollout: dict[str, Any] = r.json()
    fleet.step()  # stage 1's devices install and commit the new release
    fleet.tick()
    shown = fleet.show(rollout["id"])
    assert shown["state"] == "running", shown["reason"]
    assert "of the minimum 3 devices have sent telemetry" in shown["reason"]
    return rollout


def test_a_slower_release_halts_at_the_first_stage_naming_both_p95s(
    gated: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout = _start(gated, monkeypatch)
    stage1 = _on(gated, "1.1.0")
    assert 3 <= len(stage1) < 20
    _send(stage1, gated.releases["1.1.0"]["id"], 0.60, seed=2)  # twice as slow
    gated.tick()
    shown = gated.show(rollout["id"])
    assert shown["state"] == "halted", shown["reason"]
    assert shown["stage"] == 1
    reason = shown["reason"]
    assert "p95 time to first token" in reason
    assert "on kiosk-assistant@1.1.0" in reason and "on kiosk-assistant@1.0.0" in reason
    assert reason.count("95% CI") == 2
    assert "more than the allowed +20%" in reason
    assert "docs/runbooks/cp-telemetry-gate-halted.md" in reason
    halted = next(e for e in shown["events"] if e["kind"] == "halted")
    gate = next(g for g in halted["numbers"]["numbers"]["gates"] if g["gate"].startswith("chat"))
    numbers = gate["numbers"]
    assert numbers["candidate_seconds"] > 1.5 * numbers["baseline_seconds"]
    assert numbers["candidate_low_seconds"] <= numbers["candidate_seconds"]
    assert numbers["baseline_seconds"] <= numbers["baseline_high_seconds"]
    gated.step(2)
    assert set(gated.installed().values()) == {"1.0.0"}


def test_a_release_as_fast_as_the_previous_one_advances(
    gated: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout = _start(gated, monkeypatch)
    _send(_on(gated, "1.1.0"), gated.releases["1.1.0"]["id"], 0.31, seed=3)
    gated.tick()
    shown = gated.show(rollout["id"])
    assert shown["state"] == "running" and shown["stage"] == 2, shown["reason"]
    assert "within +20%" in shown["reason"]


def test_reports_are_aggregated_once_into_hourly_rows(gated: Fleet) -> None:
    _send(gated.kiosks, gated.releases["1.0.0"]["id"], 0.30, seed=4)
    service = telemetry_of(gated.cp)
    now = gated.cp.clock()
    assert service.aggregate_pending(now) == 20
    assert service.aggregate_pending(now) == 0  # each report is folded exactly once
    summary = service.summary()
    assert summary.reports_pending == 0 and summary.aggregate_rows == 1
    points = service.latency_series(
        "chat_ttft", since=now.replace(minute=0, second=0, microsecond=0), until=now
    )
    assert len(points) == 1
    point = points[0]
    assert point.release_id == gated.releases["1.0.0"]["id"] and point.device_class == "rpi5"
    assert point.reports == 20 and point.devices == 20
    assert point.p50.value is not None and 0.25 < point.p50.value < 0.36
    low, value, high = point.p95.low, point.p95.value, point.p95.high
    assert low is not None and value is not None and high is not None
    assert low <= value <= high
    requests = {
        u.name: u.estimate for u in service.usage_totals(since=now.replace(minute=0), until=now)
    }
    assert requests["requests.chat"].covers(20 * 300)
    budget = service.privacy_budget(since=now.replace(minute=0), until=now)
    assert [(b.device_class, b.reports, b.devices) for b in budget] == [("rpi5", 20, 20)]
    assert budget[0].epsilon_spent == pytest.approx(20 * 10 * 0.5)  # 10 fields at scale 2


def test_retention_drops_old_raw_reports_once_folded_and_old_aggregates(gated: Fleet) -> None:
    service = telemetry_of(gated.cp)
    _send(gated.kiosks[:4], gated.releases["1.0.0"]["id"], 0.30, seed=5)
    gated.cp.clock.advance(days=15)  # past the raw retention (14 days)
    assert service.prune(gated.cp.clock()) == (0, 0), "unfolded reports are kept"
    service.aggregate_pending(gated.cp.clock())
    assert service.prune(gated.cp.clock()) == (4, 0)
    summary = service.summary()
    assert summary.reports_stored == 0 and summary.aggregate_rows == 1
    gated.cp.clock.advance(days=400)  # past the aggregate retention
    assert service.prune(gated.cp.clock()) == (0, 1)
    assert service.summary().aggregate_rows == 0
