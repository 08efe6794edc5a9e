"""The spine, end to end: enroll -> publish -> install -> chat, offline, exactly-once reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization

from edge_agent.updates import marker_path
from protocol.keys import load_private_key
from tests.e2e.conftest import (
    MODEL_NAME,
    Agent,
    ControlPlane,
    prompt_pack,
    stop_agent,
    wait_until,
)

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def first_release(control_plane: ControlPlane, smollm2_artifact: dict[str, Any]) -> str:
    return control_plane.release("spine", "1.0.0", [smollm2_artifact["id"]])


@pytest.fixture(scope="module")
def device(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    """The module's enrolled device; ``serving`` starts it and installs a release."""
    enrolled = Agent(control_plane, tmp_path_factory.mktemp("device") / "state")
    yield enrolled
    stop_agent(enrolled)


@pytest.fixture
def serving(control_plane: ControlPlane, device: Agent, first_release: str) -> Agent:
    """The device running and serving a committed release, whatever ran before."""
    if control_plane.process is None:  # a test that stopped it failed before restarting
        control_plane.start()
    if device.process is not None and device.process.poll() is not None:
        device.process = None
    if device.process is None:
        device.start(log_level="DEBUG")  # the most an operator can log: no secret in it
    if device.status()["updates"]["release_id"] is None:
        device.wait_installed(control_plane.assign(device.device_id, first_release))
    wait_until(
        lambda: (
            (control_plane.device(device.device_id)["last_status"] or {})["state"] == "committed"
        ),
        timeout=60,
        what="the device's release to be committed",
    )
    return device


@pytest.fixture
def new_device(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    """A device just enrolled, not started, with nothing installed."""
    enrolled = Agent(control_plane, tmp_path_factory.mktemp("new-device") / "state")
    yield enrolled
    stop_agent(enrolled)


def test_enroll_publish_install_and_chat(
    control_plane: ControlPlane, new_device: Agent, first_release: str
) -> None:
    agent = new_device
    agent.start()
    assert agent.status()["updates"]["release_id"] is None
    version = control_plane.assign(agent.device_id, first_release)
    status = agent.wait_installed(version)
    assert status["updates"]["release_id"] == first_release
    assert [m["name"] for m in status["models"]] == [MODEL_NAME]

    client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token)
    answer = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert answer.choices[0].message.content and answer.choices[0].message.content.strip()
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces).strip()

    device = wait_until(
        lambda: (
            (d := control_plane.device(agent.device_id))["last_status"]["state"] == "committed"
            and d
        ),
        timeout=30,
        what="the control plane to show the release committed (its health window passed)",
    )
    assert device["installed_release"]["id"] == first_release
    assert device["installed_assignment_version"] == version


def test_a_wrong_token_on_the_device_api_is_refused(serving: Agent) -> None:
    agent = serving
    response = httpx.get(
        f"{agent.url}/v1/models", headers={"Authorization": "Bearer not-the-token-000000"}
    )
    assert response.status_code == 401
    assert "token" in response.text.lower()
    client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key="not-the-token-000000")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_offline_the_agent_serves_and_queued_reports_arrive_exactly_once(
    control_plane: ControlPlane,
    serving: Agent,
    smollm2_artifact: dict[str, Any],
    tmp_path: Path,
) -> None:
    agent = serving
    before = agent.status()["updates"]["release_version"]
    pack = control_plane.upload(
        prompt_pack(tmp_path / "pack.json", "offline"), name="prompts", kind="config", fmt="json"
    )
    second = control_plane.release("spine", "1.1.0", [smollm2_artifact["id"], pack["id"]])
    assert agent.terminate() == 0
    agent.start(pause_at="verified")  # freeze with DOWNLOADING/VERIFIED reports queued
    version = control_plane.assign(agent.device_id, second)
    wait_until(
        lambda: marker_path(agent.state_dir, "verified").exists(),
        timeout=60,
        what="the agent to reach the verified step",
    )
    control_plane.stop()
    agent.kill_9()
    marker_path(agent.state_dir, "verified").unlink()

    agent.start()  # offline restart: serves the last verified release at once
    status = wait_until(
        lambda: (s := agent.status())["updates"]["online"] is False and s,
        timeout=30,
        what="the agent to notice it is offline",
    )
    assert status["updates"]["release_version"] == before
    assert status["updates"]["pending_reports"] >= 2
    client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token)
    offline = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=4,  # type: ignore[arg-type]
    )
    assert offline.choices[0].message.content is not None

    control_plane.start()
    agent.wait_installed(version)
    wait_until(
        lambda: agent.status()["updates"]["pending_reports"] == 0,
        timeout=30,
        what="queued reports to be delivered",
    )
    stored = control_plane.stored_report_ids(agent.device_id)
    assert sorted(stored) == sorted(agent.queued_report_ids())  # each arrived, exactly once
    assert control_plane.device(agent.device_id)["installed_release"]["id"] == second


def test_shutdown_is_clean_and_logs_hold_no_secrets(serving: Agent) -> None:
    """Nothing the device holds secret reaches its output or any file but its own: not the
    API token, not the one-time enrollment token, not the device's private key."""
    agent = serving
    assert agent.terminate() == 0
    log = agent.log_path.read_bytes()
    assert b"stopped" in log
    assert b"DEBUG" in log, "the agent did not run at its most talkative level"
    key_file = agent.state_dir / "device.key"
    key_pem = key_file.read_bytes()
    raw_key = load_private_key(key_file).private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    secrets = {
        "API token": agent.token.encode(),
        "enrollment token": agent.enrollment_token.encode(),
        "private key PEM body": b"".join(key_pem.splitlines()[1:-1]),
        "private key raw hex": raw_key.hex().encode(),
        "private key marker": b"PRIVATE KEY",
    }
    sources = {"agent log": log, "enroll output": agent.enroll_output.encode()}
    for path in sorted(agent.state_dir.rglob("*")):
        if path.is_file() and path not in (key_file, agent.state_dir / "api-token"):
            sources[str(path.relative_to(agent.state_dir))] = path.read_bytes()
    assert "state.db" in sources, "the state database was not searched"
    leaks = [
        f"{name} appears in {where}"
        for name, secret in secrets.items()
        for where, content in sources.items()
        if secret in content
    ]
    assert leaks == []
