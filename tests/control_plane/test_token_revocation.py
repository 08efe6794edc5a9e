"""Revoking operator API tokens (SQLite and PostgreSQL)."""

from __future__ import annotations

from tests.control_plane.conftest import ControlPlaneUnderTest


def _token(cp: ControlPlaneUnderTest, name: str, role: str) -> tuple[str, str]:
    r = cp.client.post("/api/v1/tokens", json={"name": name, "role": role}, headers=cp.auth())
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["token"]


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_revoked_token_gets_401_revoked_and_the_revocation_is_audited(
    cp_any_db: ControlPlaneUnderTest,
) -> None:
    cp = cp_any_db
    token_id, secret = _token(cp, "ci-deployer", "operator")
    assert cp.client.get("/api/v1/devices", headers=_bearer(secret)).status_code == 200

    r = cp.client.delete(f"/api/v1/tokens/{token_id}", headers=cp.auth())
    assert r.status_code == 200, r.text
    assert r.json()["id"] == token_id
    assert r.json()["revoked_at"] is not None

    refused = cp.client.get("/api/v1/devices", headers=_bearer(secret))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]
    unknown = cp.client.get("/api/v1/devices", headers=_bearer("ocp_not-a-token"))
    assert unknown.status_code == 401
    assert "revoked" not in unknown.json()["error"]["message"]

    again = cp.client.delete(f"/api/v1/tokens/{token_id}", headers=cp.auth())
    assert again.status_code == 409
    assert "already revoked" in again.json()["error"]["message"]
    (entry,) = [e for e in cp.audit() if e["action"] == "api_token.revoke"]
    assert entry["target"] == token_id
    assert entry["actor"].startswith("token:admin(")
    assert entry["details"] == {"name": "ci-deployer", "role": "operator"}


def test_listing_tokens_shows_state_but_never_secrets(cp_any_db: ControlPlaneUnderTest) -> None:
    cp = cp_any_db
    token_id, secret = _token(cp, "viewer-bot", "viewer")
    cp.client.delete(f"/api/v1/tokens/{token_id}", headers=cp.auth())
    r = cp.client.get("/api/v1/tokens", headers=cp.auth())
    assert r.status_code == 200
    rows = {t["name"]: t for t in r.json()}
    assert set(rows) == {"admin", "viewer-bot"}
    assert rows["admin"]["revoked_at"] is None
    assert rows["viewer-bot"]["revoked_at"] is not None
    public_fields = {"id", "name", "role", "created_at", "created_by", "revoked_at"}
    assert set(rows["viewer-bot"]) == public_fields
    assert secret not in r.text
    assert cp.admin_token not in r.text


def test_the_last_active_admin_token_cannot_be_revoked(cp_any_db: ControlPlaneUnderTest) -> None:
    cp = cp_any_db
    tokens = cp.client.get("/api/v1/tokens", headers=cp.auth()).json()
    (first_admin,) = [t["id"] for t in tokens if t["role"] == "admin"]
    refused = cp.client.delete(f"/api/v1/tokens/{first_admin}", headers=cp.auth())
    assert refused.status_code == 409
    assert "last active admin" in refused.json()["error"]["message"]
    assert cp.client.get("/api/v1/devices", headers=cp.auth()).status_code == 200

    # With a second admin, the first may go (even revoking itself) ...
    second_id, second_secret = _token(cp, "admin-2", "admin")
    assert cp.client.delete(f"/api/v1/tokens/{first_admin}", headers=cp.auth()).status_code == 200
    assert cp.client.get("/api/v1/devices", headers=cp.auth()).status_code == 401
    # ... but then the second is the last one.
    last = cp.client.delete(f"/api/v1/tokens/{second_id}", headers=_bearer(second_secret))
    assert last.status_code == 409
    assert cp.client.get("/api/v1/tokens", headers=_bearer(second_secret)).status_code == 200


def test_only_admins_list_or_revoke_and_unknown_ids_are_404(
    cp_any_db: ControlPlaneUnderTest,
) -> None:
    cp = cp_any_db
    token_id, _ = _token(cp, "viewer-bot", "viewer")
    operator = cp.auth("operator")
    assert cp.client.get("/api/v1/tokens", headers=operator).status_code == 403
    assert cp.client.delete(f"/api/v1/tokens/{token_id}", headers=operator).status_code == 403
    missing = cp.client.delete("/api/v1/tokens/tok_missing", headers=cp.auth())
    assert missing.status_code == 404
    assert "tok_missing" in missing.json()["error"]["message"]
    assert [e for e in cp.audit() if e["action"] == "api_token.revoke"] == []
