"""Remote config on the control plane: scoped layers by merge patch (operators only,
audited, refused whole when invalid, naming the JSON pointer and the rule), each device's
signed effective config with a monotonic version, device reports, and the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from control_plane.repository.keyring import Keyring
from protocol import SignedEnvelope, key_id, paths, verify_envelope
from protocol.remote_config import CONFIG_PAYLOAD_TYPE, config_digest
from tests.control_plane.cli_harness import OperatorShell, operator_shell
from tests.control_plane.conftest import ControlPlaneUnderTest, FakeDevice


def set_config(cp: ControlPlaneUnderTest, scope: str, patch: Any, role: str = "operator") -> Any:
    return cp.client.patch(
        f"/api/v1/config/scopes/{quote(scope, safe='')}", json=patch, headers=cp.auth(role)
    )


def fetch(device: FakeDevice) -> Any:
    path = paths.DEVICE_CONFIG
    return device.cp.client.get(path, headers=device.signed_headers("GET", path))


def document(cp: ControlPlaneUnderTest, device: FakeDevice) -> dict[str, Any]:
    r = fetch(device)
    assert r.status_code == 200, r.text
    director = (
        Keyring(
            offline_dir=cp.settings.resolved_offline_keys_dir,
            online_dir=cp.settings.online_keys_dir,
        )
        .load_online()
        .director
    )
    return verify_envelope(
        SignedEnvelope.model_validate_json(r.content),
        payload_type=CONFIG_PAYLOAD_TYPE,
        trusted_keys={key_id(director.public): director.public},
    )


def report(device: FakeDevice, version: int, state: str, detail: str = "") -> Any:
    body = json.dumps(
        {
            "report_id": uuid.uuid4().hex,
            "device_id": device.id,
            "config_version": version,
            "state": state,
            "detail": detail,
            "at": device.cp.clock().isoformat(),
        }
    ).encode()
    path = paths.DEVICE_CONFIG_STATUS
    return device.cp.client.post(
        path,
        content=body,
        headers={**device.signed_headers("POST", path, body), "Content-Type": "application/json"},
    )


def test_fleet_tag_device_layers_merge_per_device(cp_any_db: ControlPlaneUnderTest) -> None:
    cp = cp_any_db
    lisbon = cp.enroll("lisbon-1", tags=["store=lisbon"])
    porto = cp.enroll("porto-1", tags=["store=porto"])
    assert set_config(cp, "fleet", {"chat": {"max_tokens_default": 256}}).status_code == 200
    r = set_config(cp, "tag:store=lisbon", {"rag": {"min_similarity": 0.35}})
    assert r.status_code == 200, r.text
    assert r.json()["devices_reached"] == 1
    set_config(cp, f"device:{porto.id}", {"log_level": "DEBUG", "chat": {"max_tokens_default": 64}})

    def effective(device: FakeDevice) -> Any:
        r = cp.client.get(f"/api/v1/devices/{device.id}/config", headers=cp.auth("viewer"))
        assert r.status_code == 200, r.text
        return r.json()

    assert effective(lisbon)["effective"] == {
        "chat": {"max_tokens_default": 256},
        "rag": {"min_similarity": 0.35},
    }
    assert effective(porto)["effective"] == {
        "chat": {"max_tokens_default": 64},
        "log_level": "DEBUG",
    }
    assert [x["scope"] for x in effective(porto)["layers"]] == ["fleet", f"device:{porto.id}"]


def test_null_removes_a_key_and_each_change_is_a_new_audited_version(
    cp: ControlPlaneUnderTest,
) -> None:
    set_config(cp, "fleet", {"chat": {"max_tokens_default": 256, "system_prompt": "Be brief."}})
    r = set_config(cp, "fleet", {"chat": {"system_prompt": None}})
    assert r.json()["layer"] == {**r.json()["layer"], "version": 2}
    assert r.json()["layer"]["settings"] == {"chat": {"max_tokens_default": 256}}
    history = cp.client.get("/api/v1/config/history", headers=cp.auth("viewer")).json()
    assert [h["version"] for h in history] == [2, 1]
    entries = [e for e in cp.audit() if e["action"] == "config.set"]
    assert [e["details"]["version"] for e in entries] == [2, 1]
    assert entries[0]["target"] == "fleet"
    assert entries[0]["details"]["patch"] == {"chat": {"system_prompt": None}}


@pytest.mark.parametrize(
    ("patch", "pointer", "rule"),
    [
        ({"chat": {"max_token_default": 256}}, "/chat/max_token_default", "unknown key"),
        ({"rag": {"min_similarity": 2}}, "/rag/min_similarity", "less than or equal to 1"),
        ({"log_level": "LOUD"}, "/log_level", "literal_error"),
        ({"chat": {"max_tokens_default": "256"}}, "/chat/max_tokens_default", "int_type"),
    ],
)
def test_an_invalid_change_is_refused_whole_naming_pointer_and_rule(
    cp: ControlPlaneUnderTest, patch: dict[str, Any], pointer: str, rule: str
) -> None:
    set_config(cp, "fleet", {"log_level": "INFO"})
    r = set_config(cp, "fleet", {**patch, "telemetry": {"enabled": False}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_config"
    message = r.json()["error"]["message"]
    assert pointer in message and rule in message
    history = cp.client.get("/api/v1/config/history", headers=cp.auth("viewer")).json()
    assert [h["settings"] for h in history] == [{"log_level": "INFO"}]  # nothing changed


def test_a_malformed_scope_or_an_unknown_device_is_refused(cp: ControlPlaneUnderTest) -> None:
    assert set_config(cp, "group:x", {"log_level": "INFO"}).status_code == 422
    assert set_config(cp, "tag:store", {"log_level": "INFO"}).status_code == 422
    assert set_config(cp, "device:nope", {"log_level": "INFO"}).status_code == 404


def test_only_operators_change_config(cp: ControlPlaneUnderTest) -> None:
    assert set_config(cp, "fleet", {"log_level": "INFO"}, role="viewer").status_code == 403
    assert set_config(cp, "fleet", {"log_level": "INFO"}, role="release-manager").status_code == 403
    r = cp.client.patch("/api/v1/config/scopes/fleet", json={"log_level": "INFO"})
    assert r.status_code == 401


def test_the_device_gets_its_config_signed_with_a_monotonic_version(
    cp_any_db: ControlPlaneUnderTest,
) -> None:
    cp = cp_any_db
    device = cp.enroll()
    assert fetch(device).status_code == 204  # no layer applies yet
    set_config(cp, "fleet", {"chat": {"max_tokens_default": 256}})
    first = document(cp, device)
    assert first["device_id"] == device.id
    assert first["version"] == 1
    assert first["settings"] == {"chat": {"max_tokens_default": 256}}
    assert first["digest"] == config_digest(first["settings"])
    assert document(cp, device)["version"] == 1  # unchanged: the same version again
    set_config(cp, "fleet", {"chat": {"max_tokens_default": 128}})
    assert document(cp, device)["version"] == 2
    cp.clock.advance(days=4)  # past half the lifetime: re-signed as a new version
    renewed = document(cp, device)
    assert renewed["version"] == 3
    assert renewed["settings"] == {"chat": {"max_tokens_default": 128}}


def test_device_reports_show_per_device_status(cp: ControlPlaneUnderTest) -> None:
    a, b = cp.enroll("a"), cp.enroll("b")
    set_config(cp, "fleet", {"log_level": "WARNING"})
    version = document(cp, a)["version"]
    assert report(a, version, "applied", f"config applied v{version}").json()["duplicate"] is False
    document(cp, b)
    report(b, 1, "rejected", "rejected: does not fit this agent's schema")
    view_a = cp.client.get(f"/api/v1/devices/{a.id}/config", headers=cp.auth("viewer")).json()
    view_b = cp.client.get(f"/api/v1/devices/{b.id}/config", headers=cp.auth("viewer")).json()
    assert view_a["status"]["state"] == "applied" and view_a["in_sync"] is True
    assert view_b["status"]["state"] == "rejected" and view_b["in_sync"] is False
    assert "schema" in view_b["status"]["detail"]


def test_a_device_reports_only_about_itself(cp: ControlPlaneUnderTest) -> None:
    a, b = cp.enroll("a"), cp.enroll("b")
    body = json.dumps(
        {
            "report_id": uuid.uuid4().hex,
            "device_id": b.id,
            "config_version": 1,
            "state": "applied",
            "at": cp.clock().isoformat(),
        }
    ).encode()
    path = paths.DEVICE_CONFIG_STATUS
    r = cp.client.post(
        path,
        content=body,
        headers={**a.signed_headers("POST", path, body), "Content-Type": "application/json"},
    )
    assert r.status_code == 403


@pytest.fixture
def sh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[OperatorShell]:
    with operator_shell(tmp_path, capsys) as shell:
        yield shell


def test_cli_config_set_show_history(sh: OperatorShell) -> None:
    device = sh.cp.enroll("kiosk", tags=["store=lisbon"])
    r = sh.run(
        "config",
        "set",
        "--scope",
        "fleet",
        '{"chat": {"max_tokens_default": 256}}',
        role="operator",
    )
    assert r.data["layer"]["version"] == 1
    sh.run(
        "config",
        "set",
        "--scope",
        "tag:store=lisbon",
        '{"rag": {"min_similarity": 0.35}}',
        role="operator",
    )
    sh.run(
        "config", "set", "--scope", f"device:{device.id}", '{"log_level": "DEBUG"}', role="operator"
    )
    shown = sh.run("config", "show", "--device", device.id, "--effective", role="viewer")
    assert shown.data == {
        "chat": {"max_tokens_default": 256},
        "rag": {"min_similarity": 0.35},
        "log_level": "DEBUG",
    }
    text = sh.run("config", "show", "--device", device.id, role="viewer", json_mode=False)
    assert "fleet v1; tag:store=lisbon v1; device:" in text.out
    history = sh.run("config", "history", role="viewer").data
    assert [h["scope"] for h in history] == [f"device:{device.id}", "tag:store=lisbon", "fleet"]
    bad = sh.run(
        "config", "set", "--scope", "fleet", '{"chat": {"max_tokens_default": 0}}', role="operator"
    )
    assert bad.code != 0
    assert "/chat/max_tokens_default" in bad.err
    listed = sh.run("devices", "list", role="viewer").data
    assert [d["id"] for d in listed] == [device.id]
