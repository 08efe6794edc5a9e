"""Staged rollouts against a real control plane (in process), with protocol-speaking
devices: stages, gates, halt and rollback, operator actions, late devices."""

from __future__ import annotations

from pathlib import Path

from tests.rollouts.conftest import Fleet


def _base(fleet: Fleet, tmp_path: Path, n: int = 40) -> None:
    fleet.enroll(n, ["hw=rpi5", "store=lisbon"])
    fleet.enroll(5, ["hw=jetson"])
    v1 = fleet.release("1.0.0", 1, tmp_path)
    for kiosk in fleet.kiosks:
        fleet.cp.assign(kiosk.id, v1["id"])
    fleet.step()
    fleet.release("1.1.0", 2, tmp_path)


def test_healthy_release_reaches_every_cohort_device_in_nested_stages(
    fleet: Fleet, tmp_path: Path
) -> None:
    _base(fleet, tmp_path)
    r = fleet.create("kiosk-assistant@1.1.0", stages=[25, 50, 100])
    assert r.status_code == 201, r.text
    rollout = r.json()
    assert rollout["state"] == "running" and rollout["stage"] == 1
    first = {k.id for k in fleet.kiosks if k.seen_version == 1}
    fleet.step()
    stage1 = {k.id for k in fleet.kiosks if k.running == fleet.releases["1.1.0"]["id"]}
    assert 0 < len(stage1) < 40, "stage 1 (25%) moves some, not all, of the cohort"
    assert len(first) == 45
    shown = fleet.run(rollout["id"])
    assert shown["state"] == "completed", shown["reason"]
    assert shown["committed"] == 40 and shown["failed"] == 0
    versions = fleet.installed()
    jetsons = {k.id for k in fleet.kiosks[40:]}
    assert all(v == "1.1.0" for d, v in versions.items() if d not in jetsons)
    assert all(versions[d] == "1.0.0" for d in jetsons), "outside the cohort: untouched"
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds == ["created", "advanced", "advanced", "completed"]
    # stages are nested: every device moved at stage 1 is in the final set, once
    assert stage1 <= {
        k.id for k in fleet.kiosks if k.history[-1:] == [fleet.releases["1.1.0"]["id"]]
    }
    assert all(k.history.count(fleet.releases["1.1.0"]["id"]) == 1 for k in fleet.kiosks[:40])


def test_failing_health_halts_at_the_first_judged_stage_and_rolls_everyone_back(
    fleet: Fleet, tmp_path: Path
) -> None:
    _base(fleet, tmp_path)
    for kiosk in fleet.kiosks[:40:3]:  # a third of the cohort fails its health window
        kiosk.fails_health = True
    rollout = fleet.create("kiosk-assistant@1.1.0", stages=[50, 100]).json()
    shown = fleet.run(rollout["id"])
    assert shown["state"] == "halted", shown
    assert shown["stage"] == 1
    assert "failed the health window" in shown["reason"]
    assert "rolled back" in shown["reason"] and "kiosk-assistant@1.0.0" in shown["reason"]
    fleet.step(2)
    versions = fleet.installed()
    assert set(versions.values()) == {"1.0.0"}, versions
    assert shown["rolled_back"] == shown["moved"]
    assert shown["moved"] < 40, "the second stage never started"
    halted = [e for e in shown["events"] if e["kind"] == "halted"]
    assert halted and halted[0]["numbers"]["verdict"] == "halt"


def test_silent_devices_time_out_and_count_as_failures(fleet: Fleet, tmp_path: Path) -> None:
    _base(fleet, tmp_path)
    for kiosk in fleet.kiosks[:40]:
        kiosk.silent = True
    rollout = fleet.create(
        "kiosk-assistant@1.1.0", stages=[50, 100], stage_timeout_seconds=600
    ).json()
    fleet.step()
    fleet.tick()
    assert fleet.show(rollout["id"])["state"] == "running"
    fleet.cp.clock.advance(seconds=601)
    fleet.tick()
    shown = fleet.show(rollout["id"])
    assert shown["state"] == "halted", shown
    assert shown["timed_out"] == shown["moved"]
    assert f"{shown['moved']} timed out" in shown["reason"]


def test_pause_holds_resume_continues_abort_rolls_back(fleet: Fleet, tmp_path: Path) -> None:
    _base(fleet, tmp_path)
    rollout = fleet.create("kiosk-assistant@1.1.0").json()
    rid = rollout["id"]
    op = fleet.cp.auth("operator")
    assert (
        fleet.cp.client.post(f"/api/v1/rollouts/{rid}/pause", headers=op).json()["state"]
        == "paused"
    )
    fleet.step()
    fleet.tick()
    fleet.tick()
    paused = fleet.show(rid)
    assert paused["state"] == "paused" and paused["stage"] == 1
    assert paused["committed"] == paused["moved"], "reports still counted while paused"
    r = fleet.cp.client.post(f"/api/v1/rollouts/{rid}/pause", headers=op)
    assert r.status_code == 409 and "paused" in r.text
    assert fleet.cp.client.post(f"/api/v1/rollouts/{rid}/resume", headers=op).status_code == 200
    fleet.tick()
    assert fleet.show(rid)["stage"] == 2
    r = fleet.cp.client.post(f"/api/v1/rollouts/{rid}/abort", headers=op, json={"roll_back": True})
    assert r.status_code == 200 and r.json()["state"] == "aborted"
    fleet.step()
    assert set(fleet.installed().values()) == {"1.0.0"}
    actions = [e["action"] for e in fleet.cp.audit() if e["target"] == rid]
    assert {"rollout.create", "rollout.pause", "rollout.resume", "rollout.abort"} <= set(actions)


