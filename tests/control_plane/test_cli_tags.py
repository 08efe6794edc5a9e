"""Device tags: ``PATCH /api/v1/devices/{id}/tags`` and ``outpost-cp devices tag``.

A device has one value per key (cohorts select on them), only operators retag, every
change is audited with before and after, and a malformed edit says which entry is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from control_plane.fleet.tags import retag_device
from tests.control_plane.cli_harness import OperatorShell, operator_shell
from tests.control_plane.conftest import ControlPlaneUnderTest


@pytest.fixture
def sh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[OperatorShell]:
    with operator_shell(tmp_path, capsys) as shell:
        yield shell


def retag(cp: ControlPlaneUnderTest, device_id: str, role: str = "operator", **body: Any) -> Any:
    return cp.client.patch(f"/api/v1/devices/{device_id}/tags", json=body, headers=cp.auth(role))


def test_adding_a_key_replaces_its_value_and_remove_takes_a_tag_or_a_key(
    cp_any_db: ControlPlaneUnderTest,
) -> None:
    cp = cp_any_db
    device = cp.enroll(tags=["store=porto", "lobby"])
    r = retag(cp, device.id, add=["hw=rpi5", "store=lisbon"], remove=["lobby"])
    assert r.status_code == 200, r.text
    assert r.json()["id"] == device.id
    assert r.json()["tags"] == ["hw=rpi5", "store=lisbon"]

    r = retag(cp, device.id, remove=["store=porto"])  # not its value: nothing to remove
    assert r.json()["tags"] == ["hw=rpi5", "store=lisbon"]
    r = retag(cp, device.id, remove=["store"])
    assert r.json()["tags"] == ["hw=rpi5"]
    shown = cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth("viewer")).json()
    assert shown["tags"] == ["hw=rpi5"]


def test_tagging_is_audited_with_before_and_after(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll(tags=["store=porto"])
    assert retag(cp, device.id, add=["store=lisbon"]).status_code == 200
    assert retag(cp, device.id, add=["store=lisbon"]).status_code == 200  # no change
    entries = [e for e in cp.audit() if e["action"] == "device.tag"]
    assert len(entries) == 1
    (entry,) = entries
    assert entry["target"] == device.id
    assert entry["actor"].startswith("token:t-operator(")
    assert entry["details"] == {"before": ["store=porto"], "after": ["store=lisbon"]}


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({"add": ["lobby"]}, "add[0]", "'lobby' is not key=value"),
        ({"add": ["hw=rpi5", "store=a b"]}, "add[1]", "the value of 'store=a b' may only hold"),
        ({"add": ["st/ore=x"]}, "add[0]", "the key of 'st/ore=x' may only hold"),
        ({"add": ["=x"]}, "add[0]", "'=x' has an empty key"),
        ({"add": ["hw="]}, "add[0]", "'hw=' has an empty value"),
        ({"add": ["k" * 65 + "=v"]}, "add[0]", "is longer than 64"),
        ({"add": ["k=" + "v" * 129]}, "add[0]", "is longer than 128"),
        ({"add": ["store=a", "store=b"]}, "add[1]", "key 'store' is also in add[0]"),
        ({"remove": ["bad key"]}, "remove[0]", "may only hold"),
        ({"add": ["hw=x"], "remove": ["hw=x"]}, "remove[0]", "'hw=x' is also in add"),
        ({}, "add", "nothing to change"),
    ],
)
def test_a_malformed_tag_edit_names_the_entry_and_the_reason(
    cp: ControlPlaneUnderTest, body: dict[str, Any], field: str, why: str
) -> None:
    device = cp.enroll(tags=["store=porto"])
    r = retag(cp, device.id, **body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_tag"
    assert error["message"].startswith(f"{field}: ")
    assert why in error["message"]
    assert cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth()).json()["tags"] == [
        "store=porto"
    ]


def test_a_device_carries_at_most_32_tags(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll(tags=[f"k{i}=v" for i in range(30)])
    r = retag(cp, device.id, add=["a=1", "b=2", "c=3"])
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "add: a device carries at most 32 tags; this edit leaves 33"
    )
    assert retag(cp, device.id, add=["a=1", "b=2", "k0=w"]).json()["tags"][-1] == "k9=v"
    too_many = retag(cp, device.id, add=[f"x{i}=1" for i in range(33)])
    assert too_many.status_code == 422
    assert too_many.json()["error"]["message"].startswith("add: List should have at most 32")


def test_unknown_fields_are_refused(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    r = retag(cp, device.id, set=["hw=rpi5"])
    assert r.status_code == 422
    assert "set: Extra inputs are not permitted" in r.json()["error"]["message"]


@pytest.mark.parametrize("role", ["viewer", "release-manager"])
def test_only_operators_retag(cp: ControlPlaneUnderTest, role: str) -> None:
    device = cp.enroll(tags=["store=porto"])
    r = retag(cp, device.id, role=role, add=["store=lisbon"])
    assert r.status_code == 403
    assert f"role {role!r} may not assign" in r.json()["error"]["message"]
    assert "device.tag" not in [e["action"] for e in cp.audit()]


def test_retagging_an_unknown_device_is_404(cp: ControlPlaneUnderTest) -> None:
    r = retag(cp, "dev_nope", add=["hw=rpi5"])
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "no device with id 'dev_nope'"


def test_concurrent_tag_edits_lose_none(cp_any_db: ControlPlaneUnderTest) -> None:
    cp = cp_any_db
    device = cp.enroll()
    db = cp.app.state.control_plane.db

    def add(i: int) -> None:
        retag_device(db, device.id, add=[f"k{i}=v"], remove=(), actor="test", now=cp.clock())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(add, range(24)))
    shown = cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth()).json()
    assert sorted(shown["tags"]) == sorted(f"k{i}=v" for i in range(24))
    assert len([e for e in cp.audit() if e["action"] == "device.tag"]) == 24


# --- the command --------------------------------------------------------------------------


def test_devices_tag_command_adds_replaces_and_removes(sh: OperatorShell) -> None:
    device = sh.cp.enroll(tags=["store=porto", "lobby"])
    run = sh.run("devices", "tag", device.id, "hw=rpi5", "store=lisbon", "--remove", "lobby",
                 role="operator")  # fmt: skip
    assert run.data["tags"] == ["hw=rpi5", "store=lisbon"]
    readable = sh.run("devices", "tag", device.id, "--remove", "hw", json_mode=False)
    assert readable.out.strip() == f"{device.id} tags: store=lisbon"
    (entry, *_) = sh.run("audit").data
    assert entry["action"] == "device.tag"
    assert entry["details"] == {"before": ["hw=rpi5", "store=lisbon"], "after": ["store=lisbon"]}


def test_devices_tag_command_shows_why_a_tag_is_refused(sh: OperatorShell) -> None:
    device = sh.cp.enroll()
    run = sh.run("devices", "tag", device.id, "hw=rpi5", "lobby", role="operator")
    assert run.code == 1
    assert "add[1]: 'lobby' is not key=value (HTTP 422 invalid_tag)" in run.err
    viewer = sh.run("devices", "tag", device.id, "hw=rpi5", role="viewer")
    assert viewer.code == 1
    assert "role 'viewer' may not assign" in viewer.err and "HTTP 403" in viewer.err
