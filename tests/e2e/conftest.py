"""Real processes on loopback: the control plane and the agent, as an operator runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy

from tests.requirements import POSTGRES_ADMIN_DSN, require_postgres, smollm2_gguf_path

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "smollm2"


def smollm2_path() -> Path:
    return smollm2_gguf_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError, KeyError, ValueError) as e:
            last, value = e, None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last})")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("OUTPOST_AGENT_TEST_PAUSE_AT", None)
    env.update(extra or {})
    return env


class ControlPlane:
    """``python -m control_plane`` on a loopback port, with an operator's HTTP client.

    ``database_url`` None: the default SQLite file in the data dir; else that database
    (PostgreSQL), given to ``init`` and ``serve`` as an operator would.
    """

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "control_plane",
                "init",
                "--data-dir",
                str(data_dir),
                *self._database_args(),
            ],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        self.init = json.loads(out.stdout.strip().splitlines()[-1])
        self.admin = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.init['admin_token']}"},
            timeout=60,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = (self.data_dir.parent / "control-plane.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control_plane",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                *self._database_args(),
            ],
            cwd=REPO,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
            timeout=60,
            what="the control plane to answer /healthz",
        )

    def _database_args(self) -> list[str]:
        return [] if self.database_url is None else ["--database-url", self.database_url]

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (named ``:params``) from the control plane's own database."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'control-plane.db'}"
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sqlalchemy.text(sql), params)]
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def enrollment_token(self) -> str:
        r = self.admin.post("/api/v1/enrollment-tokens", json={})
        r.raise_for_status()
        return str(r.json()["token"])

    def upload(self, path: Path, *, name: str, kind: str, fmt: str) -> dict[str, Any]:
        with path.open("rb") as f:
            r = self.admin.post(
                "/api/v1/artifacts",
                params={"name": name, "kind": kind, "format": fmt},
                content=f,
            )
        r.raise_for_status()
        return dict(r.json())

    def release(self, name: str, version: str, artifact_ids: list[str]) -> str:
        r = self.admin.post(
            "/api/v1/releases",
            json={"name": name, "version": version, "artifacts": artifact_ids, "config": {}},
        )
        r.raise_for_status()
        return str(r.json()["id"])

    def assign(self, device_id: str, release_id: str) -> int:
        r = self.admin.post(
            f"/api/v1/devices/{device_id}/assignment", json={"release_id": release_id}
        )
        r.raise_for_status()
        return int(r.json()["version"])

    def device(self, device_id: str) -> dict[str, Any]:
        r = self.admin.get(f"/api/v1/devices/{device_id}")
        r.raise_for_status()
        return dict(r.json())

    def stored_report_ids(self, device_id: str) -> list[str]:
        """Status reports as stored in the control plane's database (one row each)."""
        rows = self.query(
            "SELECT report_id FROM status_reports WHERE device_id = :device_id",
            device_id=device_id,
        )
        return [str(r[0]) for r in rows]


class Agent:
    """An enrolled device: ``python -m edge_agent enroll`` once, ``run`` as often as needed."""

    def __init__(
        self,
        cp: ControlPlane,
        state_dir: Path,
        tags: list[str] | None = None,
        *,
        server_url: str | None = None,
    ) -> None:
        """``server_url``: where the device reaches the control plane (default: directly)."""
        self.cp = cp
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.enrollment_token = cp.enrollment_token()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_agent",
                "enroll",
                "--server",
                server_url or cp.url,
                "--token",
                self.enrollment_token,
                "--root-sha256",
                cp.init["root_sha256"],
                "--state-dir",
                str(state_dir),
                "--name",
                "e2e-kiosk",
                "--tag",
                "e2e",
                *(arg for tag in tags or [] for arg in ("--tag", tag)),
            ],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        self.enroll_output = out.stdout + out.stderr
        self.device_id = str(json.loads(out.stdout)["device_id"])
        self.token = (state_dir / "api-token").read_text().strip()
        self.log_path = state_dir.parent / f"{state_dir.name}-agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self,
        *,
        pause_at: str | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        extra = {
            "OUTPOST_AGENT_MAX_BACKOFF_SECONDS": "1",
            "OUTPOST_AGENT_N_CTX": "512",
            "OUTPOST_AGENT_N_THREADS": "2",
            **(env or {}),
        }
        if pause_at is not None:
            extra["OUTPOST_AGENT_TEST_PAUSE_AT"] = pause_at
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent",
                "run",
                "--state-dir",
                str(self.state_dir),
                "--port",
                str(self.port),
                "--poll-interval",
                "0.3",
                "--log-level",
                log_level,
            ],
            cwd=REPO,
            env=_env(extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
            timeout=60,
            what="the agent's local API",
        )

    def kill_9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def status(self) -> dict[str, Any]:
        with self.api() as c:
            r = c.get("/v1/status")
            r.raise_for_status()
            return dict(r.json())

    def wait_installed(self, assignment_version: int, timeout: float = 60) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (
                    (s := self.status())["updates"]["assignment_version"] == assignment_version
                    and s
                ),
                timeout=timeout,
                what=f"assignment {assignment_version} to be installed",
            )
        )

    def queued_report_ids(self) -> list[str]:
        db = sqlite3.connect(self.state_dir / "state.db")
        try:
            return [str(r[0]) for r in db.execute("SELECT report_id FROM outbox ORDER BY seq")]
        finally:
            db.close()


@pytest.fixture(scope="session")
def fresh_postgres_database() -> Iterator[Callable[[], str]]:
    """Makes an empty PostgreSQL database per call; all are dropped at the end."""
    require_postgres()
    names: list[str] = []

    def make() -> str:
        name = f"outpost_e2e_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    yield make
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """The real control plane, once on its default SQLite file, once on a new PostgreSQL db.

    Every real-process test runs against both; pytest groups the tests by database, so
    each control plane (and the agents the modules enroll in it) starts once.
    """
    database_url: str | None = None
    if request.param == "postgresql":
        database_url = request.getfixturevalue("fresh_postgres_database")()
    cp = ControlPlane(tmp_path_factory.mktemp(f"cp-{request.param}") / "data", database_url)
    # the schema is in the database under test (not in a SQLite file beside it)
    assert cp.query("SELECT count(*) FROM alembic_version") == [(1,)]
    yield cp
    cp.stop()
    cp.admin.close()


@pytest.fixture(scope="session")
def smollm2_artifact(control_plane: ControlPlane) -> dict[str, Any]:
    return control_plane.upload(smollm2_path(), name=MODEL_NAME, kind="llm", fmt="gguf")


def prompt_pack(path: Path, tag: str, size: int = 3_000_000) -> Path:
    """A JSON prompt-pack artifact of about ``size`` bytes (several download chunks)."""
    path.write_text(json.dumps({"tag": tag, "system": "Answer briefly.", "pad": "x" * size}))
    return path


def stop_agent(agent: Agent) -> None:
    if agent.process is not None and agent.process.poll() is None:
        agent.kill_9()
