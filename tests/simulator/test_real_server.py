"""``python -m simulator run`` against a real ``outpost-cp serve`` process on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control_plane.conftest import small_gguf
from tests.e2e.conftest import REPO, ControlPlane, _env

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlPlane]:
    control_plane = ControlPlane(tmp_path / "cp")
    try:
        yield control_plane
    finally:
        control_plane.stop()


def simulate(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", "simulator", "run", "--json", str(out), *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[sim 0]" in done.stderr  # progress on stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    return result


def assert_sane(latency: dict[str, Any], count: int) -> None:
    assert latency["count"] == count
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]


def test_the_concurrent_driver_enrolls_polls_and_rolls_out_against_a_real_server(
    server: ControlPlane, tmp_path: Path
) -> None:
    r = server.admin.post("/api/v1/tokens", json={"name": "simulator", "role": "operator"})
    r.raise_for_status()
    token_file = tmp_path / "operator.token"
    token_file.write_text(r.json()["token"] + "\n")
    state_file = tmp_path / "fleet.json"
    common = [
        "--server",
        server.url,
        "--token-file",
        str(token_file),
        "--devices",
        "24",
        "--state",
        str(state_file),
        "--poll-interval",
        "0.5",
        "--tag-spec",
        "hw=rpi5,jetson-orin-nano",
        "--fail-health",
        "0.25",
    ]

    first = simulate(tmp_path, "first", *common, "--duration", "3")
    assert (first["errors"], first["error_samples"]) == (0, [])
    assert first["enrolled"] == 24
    assert first["polls"] >= 24
    assert first["polls_per_second"] > 0
    assert first["outcomes"] == {"no_assignment": first["polls"]}
    assert_sane(first["latency"]["poll"], first["polls"])
    assert_sane(first["enrollment_latency"]["enroll"], 24)

    listed = server.admin.get("/api/v1/devices").json()
    assert len(listed) == 24
    assert {d["hardware"]["arch"] for d in listed} == {"aarch64"}
    saved = json.loads(state_file.read_text())["devices"]
    assert {d["device_id"] for d in saved} == {d["id"] for d in listed}

    model = tmp_path / "tiny.gguf"
    model.write_bytes(small_gguf(tmp_path))
    artifact = server.upload(model, name="tiny-chat", kind="llm", fmt="gguf")
    release = server.release("assistant", "1.0.0", [artifact["id"]])
    for device in listed:
        server.assign(device["id"], release)

    second = simulate(
        tmp_path,
        "second",
        *common,
        "--duration",
        "3",
        "--processes",
        "2",
        "--root",
        str(server.data_dir / "root.json"),
    )
    assert (second["errors"], second["error_samples"]) == (0, [])
    assert (second["enrolled"], second["processes"]) == (0, 2)
    assert second["new_assignments"] == 24
    rolled_back = second["reports"].get("rolled_back", 0)
    assert 0 < rolled_back < 24
    assert second["reports"]["committed"] == 24 - rolled_back
    assert second["reports"]["active"] == 24
    assert_sane(second["latency"]["poll"], second["polls"])
    assert_sane(second["latency"]["report"], sum(second["reports"].values()))

    states = [d["last_status"]["state"] for d in server.admin.get("/api/v1/devices").json()]
    assert sorted(set(states)) == ["committed", "rolled_back"]
    assert states.count("rolled_back") == rolled_back
