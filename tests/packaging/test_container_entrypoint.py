"""The control-plane image's entrypoint, run as the image runs it (outside a container:
no registry is reachable here to pull the base image; docs/packaging.md says so)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, free_port, wait_until

pytestmark = pytest.mark.slow

ENTRYPOINT = REPO / "packaging/container/entrypoint.sh"
CONTAINERFILE = REPO / "packaging/container/Containerfile"


def _start(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OUTPOST_CP_DATA_DIR": str(data),
        "OUTPOST_CP_HOST": "127.0.0.1",
        "OUTPOST_CP_PORT": str(port),
        "OUTPOST_CP_BIN": str(Path(sys.executable).parent / "outpost-cp"),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=data
        )
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
        timeout=90,
        what="the control plane behind the entrypoint",
    )
    return process


def _stop(process: subprocess.Popen[bytes], port: int) -> None:
    """SIGTERM to the entrypoint's pid reaches the server (the script execs it): it stops
    cleanly (uvicorn re-raises the signal once shut down) and nothing listens after."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_the_entrypoint_initializes_the_volume_once_then_serves(tmp_path: Path) -> None:
    data = tmp_path / "volume"
    data.mkdir(mode=0o700)
    log = tmp_path / "cp.log"
    port = free_port()

    first = _start(data, port, log)
    _stop(first, port)
    init = data / "init.json"
    assert init.stat().st_mode & 0o777 == 0o600
    token = json.loads(init.read_text())["admin_token"]
    root = (data / "root.json").read_bytes()
    assert token not in log.read_text(), "the admin token reached the logs"

    second = _start(data, port, log)  # a restart: the same repository, not a new one
    try:
        assert (data / "root.json").read_bytes() == root
        answer = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/devices",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    finally:
        _stop(second, port)
    assert log.read_text().count("initialized") == 1


def test_the_entrypoint_refuses_an_unwritable_volume(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    done = subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env={**os.environ, "OUTPOST_CP_DATA_DIR": str(missing)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "mount a volume" in done.stderr


def test_the_image_runs_as_a_non_root_user_with_a_health_check_and_a_volume() -> None:
    text = CONTAINERFILE.read_text()
    assert "USER 10001:10001" in text
    assert 'VOLUME ["/var/lib/outpost-cp"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["/usr/local/bin/outpost-cp-entrypoint"]' in text