def test_abort_without_rollback_leaves_moved_devices_on_the_new_release(
    fleet: Fleet, tmp_path: Path
) -> None:
    _base(fleet, tmp_path)
    rid = fleet.create("kiosk-assistant@1.1.0", stages=[50, 100]).json()["id"]
    fleet.step()
    r = fleet.cp.client.post(
        f"/api/v1/rollouts/{rid}/abort",
        headers=fleet.cp.auth("operator"),
        json={"roll_back": False},
    )
    assert r.json()["rolled_back"] == 0
    fleet.step()
    assert "1.1.0" in set(fleet.installed().values())


def test_manual_approval_waits_for_the_operator_at_each_stage(fleet: Fleet, tmp_path: Path) -> None:
    _base(fleet, tmp_path)
    rid = fleet.create("kiosk-assistant@1.1.0", manual_approval=True).json()["id"]
    shown = fleet.run(rid)
    assert shown["state"] == "awaiting_approval" and shown["stage"] == 1
    assert "approval" in shown["reason"]
    fleet.tick()
    assert fleet.show(rid)["stage"] == 1, "no advance without approval"
    op = fleet.cp.auth("operator")
    assert fleet.cp.client.post(f"/api/v1/rollouts/{rid}/approve", headers=op).status_code == 200
    fleet.tick()
    assert fleet.show(rid)["stage"] == 2
    fleet.step()
    fleet.tick()
    assert fleet.show(rid)["state"] == "awaiting_approval"
    fleet.cp.client.post(f"/api/v1/rollouts/{rid}/approve", headers=op)
    shown = fleet.run(rid)
    assert shown["state"] == "completed"


def test_late_enrollers_join_their_stage_and_newcomers_get_the_cohort_default(
    fleet: Fleet, tmp_path: Path
) -> None:
    _base(fleet, tmp_path)
    rid = fleet.create("kiosk-assistant@1.1.0", stages=[100]).json()["id"]
    late = fleet.enroll(3, ["hw=rpi5"])
    shown = fleet.run(rid)
    assert shown["state"] == "completed"
    assert all(k.running == fleet.releases["1.1.0"]["id"] for k in late)
    after = fleet.enroll(2, ["hw=rpi5"])
    outsider = fleet.enroll(1, ["hw=jetson"])
    fleet.tick()
    fleet.step()
    assert all(k.running == fleet.releases["1.1.0"]["id"] for k in after)
    assert outsider[0].running is None


def test_retagging_moves_a_device_into_a_running_rollout(fleet: Fleet, tmp_path: Path) -> None:
    _base(fleet, tmp_path)
    rid = fleet.create("kiosk-assistant@1.1.0", stages=[100]).json()["id"]
    jetson = fleet.kiosks[-1]
    from control_plane.storage.models import Device

    db = fleet.cp.app.state.control_plane.db
    with db.transaction() as session:
        device = session.get(Device, jetson.id)
        assert device is not None
        device.tags = ["hw=rpi5"]
    shown = fleet.run(rid)
    assert shown["state"] == "completed"
    assert jetson.running == fleet.releases["1.1.0"]["id"]


def test_a_restart_mid_rollout_loses_nothing_and_reshuffles_no_bucket(
    fleet: Fleet, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from control_plane.app import create_app

    _base(fleet, tmp_path, n=60)
    rid = fleet.create("kiosk-assistant@1.1.0", stages=[20, 60, 100]).json()["id"]
    fleet.step()
    moved_before = {k.id for k in fleet.kiosks if k.seen_version == 2}
    fleet.cp.client.__exit__(None, None, None)
    app = create_app(fleet.cp.settings, clock=fleet.cp.clock)
    fleet.cp.app = app
    fleet.cp.client = TestClient(app)
    fleet.cp.client.__enter__()
    fleet.tick()
    shown = fleet.show(rid)
    assert shown["stage"] == 2
    fleet.step()
    moved_after = {k.id for k in fleet.kiosks if k.seen_version >= 2}
    assert moved_before < moved_after, "stage 2 contains stage 1 and more"
    assert fleet.run(rid)["state"] == "completed"


def test_a_halt_sends_devices_back_to_what_they_ran_not_a_refused_assignment(
    fleet: Fleet, tmp_path: Path
) -> None:
    _base(fleet, tmp_path, n=10)
    bad = fleet.release("1.0.1", 9, tmp_path)
    refusing = fleet.kiosks[0]
    record = fleet.cp.assign(refusing.id, bad["id"])
    refusing.seen_version = record["version"]  # it refused 1.0.1 and still runs 1.0.0
    refusing.device.report(
        state="refused", assignment_version=record["version"], release_id=bad["id"]
    )
    for kiosk in fleet.kiosks[:10]:
        kiosk.fails_health = True
    rid = fleet.create("kiosk-assistant@1.1.0", stages=[100], min_sample=1).json()["id"]
    shown = fleet.run(rid)
    assert shown["state"] == "halted"
    assert "kiosk-assistant@1.0.0" in shown["reason"] and "1.0.1" not in shown["reason"]
    fleet.step()
    assert fleet.installed()[refusing.id] == "1.0.0"
