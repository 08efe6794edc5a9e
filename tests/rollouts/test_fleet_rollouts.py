"""Staged rollouts across 1,000 simulated devices that speak the real device protocol
(real keys, signed requests, director signatures verified by the agent's trust code),
against a real control plane in process. One fleet for the module, rolled through three
releases in order: healthy (with a control-plane restart mid-rollout), failing on a fifth
of the devices (halts and rolls back), and with offline and late devices (they converge).
The rollout worker runs one pass per round; the clock moves a minute per round."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from simulator import AsgiClient, Behaviour, Fleet, Health, TagSpec, Window
from tests.control_plane.conftest import make_control_plane
from tests.rollouts.conftest import Fleet as Harness

pytestmark = pytest.mark.slow

SIZE = 1000
LATE = 30  # devices that enroll only while the third rollout runs
STAGES = [1, 10, 50, 100]
NEVER = 1_000_000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Fleet, Path]]:
    tmp = tmp_path_factory.mktemp("fleet")
    cp = make_control_plane(tmp, workers_enabled=False)
    with cp.client:
        h = Harness(cp)
        http = AsgiClient(cp.app)
        sim = Fleet.create(
            http,
            size=SIZE + LATE,
            clock=cp.clock,
            operator_token=cp.auth("operator")["Authorization"].removeprefix("Bearer "),
            profile=TagSpec.parse(["hw=rpi5", "store=lisbon,porto"]),
            behaviour=lambda i: Behaviour(enroll_at=NEVER if i >= SIZE else 0),
            root=cp.root,
        )
        assert sim.step().enrolled == SIZE
        yield h, sim, tmp
        http.close()


def rollout(h: Harness, version: str, stage_timeout_seconds: int = 600) -> str:
    r = h.create(
        f"kiosk-assistant@{version}",
        cohort="hw=rpi5",
        stages=STAGES,
        min_sample=20,
        stage_timeout_seconds=stage_timeout_seconds,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def drive(h: Harness, sim: Fleet, rollout_id: str, rounds: int = 40) -> dict[str, Any]:
    for _ in range(rounds):
        result = sim.step()
        assert not result.errors, result.errors[:3]
        h.tick()
        h.cp.clock.advance(seconds=60)
        shown = h.show(rollout_id)
        if shown["state"] != "running":
            return shown
    return h.show(rollout_id)


def settle(h: Harness, sim: Fleet, rounds: int) -> None:
    for _ in range(rounds):
        sim.step()
        h.tick()
        h.cp.clock.advance(seconds=60)


def serving(sim: Fleet, release_id: str) -> set[str]:
    return {d.device_id for d in sim.devices if d.device_id and d.serving_release_id == release_id}


def rollout_assignments(h: Harness, rollout_id: str) -> Counter[str]:
    db = sqlite3.connect(h.cp.settings.data_dir / "control-plane.db")
    try:
        rows = db.execute(
            "SELECT device_id FROM assignments WHERE issued_by = ?", (f"rollout:{rollout_id}",)
        ).fetchall()
    finally:
        db.close()
    return Counter(r[0] for r in rows)


def test_a_healthy_release_reaches_every_device_across_a_restart(
    world: tuple[Harness, Fleet, Path],
) -> None:
    h, sim, tmp = world
    v1 = h.release("1.0.0", 1, tmp)["id"]
    rid = rollout(h, "1.0.0")
    started = time.perf_counter()
    sim.step()
    h.tick()  # stage 1 (1%) committed and judged; stage 2 (10%) assigned
    assert h.show(rid)["stage"] == 2
    moved_before = serving(sim, v1)
    assert 0 < len(moved_before) < 50

    # restart the control plane mid-rollout: a new app on the same database
    h.cp.client.__exit__(None, None, None)
    h.cp.app = create_app(h.cp.settings, clock=h.cp.clock)
    h.cp.client = TestClient(h.cp.app)
    h.cp.client.__enter__()
    sim._http = AsgiClient(h.cp.app)  # the devices now reach the new process

    shown = drive(h, sim, rid)
    elapsed = time.perf_counter() - started
    print(f"\n{SIZE}-device 4-stage rollout in process: {elapsed:.1f} s", file=sys.stderr)
    assert shown["state"] == "completed", shown["reason"]
    assert shown["committed"] == SIZE and shown["failed"] == shown["timed_out"] == 0
    assert len(serving(sim, v1)) == SIZE
    assert moved_before <= serving(sim, v1)
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds == ["created", "advanced", "advanced", "advanced", "completed"]
    per_stage = [s["devices"] for s in shown["stages"]]
    assert sum(per_stage) == SIZE
    assert per_stage[0] < 30 and 60 < per_stage[0] + per_stage[1] < 140
    # one assignment per device from this rollout: nothing re-issued, no bucket reshuffled
    issued = rollout_assignments(h, rid)
    assert len(issued) == SIZE and set(issued.values()) == {1}


def test_a_release_failing_on_a_fifth_of_devices_halts_at_the_first_judged_stage(
    world: tuple[Harness, Fleet, Path],
) -> None:
    h, sim, tmp = world
    v1 = h.releases["1.0.0"]["id"]
    v2 = h.release("1.1.0", 2, tmp)["id"]
    for device in sim.devices[:SIZE]:
        if device.index % 5 == 0:
            sim.set_behaviour(device.index, Behaviour(health=Health.FAILS_HEALTH))
    rid = rollout(h, "1.1.0")
    shown = drive(h, sim, rid)
    for device in sim.devices[:SIZE]:
        sim.set_behaviour(device.index, Behaviour())
    assert shown["state"] == "halted", shown["reason"]
    judged = next(i for i, p in enumerate(STAGES) if p * SIZE / 100 >= 20)
    assert shown["stage"] == judged + 1, shown["reason"]
    assert "failed the health window" in shown["reason"]
    assert "rolled back" in shown["reason"] and "kiosk-assistant@1.0.0" in shown["reason"]
    assert shown["moved"] < SIZE * STAGES[judged + 1] / 100 / 2
    settle(h, sim, 3)
    moved = rollout_assignments(h, rid)
    assert moved and all(sim.by_id(d).serving_release_id == v1 for d in moved)
    assert not serving(sim, v2)
    assert set(h.installed().values()) == {"1.0.0"}


def test_offline_and_late_devices_converge(world: tuple[Harness, Fleet, Path]) -> None:
    h, sim, tmp = world
    v3 = h.release("1.2.0", 3, tmp)["id"]
    now = sim.round
    offline = [d.index for d in sim.devices[:SIZE] if d.index % 50 == 7]  # 2%
    for index in offline:  # offline for longer than a stage timeout (5 rounds)
        sim.set_behaviour(index, Behaviour(offline=(Window(now, now + 12),)))
    for device in sim.devices[SIZE:]:
        sim.set_behaviour(device.index, replace(device.behaviour, enroll_at=now + 3))
    rid = rollout(h, "1.2.0", stage_timeout_seconds=300)
    shown = drive(h, sim, rid)
    assert shown["state"] == "completed", shown["reason"]
    judged = [
        g["numbers"]
        for e in shown["events"]
        if e["kind"] in ("advanced", "completed")
        for g in e["numbers"]["numbers"]["gates"]
        if g["gate"] == "failure_rate"
    ]
    assert any(0 < n["timed_out"] <= len(offline) for n in judged), "offline devices timed out"
    late_ids = {d.device_id for d in sim.devices[SIZE:]}
    assert None not in late_ids
    settle(h, sim, 6)  # the offline devices come back and install what they were assigned
    assert len(serving(sim, v3)) == SIZE + LATE
    assert set(h.installed().values()) == {"1.2.0"}
