"""Fixtures: an initialized control plane (SQLite or PostgreSQL), clients, a fake fleet."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.ops.initialization import initialize
from control_plane.settings import ControlPlaneSettings
from protocol import paths
from protocol.device_auth import sign_device_request
from protocol.keys import Ed25519KeyPair, generate_key_pair
from tests.requirements import require_postgres, smollm2_gguf_path

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


class ManualClock:
    """Time that tests move by hand; starts at the real now (TUF clients check real time)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# --- databases -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A uniquely named database for this test session, dropped afterwards."""
    name = f"outpost_cp_test_{uuid.uuid4().hex[:12]}"
    require_postgres(PG_ADMIN_DSN)  # a skip on a developer's box, a failure under CI
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_postgres(url: str) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None means the default SQLite file in the data dir; else an emptied PostgreSQL db."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url


# --- an initialized control plane --------------------------------------------------------


@dataclass
class ControlPlaneUnderTest:
    settings: ControlPlaneSettings
    admin_token: str
    root: bytes
    clock: ManualClock
    app: FastAPI
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str = "admin") -> dict[str, str]:
        if role == "admin":
            return {"Authorization": f"Bearer {self.admin_token}"}
        if role not in self.tokens:
            r = self.client.post(
                "/api/v1/tokens", json={"name": f"t-{role}", "role": role}, headers=self.auth()
            )
            assert r.status_code == 201, r.text
            self.tokens[role] = r.json()["token"]
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    # fleet actions ------------------------------------------------------------------

    def enrollment_token(self, **body: Any) -> str:
        r = self.client.post("/api/v1/enrollment-tokens", json=body, headers=self.auth("operator"))
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def enroll(self, name: str = "kiosk-1", tags: list[str] | None = None) -> FakeDevice:
        key = generate_key_pair()
        r = self.client.post(
            paths.ENROLL, json=enroll_body(self.enrollment_token(), key, name, tags)
        )
        assert r.status_code == 201, r.text
        return FakeDevice(r.json()["device_id"], key, self)

    def upload(
        self, data: bytes, name: str = "model", kind: str = "llm", fmt: str = "gguf", **extra: str
    ) -> dict[str, Any]:
        r = self.client.post(
            "/api/v1/artifacts",
            params={"name": name, "kind": kind, "format": fmt, **extra},
            content=data,
            headers=self.auth("release-manager"),
        )
        assert r.status_code in (200, 201), r.text
        body: dict[str, Any] = r.json()
        return body

    def publish(
        self, artifact_ids: list[str], name: str = "assistant", version: str = "1.0.0", **cfg: Any
    ) -> dict[str, Any]:
        r = self.client.post(
            "/api/v1/releases",
            json={"name": name, "version": version, "artifacts": artifact_ids, "config": cfg},
            headers=self.auth("release-manager"),
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def assign(self, device_id: str, release_id: str) -> dict[str, Any]:
        r = self.client.post(
            f"/api/v1/devices/{device_id}/assignment",
            json={"release_id": release_id},
            headers=self.auth("operator"),
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def audit(self) -> list[dict[str, Any]]:
        r = self.client.get("/api/v1/audit", params={"limit": 1000}, headers=self.auth())
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()
        return entries


@dataclass
class FakeDevice:
    """The device side of the protocol, driven by the test (the agent is tested elsewhere)."""

    id: str
    key: Ed25519KeyPair
    cp: ControlPlaneUnderTest

    def signed_headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        header = sign_device_request(
            self.key, self.id, method, path, body, self.cp.clock().timestamp()
        )
        return {"Authorization": header}

    def get_assignment(self) -> Any:
        path = paths.DEVICE_ASSIGNMENT
        return self.cp.client.get(path, headers=self.signed_headers("GET", path))

    def report(self, **fields: Any) -> Any:
        report = {
            "report_id": uuid.uuid4().hex,
            "device_id": self.id,
            "state": "active",
            "at": self.cp.clock().isoformat(),
            **fields,
        }
        body = json.dumps(report).encode()
        path = paths.DEVICE_STATUS
        return self.cp.client.post(
            path,
            content=body,
            headers={**self.signed_headers("POST", path, body), "Content-Type": "application/json"},
        )


def enroll_body(
    token: str, key: Ed25519KeyPair, name: str = "kiosk-1", tags: list[str] | None = None
) -> dict[str, Any]:
    return {
        "token": token,
        "device_public_key": key.public_hex,
        "name": name,
        "hardware": {"arch": "x86_64", "os": "linux", "cpu_count": 2, "ram_mb": 4096},
        "tags": tags or [],
    }


def make_control_plane(
    tmp_path: Path,
    database_url: str | None = None,
    *,
    start: datetime | None = None,
    **overrides: Any,
) -> ControlPlaneUnderTest:
    settings = ControlPlaneSettings(
        data_dir=tmp_path / "cp", database_url=database_url, **overrides
    )
    clock = ManualClock(start)
    result = initialize(settings, clock())
    app = create_app(settings, clock=clock)
    return ControlPlaneUnderTest(
        settings=settings,
        admin_token=result.admin_token,
        root=Path(result.root_path).read_bytes(),
        clock=clock,
        app=app,
        client=TestClient(app),
    )


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneUnderTest]:
    """An initialized control plane on SQLite."""
    under_test = make_control_plane(tmp_path)
    with under_test.client:
        yield under_test


@pytest.fixture
def cp_any_db(tmp_path: Path, database_url: str | None) -> Iterator[ControlPlaneUnderTest]:
    """An initialized control plane, once on SQLite and once on PostgreSQL."""
    under_test = make_control_plane(tmp_path, database_url)
    with under_test.client:
        yield under_test


# --- artifacts ------------------------------------------------------------------------------


def small_gguf(tmp_path: Path, name: str = "tiny", values: int = 64, seed: int = 0) -> bytes:
    """A real, small GGUF file written with the gguf package."""
    import gguf

    path = tmp_path / f"{name}-{seed}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(256)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_tensor(
        "token_embd.weight", np.random.default_rng(seed).random((values,), dtype=np.float32)
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def smollm2_path() -> Path:
    return smollm2_gguf_path()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_files(settings: ControlPlaneSettings) -> list[str]:
    root = settings.blobs_dir
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )
