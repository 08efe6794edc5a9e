"""The main flows, each run on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import func, select
from tuf.api.metadata import Metadata, Targets

from control_plane.director.assignment import needs_reissue
from control_plane.services import ControlPlane
from control_plane.storage.models import StatusReportRecord
from protocol import (
    ASSIGNMENT_PAYLOAD_TYPE,
    DIRECTOR_ROOT_FIELD,
    Assignment,
    SignedEnvelope,
    key_id,
    paths,
    public_key_from_hex,
    verify_envelope,
)
from protocol.keys import generate_key_pair
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    enroll_body,
    make_control_plane,
    small_gguf,
)
from tests.live_server import serving


def director_keys_from_root(root: bytes) -> dict[str, object]:
    """What an agent trusts: the director key pinned in root, keyed by protocol key id."""
    field = json.loads(root)["signed"][DIRECTOR_ROOT_FIELD]
    keys = [public_key_from_hex(k["public"]) for k in field["keys"].values()]
    return {key_id(k): k for k in keys}


def test_enroll_publish_assign_report(cp_any_db: ControlPlaneUnderTest, tmp_path: Path) -> None:
    cp = cp_any_db
    device = cp.enroll("kiosk-7", tags=["lobby"])
    assert device.get_assignment().status_code == 204

    model = cp.upload(small_gguf(tmp_path), name="tiny-chat", quantization="F32")
    release = cp.publish([model["id"]], name="assistant", version="1.0.0", temperature=0.2)
    issued = cp.assign(device.id, release["id"])
    assert issued["version"] == 1

    r = device.get_assignment()
    assert r.status_code == 200
    envelope = SignedEnvelope.model_validate(r.json())
    payload = verify_envelope(
        envelope,
        payload_type=ASSIGNMENT_PAYLOAD_TYPE,
        trusted_keys=director_keys_from_root(cp.root),  # type: ignore[arg-type]
    )
    assignment = Assignment.model_validate(payload)
    assert assignment.device_id == device.id
    assert assignment.release_id == release["id"]
    assert (assignment.release_name, assignment.release_version) == ("assistant", "1.0.0")
    assert assignment.config == {"temperature": 0.2}
    (target,) = assignment.targets
    assert (target.name, target.path, target.sha256, target.length) == (
        "tiny-chat",
        model["target_path"],
        model["sha256"],
        model["length"],
    )
    assert (target.kind, target.format) == ("llm", "gguf")
    assert assignment.expires_at - assignment.issued_at == cp.settings.assignment_ttl

    ack = device.report(
        release_id=release["id"], assignment_version=1, state="active", detail="serving"
    )
    assert ack.status_code == 200
    assert ack.json()["duplicate"] is False

    view = cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth("viewer")).json()
    assert view["installed_release"] == {
        "id": release["id"],
        "name": "assistant",
        "version": "1.0.0",
    }
    assert view["installed_assignment_version"] == 1
    assert view["last_status"]["state"] == "active"
    assert view["tags"] == ["lobby"]
    assert view["assignment"]["version"] == 1
    assert view["last_seen_at"] is not None


def test_assignment_versions_only_go_up(cp_any_db: ControlPlaneUnderTest, tmp_path: Path) -> None:
    cp = cp_any_db
    device = cp.enroll()
    a = cp.upload(small_gguf(tmp_path, seed=1), name="a")
    r1 = cp.publish([a["id"]], version="1")
    r2 = cp.publish([a["id"]], version="2")
    versions = [cp.assign(device.id, rel["id"])["version"] for rel in (r1, r2, r1)]
    assert versions == [1, 2, 3]
    payload = json.loads(base64.b64decode(device.get_assignment().json()["payload"]))
    assert (payload["version"], payload["release_id"]) == (3, r1["id"])


def test_assignment_is_reissued_past_half_its_lifetime(
    cp_any_db: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    cp = cp_any_db
    device = cp.enroll()
    art = cp.upload(small_gguf(tmp_path))
    rel = cp.publish([art["id"]])
    first = cp.assign(device.id, rel["id"])
    ttl = cp.settings.assignment_ttl
    cp.clock.advance(seconds=ttl.total_seconds() * 0.4)
    same = SignedEnvelope.model_validate(device.get_assignment().json())
    assert Assignment.model_validate_json(same.payload_bytes()).version == 1
    cp.clock.advance(seconds=ttl.total_seconds() * 0.2)  # now 60% through
    fresh = Assignment.model_validate_json(
        SignedEnvelope.model_validate(device.get_assignment().json()).payload_bytes()
    )
    assert fresh.version == 2
    assert fresh.release_id == rel["id"]
    assert fresh.expires_at > cp.clock()
    assert not needs_reissue(issued_at=fresh.issued_at, expires_at=fresh.expires_at, now=cp.clock())
    assert first["version"] == 1


def test_status_reports_are_stored_exactly_once(
    cp_any_db: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    cp = cp_any_db
    device = cp.enroll()
    report_id = "ab" * 16
    first = device.report(report_id=report_id, state="downloading")
    again = device.report(report_id=report_id, state="downloading")
    assert (first.status_code, first.json()) == (200, {"report_id": report_id, "duplicate": False})
    assert (again.status_code, again.json()) == (200, {"report_id": report_id, "duplicate": True})
    app_state = cp.app.state.control_plane
    with app_state.db.transaction() as session:
        stored = session.scalar(
            select(func.count()).where(StatusReportRecord.report_id == report_id)
        )
    assert stored == 1


def test_one_enrollment_token_enrolls_one_device_even_concurrently(
    cp_any_db: ControlPlaneUnderTest,
) -> None:
    cp = cp_any_db
    token = cp.enrollment_token()
    with serving(cp.app) as base, httpx.Client(base_url=base, timeout=30) as http:

        def attempt(i: int) -> int:
            body = enroll_body(token, generate_key_pair(), name=f"racer-{i}")
            return http.post(paths.ENROLL, json=body).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            codes = sorted(pool.map(attempt, range(6)))
    assert codes == [201, 401, 401, 401, 401, 401]
    devices = cp.client.get("/api/v1/devices", headers=cp.auth("viewer")).json()
    assert len(devices) == 1
    assert devices[0]["name"].startswith("racer-")


def test_concurrent_publishes_lose_no_target(
    cp_any_db: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    cp = cp_any_db
    artifacts = [cp.upload(small_gguf(tmp_path, seed=i), name=f"m{i}") for i in range(6)]
    headers = cp.auth("release-manager")
    with serving(cp.app) as base, httpx.Client(base_url=base, timeout=60) as http:

        def publish(i: int) -> int:
            body = {"name": f"rel{i}", "version": "1", "artifacts": [artifacts[i]["id"]]}
            return http.post("/api/v1/releases", json=body, headers=headers).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            codes = list(pool.map(publish, range(6)))
        assert codes == [201] * 6
        timestamp = http.get("/repo/metadata/timestamp.json").json()
        snapshot_v = timestamp["signed"]["meta"]["snapshot.json"]["version"]
        snapshot = http.get(f"/repo/metadata/{snapshot_v}.snapshot.json").json()
        targets_v = snapshot["signed"]["meta"]["targets.json"]["version"]
        targets = Metadata[Targets].from_bytes(
            http.get(f"/repo/metadata/{targets_v}.targets.json").content
        )
    assert targets_v == 7  # version 1 from init, then one per publish
    assert set(targets.signed.targets) == {a["target_path"] for a in artifacts}


def test_replicas_refreshing_the_timestamp_at_once_agree(
    tmp_path: Path, database_url: str | None
) -> None:
    """Two replicas (separate engines, same database) re-sign a stale timestamp at once:
    exactly one new version is made and every caller is served it."""
    cp = make_control_plane(tmp_path, database_url, timestamp_lifetime_seconds=600)
    replicas = [ControlPlane.build(cp.settings, cp.clock) for _ in range(2)]
    cp.clock.advance(seconds=400)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            served = list(
                pool.map(lambda i: replicas[i % 2].metadata.current_timestamp(cp.clock()), range(6))
            )
    finally:
        for replica in replicas:
            replica.db.dispose()
        cp.app.state.control_plane.db.dispose()
    versions = {json.loads(body)["signed"]["version"] for body in served}
    assert versions == {2}
    assert len(set(served)) == 1
