"""The rollout API refuses bad requests with a message naming the field, and only
operators (and admins) may act; every action is audited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.control_plane.conftest import small_gguf
from tests.rollouts.conftest import Fleet


@pytest.fixture
def ready(fleet: Fleet, tmp_path: Path) -> Fleet:
    fleet.enroll(6, ["hw=rpi5", "store=lisbon"])
    fleet.enroll(2, ["hw=jetson"])
    v1 = fleet.release("1.0.0", 1, tmp_path)
    for kiosk in fleet.kiosks:
        fleet.cp.assign(kiosk.id, v1["id"])
    fleet.step()
    fleet.release("1.1.0", 2, tmp_path)
    return fleet


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"release": "kiosk-assistant@9.9.9"}, 422, "release: no release"),
        ({"cohort": "hw=rpi9"}, 422, "cohort: 'hw=rpi9' matches no enrolled device"),
        ({"cohort": "hw"}, 422, "cohort: term 'hw'"),
        ({"stages": [10, 5, 100]}, 422, "stages: stages must increase"),
        ({"stages": [10, 150]}, 422, "stages"),
        ({"stages": []}, 422, "stages"),
        ({"max_failure_rate": 1.5}, 422, "max_failure_rate"),
        ({"min_sample": 0}, 422, "min_sample"),
        ({"stage_timeout_seconds": 0}, 422, "stage_timeout_seconds"),
        ({"gates": [{"type": "bogus"}]}, 422, "unknown gate type"),
        ({"surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_rollout_requests_say_which_field_and_why(
    ready: Fleet, change: dict[str, Any], status: int, says: str
) -> None:
    change = {"release": "kiosk-assistant@1.1.0", **change}
    r = ready.create(**change)
    assert r.status_code == status, r.text
    assert says in r.text


def test_a_release_pending_offline_signature_cannot_be_rolled_out(
    ready: Fleet, tmp_path: Path
) -> None:
    offline = ready.cp.settings.resolved_offline_keys_dir / "targets.key"
    offline.rename(tmp_path / "targets.key")
    uploaded = ready.cp.upload(small_gguf(tmp_path, values=99, seed=9))
    r = ready.cp.client.post(
        "/api/v1/releases",
        json={"name": "kiosk-assistant", "version": "2.0.0", "artifacts": [uploaded["id"]]},
        headers=ready.cp.auth("release-manager"),
    )
    assert r.json()["state"] == "pending-signature"
    r = ready.create("kiosk-assistant@2.0.0")
    assert r.status_code == 409 and "sign-targets" in r.text


def test_overlapping_running_rollouts_are_refused_naming_devices_and_rollout(
    ready: Fleet,
) -> None:
    first = ready.create("kiosk-assistant@1.1.0").json()
    r = ready.create("kiosk-assistant@1.1.0", cohort="store=lisbon")
    assert r.status_code == 409, r.text
    assert first["id"] in r.text and ready.kiosks[0].id[:8] in r.text
    disjoint = ready.create("kiosk-assistant@1.1.0", cohort="hw=jetson")
    assert disjoint.status_code == 201, disjoint.text


@pytest.mark.parametrize("role", ["viewer", "release-manager"])
def test_roles_that_may_not_roll_out_get_403(ready: Fleet, role: str) -> None:
    rid = ready.create("kiosk-assistant@1.1.0").json()["id"]
    headers = ready.cp.auth(role)
    body = {
        "release": "kiosk-assistant@1.1.0",
        "cohort": "hw=jetson",
        "stages": [100],
        "max_failure_rate": 0.05,
        "min_sample": 1,
        "stage_timeout_seconds": 60,
    }
    assert ready.cp.client.post("/api/v1/rollouts", json=body, headers=headers).status_code == 403
    for action in ("pause", "resume", "approve", "abort"):
        r = ready.cp.client.post(f"/api/v1/rollouts/{rid}/{action}", headers=headers)
        assert r.status_code == 403, (action, r.text)
    assert ready.cp.client.get(f"/api/v1/rollouts/{rid}", headers=headers).status_code == 200
    assert ready.cp.client.get(f"/api/v1/rollouts/{rid}").status_code == 401


def test_every_rollout_action_and_decision_is_audited(ready: Fleet) -> None:
    rid = ready.create("kiosk-assistant@1.1.0", stages=[50, 100], manual_approval=True).json()["id"]
    ready.run(rid)
    op = ready.cp.auth("operator")
    ready.cp.client.post(f"/api/v1/rollouts/{rid}/approve", headers=op)
    ready.run(rid)
    entries = [e for e in ready.cp.audit() if e["target"] == rid]
    actions = [e["action"] for e in reversed(entries)]
    assert actions[:2] == ["rollout.create", "rollout.approve"]
    assert "rollout.advanced" in actions and actions[-1] == "rollout.completed"
    assert all(e["actor"] for e in entries)
