"""Real agent processes whose state cannot be trusted or written (issue 8, rows 1 and 6):
a release too big for the disk, a corrupt state.db, and a state directory on a filesystem
mounted read-only. The agent serves its verified release in each, says so (to the control
plane, in /v1/status), and resumes updates once the store can be written."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.agent_updates.test_corrupt_state_db import corrupt_after_first_page
from tests.e2e.conftest import (
    MODEL_NAME,
    Agent,
    ControlPlane,
    prompt_pack,
    stop_agent,
    wait_until,
)
from tests.small_disk import remount, small_disk

pytestmark = pytest.mark.slow


def chat_reply(agent: Agent) -> str:
    with agent.api() as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
                "temperature": 0,
            },
        )
    assert r.status_code == 200, r.text
    text = str(r.json()["choices"][0]["message"]["content"])
    assert text.strip()
    return text


def install_one(cp: ControlPlane, agent: Agent, artifact: dict[str, Any]) -> tuple[str, int]:
    release_id = cp.release(f"state-{uuid.uuid4().hex[:8]}", "1.0.0", [artifact["id"]])
    version = cp.assign(agent.device_id, release_id)
    agent.wait_installed(version)
    return release_id, version


def up_to_date(agent: Agent) -> bool:
    status = agent.status()
    return status["store"] == "ok" and status["updates"]["last_result"] == "up_to_date"


def test_an_agent_whose_state_db_is_corrupt_keeps_serving_its_release(
    control_plane: ControlPlane, smollm2_artifact: dict[str, Any], tmp_path: Path
) -> None:
    agent = Agent(control_plane, tmp_path / "state")
    try:
        agent.start()
        release_id, version = install_one(control_plane, agent, smollm2_artifact)
        assert agent.terminate() == 0
        corrupt_after_first_page(agent.state_dir / "state.db")

        agent.start()

        status = agent.status()
        assert status["updates"]["release_id"] == release_id
        assert status["updates"]["assignment_version"] == version
        chat_reply(agent)
        assert list(agent.state_dir.glob("state.db.corrupt-*"))
        log = agent.log_path.read_text(encoding="utf-8", errors="replace")
        assert "moved it aside" in log and "docs/runbooks/agent-store-recovery.md" in log
        wait_until(lambda: up_to_date(agent), timeout=60, what="updates to resume")
        assert agent.terminate() == 0
    finally:
        stop_agent(agent)


def test_an_agent_whose_state_dir_is_read_only_serves_and_says_so_until_it_is_writable(
    control_plane: ControlPlane, smollm2_artifact: dict[str, Any], tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", 400 << 20) as disk:  # the log stays outside it
        agent = Agent(control_plane, disk)
        try:
            agent.start()
            release_id, version = install_one(control_plane, agent, smollm2_artifact)
            assert agent.terminate() == 0
            remount(disk, read_only=True)
            try:
                agent.start(env={"OUTPOST_AGENT_STORE_RETRY_SECONDS": "0.5"})
                status = agent.status()
                assert status["store"].startswith("read-only: "), status
                assert "the filesystem is mounted read-only" in status["store"]
                assert status["updates"]["phase"] == "store_read_only"
                assert status["updates"]["release_id"] == release_id
                chat_reply(agent)
            finally:
                remount(disk, read_only=False)
            wait_until(lambda: up_to_date(agent), timeout=60, what="the store to be writable")
            assert agent.status()["updates"]["assignment_version"] == version
            chat_reply(agent)
            assert agent.terminate() == 0
        finally:
            stop_agent(agent)


def test_a_release_too_big_for_the_disk_is_refused_and_reported_and_restarts_serve(
    control_plane: ControlPlane, smollm2_artifact: dict[str, Any], tmp_path: Path
) -> None:
    """The issue's reproduction: state dir on a 120 MB tmpfs, a small release installed,
    then one with the 98 MB chat model assigned (with the default 32 MB margin), then a
    restart."""
    with small_disk(tmp_path / "disk", 120 << 20) as disk:
        agent = Agent(control_plane, disk)
        try:
            agent.start()
            pack = control_plane.upload(
                prompt_pack(tmp_path / "pack.json", "small", 1_000_000),
                name="prompts",
                kind="config",
                fmt="json",
            )
            small = control_plane.release(f"small-{uuid.uuid4().hex[:8]}", "1.0.0", [pack["id"]])
            agent.wait_installed(control_plane.assign(agent.device_id, small))
            big = control_plane.release(
                f"big-{uuid.uuid4().hex[:8]}", "1.0.0", [smollm2_artifact["id"]]
            )
            version = control_plane.assign(agent.device_id, big)

            def reported_failed() -> dict[str, Any] | None:
                last = control_plane.device(agent.device_id)["last_status"] or {}
                return last if last.get("state") == "failed" else None

            last = wait_until(reported_failed, timeout=60, what="the device to report failed")
            assert last["assignment_version"] == version
            assert "not enough space: need" in last["detail"], last
            assert not list((disk / "downloads").iterdir()), "no partial download was left"
            status = agent.status()
            assert status["updates"]["release_id"] == small and status["store"] == "ok"

            assert agent.terminate() == 0
            agent.start()
            status = agent.status()
            assert status["updates"]["release_id"] == small and status["store"] == "ok"
            assert agent.terminate() == 0
        finally:
            stop_agent(agent)
