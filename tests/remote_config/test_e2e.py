"""Remote config end to end with real processes: the control plane, a real Mosquitto and
two real agents serving SmolLM2. A fleet change reaches both within 2 s over MQTT; a
device change reaches one; with the broker killed mid-change, polling delivers and MQTT
comes back by itself; a config that breaks the chat health check is reverted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import MODEL_NAME, Agent, ControlPlane, smollm2_path, stop_agent, wait_until
from tests.remote_config.mqtt_harness import Broker

pytestmark = pytest.mark.slow

SLOW_POLL = 120.0  # seconds: so only a nudge can explain a change that lands in 2 s


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("mqtt")) as b:
        yield b


@pytest.fixture(scope="module")
def cp(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OUTPOST_CP_MQTT_HOST", "127.0.0.1")
        mp.setenv("OUTPOST_CP_MQTT_PORT", str(broker.port))
        control_plane = ControlPlane(tmp_path_factory.mktemp("cp") / "data")
    yield control_plane
    control_plane.stop()
    control_plane.admin.close()


@pytest.fixture(scope="module")
def agents(
    cp: ControlPlane, broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Agent, Agent]]:
    artifact = cp.upload(smollm2_path(), name=MODEL_NAME, kind="llm", fmt="gguf")
    release = cp.release("config-e2e", "1.0.0", [artifact["id"]])
    pair = (
        Agent(cp, tmp_path_factory.mktemp("a") / "state", tags=["store=lisbon"]),
        Agent(cp, tmp_path_factory.mktemp("b") / "state", tags=["store=porto"]),
    )
    env = {"OUTPOST_AGENT_MQTT_HOST": "127.0.0.1", "OUTPOST_AGENT_MQTT_PORT": str(broker.port)}
    for agent in pair:
        agent.start(env=env)
        agent.wait_installed(cp.assign(agent.device_id, release), timeout=120)
    yield pair
    for agent in pair:
        stop_agent(agent)


def set_config(cp: ControlPlane, scope: str, patch: dict[str, Any]) -> dict[str, Any]:
    r = cp.admin.patch(f"/api/v1/config/scopes/{quote(scope, safe='')}", json=patch)
    assert r.status_code == 200, r.text
    return dict(r.json())


def view(cp: ControlPlane, agent: Agent) -> dict[str, Any]:
    r = cp.admin.get(f"/api/v1/devices/{agent.device_id}/config")
    r.raise_for_status()
    return dict(r.json())


def wait_applied(cp: ControlPlane, agent: Agent, want: dict[str, Any], timeout: float) -> float:
    """Seconds until the CP shows ``agent`` applied a config whose effective part holds
    ``want`` (polling the CP every 20 ms)."""
    started = time.monotonic()

    def done() -> bool:
        v = view(cp, agent)
        effective = v["effective"]
        holds = all(effective.get(k) == val for k, val in want.items())
        return bool(holds and v["in_sync"])

    wait_until(done, timeout=timeout, what=f"{agent.device_id} to apply {want}")
    return time.monotonic() - started


def slow_polling(cp: ControlPlane, agents: tuple[Agent, Agent], seconds: float) -> None:
    set_config(cp, "fleet", {"updates": {"poll_interval_seconds": seconds}})
    for agent in agents:
        wait_applied(cp, agent, {"updates": {"poll_interval_seconds": seconds}}, timeout=30)


def wait_mqtt(agent: Agent, timeout: float = 60) -> None:
    wait_until(
        lambda: agent.status()["config"]["mqtt"] == "connected",
        timeout=timeout,
        what=f"{agent.device_id}'s MQTT session",
    )


def test_a_fleet_change_is_applied_by_both_devices_within_2_s_via_mqtt(
    cp: ControlPlane, agents: tuple[Agent, Agent]
) -> None:
    for agent in agents:
        wait_mqtt(agent)
    slow_polling(cp, agents, SLOW_POLL)
    set_config(cp, "fleet", {"chat": {"max_tokens_default": 3}})
    elapsed = [
        wait_applied(cp, a, {"chat": {"max_tokens_default": 3}}, timeout=2.0) for a in agents
    ]
    assert max(elapsed) < 2.0
    for agent in agents:  # in force live: a request without max_tokens gets the default
        with agent.api() as api:
            r = api.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL_NAME,
                    "messages": [{"role": "user", "content": "Count to 50."}],
                },
            )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 3
        assert agent.status()["config"]["version"] == view(cp, agent)["issued"]["version"]


def test_a_device_change_is_applied_by_that_device_only(
    cp: ControlPlane, agents: tuple[Agent, Agent]
) -> None:
    a, b = agents
    slow_polling(cp, agents, SLOW_POLL)
    before = view(cp, b)["issued"]["version"]
    set_config(cp, f"device:{a.device_id}", {"rag": {"min_similarity": 0.4}})
    assert wait_applied(cp, a, {"rag": {"min_similarity": 0.4}}, timeout=2.0) < 2.0
    time.sleep(1.0)
    after = view(cp, b)
    assert "rag" not in after["effective"]
    assert after["issued"]["version"] == before  # B was not sent anything new


def test_broker_killed_mid_change_polling_delivers_and_mqtt_comes_back(
    cp: ControlPlane, agents: tuple[Agent, Agent], broker: Broker
) -> None:
    slow_polling(cp, agents, 2.0)
    broker.kill()
    try:
        set_config(cp, "fleet", {"chat": {"temperature_default": 0.1}})
        for agent in agents:  # no broker: the next poll (2 s, jittered) brings it
            wait_applied(
                cp,
                agent,
                {"chat": {"max_tokens_default": 3, "temperature_default": 0.1}},
                timeout=15,
            )
            assert agent.status()["config"]["mqtt"] == "connecting"
    finally:
        broker.start()  # same port: sessions reconnect by themselves
    for agent in agents:
        wait_mqtt(agent)
    slow_polling(cp, agents, SLOW_POLL)
    set_config(cp, "fleet", {"chat": {"temperature_default": 0.2}})
    for agent in agents:
        assert (
            wait_applied(
                cp,
                agent,
                {"chat": {"max_tokens_default": 3, "temperature_default": 0.2}},
                timeout=2.0,
            )
            < 2.0
        )


def test_a_config_that_breaks_the_chat_health_check_is_reverted_and_reported(
    cp: ControlPlane, agents: tuple[Agent, Agent]
) -> None:
    _, b = agents
    good = view(cp, b)["issued"]["version"]
    # far more than the 512-token context the agents run with: every chat would overflow
    set_config(cp, f"device:{b.device_id}", {"chat": {"system_prompt": "Be helpful. " * 600}})
    status = wait_until(
        lambda: (s := view(cp, b)["status"]) and s["state"] == "reverted" and s,
        timeout=30,
        what="the device to revert the config",
    )
    assert "health check" in status["detail"] and f"v{good}" in status["detail"]
    with b.api() as api:  # still serving, under the config from before
        r = api.post(
            "/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi."}]},
        )
    assert r.status_code == 200, r.text
    assert b.status()["config"]["version"] == good


def test_a_release_prompt_pack_is_used_and_one_that_breaks_chat_is_rolled_back(
    cp: ControlPlane, agents: tuple[Agent, Agent], tmp_path: Path
) -> None:
    a, _ = agents
    model = cp.upload(smollm2_path(), name=MODEL_NAME, kind="llm", fmt="gguf")["id"]
    before = a.status()["updates"]["release_id"]

    def chat_prompt_tokens(system: str | None = None) -> int:
        messages = [{"role": "user", "content": "Hi."}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        with a.api() as api:
            r = api.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages})
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens"])

    plain = chat_prompt_tokens()
    broken = tmp_path / "broken.json"  # far more than the agents' 512-token context
    broken.write_text(json.dumps({"system_prompt": "Be helpful. " * 600}))
    pack = cp.upload(broken, name="prompts-broken", kind="prompt-pack", fmt="json")["id"]
    version = cp.assign(a.device_id, cp.release("config-e2e", "2.0.0", [model, pack]))
    last = wait_until(
        lambda: (
            (s := cp.device(a.device_id)["last_status"])
            and s["assignment_version"] == version
            and s["state"] == "rolled_back"
            and s
        ),
        timeout=90,
        what="the release with the broken prompt pack to be rolled back",
    )
    assert "health window failed" in last["detail"]
    assert a.status()["updates"]["release_id"] == before

    good = tmp_path / "good.json"
    kiosk = "You are the Lisbon store kiosk. Answer in one short sentence, in Portuguese."
    good.write_text(json.dumps({"system_prompt": kiosk}))
    pack = cp.upload(good, name="prompts", kind="prompt-pack", fmt="json")["id"]
    a.wait_installed(cp.assign(a.device_id, cp.release("config-e2e", "3.0.0", [model, pack])), 90)
    # a chat without a system message now gets the pack's, exactly as if it sent it
    assert chat_prompt_tokens() == chat_prompt_tokens(system=kiosk) != plain
