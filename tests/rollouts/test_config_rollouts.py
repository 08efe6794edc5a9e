"""Config rollouts: a config patch goes out in stages like a release ("config version N"
judged like a release), through the same engine (plan, gates, decide).

Each stage's devices get the patch as a layer of their effective config (between the tag
layers and the device layer); their config reports are the evidence (``applied`` counts
as committed, ``rejected``/``reverted`` as failed, silence past the stage timeout as timed
out). A halt removes the layer from every device it reached (they are signed their prior
config as a newer version); completion folds the patch into the scope the cohort names.
The control plane is real (SQLite and PostgreSQL); the devices speak the wire protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from control_plane.rollouts.core import (
    CohortSelector,
    InvalidRolloutError,
    Outcome,
    config_outcome,
    config_target_scope,
)
from control_plane.rollouts.service import RolloutService
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    FakeDevice,
    database_url,
    make_control_plane,
    postgres_url,
)
from tests.remote_config.test_control_plane import document, fetch, report, set_config

__all__ = ["database_url", "postgres_url"]  # the fixtures that run each test on both databases

LONG_PROMPT = "You answer questions about the store. " * 20  # ~760 characters
PROMPT_LIMIT = 200


# --- the pure rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cohort", "scope"),
    [
        ("*", "fleet"),
        ("store=lisbon", "tag:store=lisbon"),
        (" store = lisbon ", "tag:store=lisbon"),
    ],
)
def test_a_config_rollout_folds_into_the_scope_its_cohort_names(cohort: str, scope: str) -> None:
    assert config_target_scope(CohortSelector.parse(cohort)) == scope


@pytest.mark.parametrize(
    "cohort", ["store=lisbon,hw=rpi5", "store!=porto", "ram_mb>=4096", "arch=arm64"]
)
def test_a_cohort_no_single_scope_names_is_refused_for_a_config_rollout(cohort: str) -> None:
    with pytest.raises(InvalidRolloutError, match="config rollout's cohort") as caught:
        config_target_scope(CohortSelector.parse(cohort))
    assert caught.value.field == "cohort"


def test_config_reports_are_judged_like_install_reports() -> None:
    assert config_outcome("applied") is Outcome.COMMITTED
    assert config_outcome("rejected") is Outcome.FAILED
    assert config_outcome("reverted") is Outcome.FAILED


# --- against the control plane -----------------------------------------------------------


@dataclass
class ConfigDevice:
    """Fetches its signed config and reports: applied, or reverted when the system prompt
    is longer than its model's context takes (``strict``), or nothing (``silent``)."""

    cp: ControlPlaneUnderTest
    device: FakeDevice
    strict: bool = False
    silent: bool = False
    seen: int = 0
    in_force: dict[str, Any] = field(default_factory=dict)
    reports: list[tuple[int, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.device.id

    def step(self) -> None:
        if fetch(self.device).status_code == 204:
            return
        doc = document(self.cp, self.device)
        if doc["version"] <= self.seen:
            return
        self.seen = doc["version"]
        if self.silent:
            return
        prompt = doc["settings"].get("chat", {}).get("system_prompt") or ""
        state = "reverted" if self.strict and len(prompt) > PROMPT_LIMIT else "applied"
        if state == "applied":
            self.in_force = doc["settings"]
        r = report(self.device, doc["version"], state, f"{state} v{doc['version']}")
        assert r.status_code == 200, r.text
        self.reports.append((doc["version"], state))


@dataclass
class ConfigFleet:
    cp: ControlPlaneUnderTest
    devices: list[ConfigDevice] = field(default_factory=list)

    @property
    def rollouts(self) -> RolloutService:
        service: RolloutService = self.cp.app.state.control_plane.rollouts
        return service

    def enroll(self, n: int, tags: list[str], **behaviour: Any) -> list[ConfigDevice]:
        new = [
            ConfigDevice(
                self.cp, self.cp.enroll(f"kiosk-{len(self.devices) + i}", tags), **behaviour
            )
            for i in range(n)
        ]
        self.devices.extend(new)
        return new

    def run(self, rollout_id: str, rounds: int = 12) -> dict[str, Any]:
        """Alternate device polls and worker passes until the rollout stops running."""
        for _ in range(rounds):
            for device in self.devices:
                device.step()
            for active in self.rollouts.active_ids():
                self.rollouts.advance(active, self.cp.clock())
            if self.show(rollout_id)["state"] != "running":
                break
        for device in self.devices:  # one more poll: what a halt or completion left
            device.step()
        return self.show(rollout_id)

    def create(self, cohort: str = "store=lisbon", **body: Any) -> Any:
        payload = {
            "cohort": cohort,
            "stages": [10, 50, 100],
            "max_failure_rate": 0.05,
            "min_sample": 4,
            "stage_timeout_seconds": 600,
            **body,
        }
        return self.cp.client.post(
            "/api/v1/rollouts", json=payload, headers=self.cp.auth("operator")
        )

    def show(self, rollout_id: str) -> dict[str, Any]:
        r = self.cp.client.get(f"/api/v1/rollouts/{rollout_id}", headers=self.cp.auth("viewer"))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def effective(self, device: ConfigDevice) -> dict[str, Any]:
        r = self.cp.client.get(
            f"/api/v1/devices/{device.id}/config", headers=self.cp.auth("viewer")
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
def fleet(tmp_path: Path, database_url: str | None) -> Iterator[ConfigFleet]:
    cp = make_control_plane(tmp_path, database_url, workers_enabled=False)
    with cp.client:
        yield ConfigFleet(cp)


def test_a_config_patch_reaches_the_cohort_in_stages_and_joins_the_tag_layer(
    fleet: ConfigFleet,
) -> None:
    assert set_config(fleet.cp, "fleet", {"log_level": "WARNING"}).status_code == 200
    lisbon = fleet.enroll(10, ["store=lisbon"])
    porto = fleet.enroll(2, ["store=porto"])
    for device in fleet.devices:
        device.step()  # everyone runs the fleet layer first
    r = fleet.create(config={"chat": {"max_tokens_default": 256}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["kind"] == "config" and created["release"] is None
    assert created["config"] == {"chat": {"max_tokens_default": 256}}
    assert created["config_scope"] == "tag:store=lisbon"
    first = created["stages"][0]["devices"]
    assert first < 10  # stage 1 is a share of the cohort, not all of it

    final = fleet.run(created["id"])
    assert final["state"] == "completed", final["reason"]
    assert final["committed"] == 10 and final["moved"] == 10
    assert "tag:store=lisbon layer" in final["reason"]
    assert [e["kind"] for e in final["events"]] == ["created", "advanced", "advanced", "completed"]
    for device in lisbon:
        assert device.in_force == {"log_level": "WARNING", "chat": {"max_tokens_default": 256}}
        view = fleet.effective(device)
        assert not [layer for layer in view["layers"] if layer["scope"].startswith("rollout:")]
        assert view["effective"]["chat"] == {"max_tokens_default": 256}
    for device in porto:
        assert device.in_force == {"log_level": "WARNING"}
        assert device.reports == [(1, "applied")]
    history = fleet.cp.client.get(
        "/api/v1/config/history", params={"scope": "tag:store=lisbon"}, headers=fleet.cp.auth()
    ).json()
    assert history[0]["changed_by"] == f"rollout:{created['id']}"
    listed = fleet.cp.client.get("/api/v1/rollouts", headers=fleet.cp.auth("viewer")).json()
    assert [(r["id"], r["kind"]) for r in listed] == [(created["id"], "config")]


def test_a_patch_that_one_class_of_device_reverts_halts_and_is_removed_from_all_it_reached(
    fleet: ConfigFleet,
) -> None:
    fleet.enroll(4, ["store=lisbon"])
    fleet.enroll(16, ["store=lisbon"], strict=True)  # a small model: a long prompt breaks it
    r = fleet.create(
        config={"chat": {"system_prompt": LONG_PROMPT}}, stages=[50, 100], min_sample=1
    )
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]

    final = fleet.run(rollout_id)
    assert final["state"] == "halted", final["reason"]
    assert final["failed"] >= 1 and "docs/runbooks/cp-rollout-halted.md" in final["reason"]
    assert final["stage"] == 1 and final["moved"] < 20  # halted at stage 1, the rest untouched
    assert final["rolled_back"] == final["moved"]
    reached = [d for d in fleet.devices if d.reports]
    assert len(reached) == final["moved"]
    for device in reached:
        # it got the patch as v1 (applied or reverted it), then its prior config as v2
        assert device.reports[0][0] == 1 and device.reports[-1] == (2, "applied")
        assert device.in_force == {}
    assert {s for d in reached for _, s in d.reports[:1]} >= {"reverted"}
    for device in fleet.devices:
        assert "chat" not in fleet.effective(device)["effective"]  # the layer is gone
    before = [d.seen for d in fleet.devices]
    for device in fleet.devices:
        device.step()
    assert [d.seen for d in fleet.devices] == before  # nothing more to apply


def test_silent_devices_time_out_like_they_do_for_a_release(fleet: ConfigFleet) -> None:
    fleet.enroll(6, ["store=lisbon"], silent=True)
    r = fleet.create(config={"log_level": "DEBUG"}, stages=[100], min_sample=2)
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    assert fleet.run(rollout_id, rounds=2)["state"] == "running"
    fleet.cp.clock.advance(seconds=601)
    final = fleet.run(rollout_id, rounds=2)
    assert final["state"] == "halted" and final["timed_out"] == 6


def test_pause_resume_approve_and_abort_work_on_a_config_rollout(fleet: ConfigFleet) -> None:
    fleet.enroll(6, ["store=lisbon"])
    r = fleet.create(config={"log_level": "ERROR"}, stages=[50, 100], manual_approval=True)
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    assert fleet.run(rollout_id)["state"] == "awaiting_approval"
    headers = fleet.cp.auth("operator")
    for action, state in (("pause", "paused"), ("resume", "running"), ("approve", "running")):
        r = fleet.cp.client.post(f"/api/v1/rollouts/{rollout_id}/{action}", headers=headers)
        assert r.status_code == 200 and r.json()["state"] == state, r.text
    reached = [d for d in fleet.devices if d.in_force.get("log_level") == "ERROR"]
    assert reached
    r = fleet.cp.client.post(f"/api/v1/rollouts/{rollout_id}/abort", headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "aborted", r.text
    assert "their prior config" in r.json()["reason"]
    for device in fleet.devices:
        device.step()
    assert all(d.in_force.get("log_level") != "ERROR" for d in fleet.devices)


def test_an_overlapping_or_unfoldable_or_invalid_config_rollout_is_refused(
    fleet: ConfigFleet,
) -> None:
    fleet.enroll(3, ["store=lisbon"])
    assert fleet.create(config={"log_level": "DEBUG"}).status_code == 201
    r = fleet.create(config={"log_level": "INFO"})
    assert r.status_code == 409 and "overlaps config rollout" in r.text
    r = fleet.create(cohort="store=lisbon,hw=rpi5", config={"log_level": "INFO"})
    assert r.status_code == 422 and "config rollout's cohort" in r.text
    r = fleet.create(cohort="*", config={"chat": {"max_tokens_default": -3}})
    assert r.status_code == 422 and "/chat/max_tokens_default" in r.text
    r = fleet.create(release="kiosk@1.0", config={"log_level": "INFO"})
    assert r.status_code == 422 and "exactly one" in r.text
