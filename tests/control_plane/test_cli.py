"""``outpost-cp init`` and ``serve`` as an operator runs them."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from control_plane.cli import main

ROOT = Path(__file__).resolve().parents[2]


def init(data_dir: Path, *extra: str) -> tuple[int, dict[str, str], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "control_plane", "init", "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    out = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc.returncode, out, proc.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_private_keys_root_and_an_admin_token(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    code, out, stderr = init(data)
    assert code == 0, stderr
    assert set(out) == {"admin_token", "root_path", "root_sha256", "database_url"}
    for folder, roles in (
        ("offline", ("root", "targets")),
        ("online", ("snapshot", "timestamp", "director")),
    ):
        assert mode(data / "keys" / folder) == 0o700
        for role in roles:
            assert mode(data / "keys" / folder / f"{role}.key") == 0o600
    root = Path(out["root_path"]).read_bytes()
    assert hashlib.sha256(root).hexdigest() == out["root_sha256"]
    assert json.loads(root)["signed"]["_type"] == "root"
    assert out["database_url"].startswith("sqlite:///")
    assert out["admin_token"] not in stderr
    assert out["admin_token"].encode() not in (data / "control-plane.db").read_bytes()


def test_init_refuses_to_run_twice(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    assert init(data)[0] == 0
    keys_before = {p: p.read_bytes() for p in (data / "keys").rglob("*.key")}
    code, _, stderr = init(data)
    assert code == 1
    assert "already initialized" in stderr
    assert {p: p.read_bytes() for p in (data / "keys").rglob("*.key")} == keys_before


def test_init_refuses_a_database_that_already_has_a_repository(
    tmp_path: Path, postgres_url: str
) -> None:
    from tests.control_plane.conftest import reset_postgres

    reset_postgres(postgres_url)
    assert init(tmp_path / "a", "--database-url", postgres_url)[0] == 0
    code, _, stderr = init(tmp_path / "b", "--database-url", postgres_url)
    assert code == 1
    assert "already holds an image repository" in stderr
    assert not (tmp_path / "b" / "keys").exists()


def test_serve_refuses_an_uninitialized_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path / "empty")]) == 1
    assert "outpost-cp init" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_served_process_answers_health_and_the_admin_token(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    _, out, _ = init(data)
    port = free_port()
    env = {**os.environ, "OUTPOST_CP_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "control_plane",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not come up in 30 s"
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "protocol_version": 1}
        me = {"Authorization": f"Bearer {out['admin_token']}"}
        assert httpx.get(f"{base}/api/v1/devices", headers=me).json() == []
        assert (
            httpx.get(f"{base}/repo/metadata/1.root.json").content
            == Path(out["root_path"]).read_bytes()
        )
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    assert out["admin_token"].encode() not in stderr
