"""Attacks on the update path with real processes (the in-memory ones are in
tests/agent_updates/test_attacks.py): a real agent against a real control plane whose
storage has been tampered with."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import (
    MODEL_NAME,
    Agent,
    ControlPlane,
    prompt_pack,
    stop_agent,
    wait_until,
)

pytestmark = pytest.mark.slow


def store_snapshot(state_dir: Path) -> dict[str, str]:
    """sha256 of every file in the agent's blobs and releases, and its pointers."""
    found: dict[str, str] = {}
    for folder in ("blobs", "releases"):
        for path in sorted((state_dir / folder).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(state_dir))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    for pointer in ("current", "previous"):
        if (state_dir / pointer).exists():
            found[pointer] = (state_dir / pointer).read_text().strip()
    return found


def last_state(cp: ControlPlane, device_id: str) -> tuple[str | None, str]:
    status = cp.device(device_id)["last_status"] or {}
    return status.get("state"), str(status.get("detail") or "")


@pytest.fixture
def serving(
    control_plane: ControlPlane,
    smollm2_artifact: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Agent, str]]:
    """A new device serving a committed first release; yields it and that release's id."""
    agent = Agent(control_plane, tmp_path_factory.mktemp("attacked") / "state")
    try:
        agent.start()
        first = control_plane.release("attacked", "1.0.0", [smollm2_artifact["id"]])
        agent.wait_installed(control_plane.assign(agent.device_id, first), timeout=120)
        wait_until(
            lambda: last_state(control_plane, agent.device_id)[0] == "committed",
            timeout=60,
            what="the first release to be committed",
        )
        yield agent, first
    finally:
        stop_agent(agent)


def test_a_blob_overwritten_on_the_control_plane_is_refused_and_the_device_keeps_serving(
    control_plane: ControlPlane,
    smollm2_artifact: dict[str, Any],
    serving: tuple[Agent, str],
    tmp_path: Path,
) -> None:
    agent, first = serving
    pack = control_plane.upload(
        prompt_pack(tmp_path / "pack.json", "attacked"), name="prompts", kind="config", fmt="json"
    )
    second = control_plane.release("attacked", "2.0.0", [smollm2_artifact["id"], pack["id"]])
    # someone with write access to the control plane's disk swaps the bytes, same length
    blob = control_plane.data_dir / "blobs" / "sha256" / pack["sha256"]
    garbage = os.urandom(pack["length"])
    os.chmod(blob, 0o644)
    blob.write_bytes(garbage)
    before = store_snapshot(agent.state_dir)

    control_plane.assign(agent.device_id, second)
    _, detail = wait_until(
        lambda: (s := last_state(control_plane, agent.device_id))[0] == "refused" and s,
        timeout=120,
        what="the device to report the tampered artifact refused",
    )
    assert pack["sha256"] in detail and "hash" in detail, detail

    status = agent.status()["updates"]
    assert status["release_id"] == first
    client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token)
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Say hi."}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
    # several polls later (0.3 s apart) nothing of the garbage has reached the store
    wait_until(
        lambda: agent.status()["updates"]["last_check_at"] != status["last_check_at"],
        timeout=30,
        what="another update check",
    )
    after = store_snapshot(agent.state_dir)
    assert after == before
    assert hashlib.sha256(garbage).hexdigest() not in after.values()
    # the device retries each poll: at most the download in flight sits in downloads/
    in_flight = [p.name for p in (agent.state_dir / "downloads").iterdir()]
    assert set(in_flight) <= {f"{pack['sha256']}.part"}
    assert agent.status()["updates"]["release_id"] == first
