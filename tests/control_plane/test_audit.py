"""Every mutating operator action and every enrollment leaves an audit entry."""

from __future__ import annotations

from pathlib import Path

from tests.control_plane.conftest import ControlPlaneUnderTest, small_gguf


def test_each_mutating_action_is_audited(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    operator = cp.auth("operator")  # api_token.create
    cp.auth("release-manager")  # api_token.create
    device = cp.enroll()  # enrollment_token.create, device.enroll
    art = cp.upload(small_gguf(tmp_path))  # artifact.upload
    rel = cp.publish([art["id"]])  # release.publish
    cp.assign(device.id, rel["id"])  # assignment.create
    device.report(release_id=rel["id"], assignment_version=1)  # a device report: not audited
    entries = list(reversed(cp.audit()))
    actions = [e["action"] for e in entries]
    assert actions == [
        "control_plane.init",
        "api_token.create",
        "api_token.create",
        "enrollment_token.create",
        "device.enroll",
        "artifact.upload",
        "release.publish",
        "assignment.create",
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["device.enroll"]["target"] == device.id
    assert by_action["release.publish"]["target"] == rel["id"]
    assert by_action["assignment.create"]["details"]["version"] == 1
    assert by_action["artifact.upload"]["details"]["sha256"] == art["sha256"]
    assert by_action["assignment.create"]["actor"].startswith("token:t-operator")
    assert operator["Authorization"].removeprefix("Bearer ") not in str(entries)
    assert cp.admin_token not in str(entries)


def test_refused_actions_are_not_audited_as_done(cp: ControlPlaneUnderTest) -> None:
    headers = cp.auth("release-manager")
    before = cp.audit()
    r = cp.client.post(
        "/api/v1/releases", json={"name": "r", "version": "1", "artifacts": ["x"]}, headers=headers
    )
    assert r.status_code == 422
    assert cp.audit() == before


def test_audit_log_pages_newest_first(cp: ControlPlaneUnderTest) -> None:
    for role in ("viewer", "operator", "release-manager"):
        cp.auth(role)
    newest = cp.client.get("/api/v1/audit", params={"limit": 2}, headers=cp.auth()).json()
    assert len(newest) == 2
    assert newest[0]["id"] > newest[1]["id"]
    older = cp.client.get(
        "/api/v1/audit", params={"before_id": newest[1]["id"]}, headers=cp.auth()
    ).json()
    assert [e["id"] for e in older] == sorted((e["id"] for e in older), reverse=True)
    assert all(e["id"] < newest[1]["id"] for e in older)
    assert older[-1]["action"] == "control_plane.init"
