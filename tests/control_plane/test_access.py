"""Operator API tokens and roles: who may do what."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from control_plane.access.roles import Permission, Role, permissions_of
from control_plane.storage.models import ApiToken
from tests.control_plane.conftest import ControlPlaneUnderTest

# (method, path, json body, permission the route needs)
ROUTES = [
    ("GET", "/api/v1/devices", None, Permission.READ),
    ("GET", "/api/v1/releases", None, Permission.READ),
    ("POST", "/api/v1/enrollment-tokens", {}, Permission.ENROLL),
    ("POST", "/api/v1/devices/dev_x/assignment", {"release_id": "rel_x"}, Permission.ASSIGN),
    (
        "POST",
        "/api/v1/releases",
        {"name": "r", "version": "1", "artifacts": ["a"]},
        Permission.PUBLISH,
    ),
    ("POST", "/api/v1/tokens", {"name": "n", "role": "viewer"}, Permission.ADMINISTER),
    ("GET", "/api/v1/audit", None, Permission.ADMINISTER),
]


@pytest.mark.parametrize("role", [r.value for r in Role if r is not Role.ADMIN])
def test_each_role_reaches_exactly_its_routes(cp: ControlPlaneUnderTest, role: str) -> None:
    headers = cp.auth(role)
    for method, path, body, permission in ROUTES:
        r = cp.client.request(method, path, json=body, headers=headers)
        allowed = permission in permissions_of(Role(role))
        if allowed:
            assert r.status_code != 403, (role, path, r.text)
        else:
            assert r.status_code == 403, (role, path, r.text)
            assert r.json()["error"]["type"] == "permission_denied"
            assert role in r.json()["error"]["message"]


def test_release_manager_cannot_upload_as_operator(cp: ControlPlaneUnderTest) -> None:
    r = cp.client.post(
        "/api/v1/artifacts",
        params={"name": "m", "kind": "llm", "format": "gguf"},
        content=b"GGUF",
        headers=cp.auth("operator"),
    )
    assert r.status_code == 403


def test_missing_or_unknown_token_is_401(cp: ControlPlaneUnderTest) -> None:
    missing = cp.client.get("/api/v1/devices")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in missing.json()["error"]["message"]
    unknown = cp.client.get("/api/v1/devices", headers={"Authorization": "Bearer ocp_nope"})
    assert unknown.status_code == 401
    assert "ocp_nope" not in unknown.text


def test_only_a_hash_of_a_token_is_stored(cp: ControlPlaneUnderTest) -> None:
    r = cp.client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=cp.auth())
    assert r.status_code == 201
    secret = r.json()["token"]
    assert cp.client.get(
        "/api/v1/devices", headers={"Authorization": f"Bearer {secret}"}
    ).is_success
    with cp.app.state.control_plane.db.transaction() as session:
        rows = session.scalars(select(ApiToken)).all()
    stored = [(t.token_hash, t.name) for t in rows]
    assert all(secret not in h and cp.admin_token not in h for h, _ in stored)
    assert {n for _, n in stored} == {"admin", "ci"}


def test_unknown_role_is_refused_with_the_choices(cp: ControlPlaneUnderTest) -> None:
    r = cp.client.post("/api/v1/tokens", json={"name": "x", "role": "root"}, headers=cp.auth())
    assert r.status_code == 422
    assert "release-manager" in r.json()["error"]["message"]


def test_malformed_json_is_400(cp: ControlPlaneUnderTest) -> None:
    r = cp.client.post(
        "/api/v1/tokens",
        content=b"{not json",
        headers={**cp.auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json"
