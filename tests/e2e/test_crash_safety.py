"""kill -9 at each step of an install (the health window included): on restart the agent
serves a verified release, its store is consistent, and the interrupted install completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from edge_agent.store import InstallStep, ReleaseStore
from edge_agent.updates import marker_path
from tests.e2e.conftest import (
    MODEL_NAME,
    Agent,
    ControlPlane,
    prompt_pack,
    stop_agent,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def device(
    control_plane: ControlPlane,
    smollm2_artifact: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Agent]:
    """A device serving a first release, stopped between tests."""
    agent = Agent(control_plane, tmp_path_factory.mktemp("crash") / "state")
    agent.start()
    first = control_plane.release("crash", "1.0.0", [smollm2_artifact["id"]])
    agent.wait_installed(control_plane.assign(agent.device_id, first))
    assert agent.terminate() == 0
    yield agent
    stop_agent(agent)


def assert_store_consistent(state_dir: Path) -> None:
    store = ReleaseStore.open(state_dir)
    try:
        current, previous = store.pointers()
        assert current is not None
        referenced: set[str] = set()
        for name in (current, previous):
            if name is not None:
                referenced |= {a.sha256 for a in store.verify_release(name).artifacts}
        assert {p.name for p in store.blobs_dir.iterdir()} == referenced
        assert list(store.downloads_dir.iterdir()) == []
        assert store.db.unfinished_install() is None
    finally:
        store.close()


@pytest.mark.parametrize("step", ["download", "verified", "activate", "health"])
def test_kill_9_at_an_install_step_leaves_a_verified_release(
    step: str,
    control_plane: ControlPlane,
    smollm2_artifact: dict[str, Any],
    device: Agent,
    tmp_path: Path,
) -> None:
    pack = control_plane.upload(
        prompt_pack(tmp_path / f"{step}.json", step), name="prompts", kind="config", fmt="json"
    )
    release = control_plane.release("crash", f"2.0.0-{step}", [smollm2_artifact["id"], pack["id"]])
    device.start(pause_at=step)
    serving_before = device.status()["updates"]["release_id"]
    version = control_plane.assign(device.device_id, release)
    marker = marker_path(device.state_dir, step)
    wait_until(marker.exists, timeout=60, what=f"the agent to freeze at {step!r}")
    device.kill_9()
    marker.unlink()
    if step == "download":
        parts = list((device.state_dir / "downloads").iterdir())
        assert parts and parts[0].stat().st_size < pack["length"]

    device.start()
    status = device.status()["updates"]
    assert status["release_id"] in {serving_before, release}
    client = openai.OpenAI(base_url=f"{device.url}/v1", api_key=device.token)
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=2,
    )
    assert reply.choices[0].message.content is not None
    device.wait_installed(version)
    assert device.terminate() == 0

    assert_store_consistent(device.state_dir)
    store = ReleaseStore.open(device.state_dir)
    try:
        attempts = [record.step for record in store.db.installs_of(version)]
    finally:
        store.close()
    assert attempts == [InstallStep.INTERRUPTED, InstallStep.ACTIVE]
