"""Secrets never reach the control plane's output: a real ``serve`` process, real operator
actions (and failed ones) with real tokens, then every byte it printed is searched."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from protocol.keys import generate_key_pair, load_private_key
from protocol.messages import EnrollRequest, HardwareFacts
from tests.control_plane.conftest import small_gguf
from tests.control_plane.test_cli import ROOT, free_port, init


def _start(data: Path, port: int) -> subprocess.Popen[bytes]:
    # debug is the most talkative level an operator can choose; nothing secret may show there
    env = {**os.environ, "OUTPOST_CP_LOG_LEVEL": "debug"}
    command = [sys.executable, "-m", "control_plane", "serve"]
    return subprocess.Popen(
        [*command, "--data-dir", str(data), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_healthy(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=2).raise_for_status()
            return
        except httpx.TransportError:
            assert proc.poll() is None, "the control plane exited during startup"
            assert time.monotonic() < deadline, "the control plane did not come up in 30 s"
            time.sleep(0.1)


def _private_key_forms(keys_dir: Path) -> dict[str, bytes]:
    """Each key file's PEM, its base64 body line and its raw private bytes in hex."""
    forms: dict[str, bytes] = {}
    for path in sorted(keys_dir.rglob("*.key")):
        pem = path.read_bytes()
        body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
        raw = load_private_key(path).private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        forms[f"{path.name} PEM"] = pem
        forms[f"{path.name} PEM body"] = body
        forms[f"{path.name} raw hex"] = raw.hex().encode()
    return forms


def _leaks(secrets_by_name: dict[str, bytes], sources: dict[str, bytes]) -> list[str]:
    return [
        f"{name} appears in {where}"
        for name, secret in secrets_by_name.items()
        for where, content in sources.items()
        if secret in content
    ]


@pytest.mark.slow
def test_no_token_or_private_key_appears_in_output_or_files(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    code, out, init_stderr = init(data)
    assert code == 0, init_stderr
    admin = out["admin_token"]
    wrong_bearer = f"ocp_{secrets.token_urlsafe(32)}"
    wrong_enrollment = f"oet_{secrets.token_urlsafe(32)}"
    device_key = generate_key_pair()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(data, port)
    try:
        _wait_healthy(proc, base)
        with httpx.Client(base_url=base, timeout=30) as http:
            as_admin = {"Authorization": f"Bearer {admin}"}
            created = http.post(
                "/api/v1/tokens", headers=as_admin, json={"name": "ci", "role": "release-manager"}
            )
            assert created.status_code == 201, created.text
            publisher_token = created.json()["token"]
            as_publisher = {"Authorization": f"Bearer {publisher_token}"}

            enrollment = http.post(
                "/api/v1/enrollment-tokens", headers=as_admin, json={"tags": ["lobby"]}
            )
            assert enrollment.status_code == 201, enrollment.text
            enrollment_token = enrollment.json()["token"]

            def enroll_request(token: str) -> str:
                return EnrollRequest(
                    token=token,
                    device_public_key=device_key.public_hex,
                    name="kiosk-7",
                    hardware=HardwareFacts(arch="x86_64", os="linux", cpu_count=2, ram_mb=4096),
                ).model_dump_json()

            json_body = {"Content-Type": "application/json"}
            refused = http.post(
                "/api/v1/devices/enroll",
                content=enroll_request(wrong_enrollment),
                headers=json_body,
            )
            assert refused.status_code == 401, refused.text
            enrolled = http.post(
                "/api/v1/devices/enroll",
                content=enroll_request(enrollment_token),
                headers=json_body,
            )
            assert enrolled.status_code == 201, enrolled.text
            device_id = enrolled.json()["device_id"]
            reused = http.post(
                "/api/v1/devices/enroll",
                content=enroll_request(enrollment_token),
                headers=json_body,
            )
            assert reused.status_code in (401, 409), reused.text

            artifact = http.post(
                "/api/v1/artifacts",
                params={"name": "tiny", "kind": "llm", "format": "gguf"},
                content=small_gguf(tmp_path),
                headers=as_publisher,
            )
            assert artifact.status_code == 201, artifact.text
            release = http.post(
                "/api/v1/releases",
                headers=as_publisher,
                json={
                    "name": "assistant",
                    "version": "1.0.0",
                    "artifacts": [artifact.json()["id"]],
                },
            )
            assert release.status_code == 201, release.text
            assert release.json()["state"] == "published"
            assigned = http.post(
                f"/api/v1/devices/{device_id}/assignment",
                headers=as_admin,
                json={"release_id": release.json()["id"]},
            )
            assert assigned.status_code == 201, assigned.text

            as_stranger = {"Authorization": f"Bearer {wrong_bearer}"}
            assert http.get("/api/v1/devices", headers=as_stranger).status_code == 401
            assert http.post("/api/v1/tokens", headers=as_stranger, json={}).status_code == 401
            # a release manager may not create tokens: 403 must not echo the caller's token
            forbidden = http.post(
                "/api/v1/tokens", headers=as_publisher, json={"name": "x", "role": "admin"}
            )
            assert forbidden.status_code == 403, forbidden.text
            malformed = {"Authorization": f"Token {admin}"}
            assert http.get("/api/v1/devices", headers=malformed).status_code == 401
            assert http.get("/repo/metadata/timestamp.json").status_code == 200
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=15)

    assert b"POST /api/v1/devices/enroll" in stderr + stdout, "the server logged no requests"
    sources = {"serve stdout": stdout, "serve stderr": stderr, "init stderr": init_stderr.encode()}
    for path in sorted(data.rglob("*")):
        if path.is_file() and "keys" not in path.relative_to(data).parts:
            sources[str(path.relative_to(data))] = path.read_bytes()
    assert any(name.endswith(".db") for name in sources), "the database file was not searched"
    tokens = {
        "admin token": admin,
        "created API token": publisher_token,
        "enrollment token": enrollment_token,
        "wrong bearer token": wrong_bearer,
        "wrong enrollment token": wrong_enrollment,
    }
    secrets_by_name = {name: value.encode() for name, value in tokens.items()}
    # the token body without its recognisable prefix, in case something strips it
    secrets_by_name |= {f"{n} (body)": v.encode().split(b"_", 1)[1] for n, v in tokens.items()}
    secrets_by_name |= _private_key_forms(data / "keys")
    device_raw = device_key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    secrets_by_name["device private key raw hex"] = device_raw.hex().encode()
    assert len(secrets_by_name) == 10 + 3 * 5 + 1
    assert _leaks(secrets_by_name, sources) == []
