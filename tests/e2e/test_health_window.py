"""A real agent against a real control plane: a release whose health window fails is rolled
back by the agent itself, which keeps serving the previous release through its local API
and reports ``rolled_back`` (with the reason) to the control plane.

Both bad releases ship the same, healthy SmolLM2 bytes; only the operator's release config
breaks them: an acceptance threshold no device can meet, and a chat template that renders
but makes every reply empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import MODEL_NAME, Agent, ControlPlane, stop_agent, wait_until

pytestmark = pytest.mark.slow

IMPOSSIBLE_THRESHOLD = {"acceptance": {"max_smoke_ms": {"chat": 1}}}
CLOSED_TURN_TEMPLATE = {
    "models": {
        MODEL_NAME: {
            "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
            "<|im_end|>\n{% endfor %}<|im_start|>assistant\n<|im_end|>"
        }
    }
}


@pytest.fixture(scope="module")
def agent(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    device = Agent(control_plane, tmp_path_factory.mktemp("health") / "state")
    device.start()
    yield device
    stop_agent(device)


def publish(
    cp: ControlPlane, version: str, artifact_id: str, config: dict[str, Any], name: str = "health"
) -> str:
    r = cp.admin.post(
        "/api/v1/releases",
        json={"name": name, "version": version, "artifacts": [artifact_id], "config": config},
    )
    r.raise_for_status()
    return str(r.json()["id"])


def final_report(cp: ControlPlane, device_id: str, version: int) -> dict[str, Any]:
    """The device's last status once it is final (committed, rolled back...) for ``version``."""

    def done() -> dict[str, Any] | None:
        status = cp.device(device_id)["last_status"]
        final = ("committed", "rolled_back", "failed", "refused")
        if status and status["assignment_version"] == version and status["state"] in final:
            return dict(status)
        return None

    return dict(wait_until(done, timeout=90, what=f"a final report for assignment {version}"))


def stored_states(cp: ControlPlane, device_id: str, version: int) -> list[str]:
    rows = cp.query(
        "SELECT state FROM status_reports WHERE device_id = :device_id"
        " AND assignment_version = :version ORDER BY at",
        device_id=device_id,
        version=version,
    )
    return [str(r[0]) for r in rows]


def assert_serves(agent: Agent, release_id: str) -> None:
    status = agent.status()
    assert status["updates"]["release_id"] == release_id
    assert [(m["name"], m["release_id"]) for m in status["models"]] == [(MODEL_NAME, release_id)]
    client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token)
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.choices[0].message.content and reply.choices[0].message.content.strip()


def test_a_release_that_fails_its_health_window_is_rolled_back_by_the_agent(
    control_plane: ControlPlane, agent: Agent, smollm2_artifact: dict[str, Any]
) -> None:
    cp, model = control_plane, smollm2_artifact["id"]
    good = publish(cp, "1.0.0", model, {})
    version = cp.assign(agent.device_id, good)
    assert final_report(cp, agent.device_id, version)["state"] == "committed"
    assert stored_states(cp, agent.device_id, version)[-2:] == ["active", "committed"]

    for tag, config, reason in [
        ("1.1.0-threshold", IMPOSSIBLE_THRESHOLD, "over the release's acceptance.max_smoke_ms"),
        ("1.1.0-template", CLOSED_TURN_TEMPLATE, "smoke prompt was empty ("),
    ]:
        bad = publish(cp, tag, model, config)
        started = time.monotonic()
        bad_version = cp.assign(agent.device_id, bad)
        report = final_report(cp, agent.device_id, bad_version)
        took = time.monotonic() - started

        assert report["state"] == "rolled_back", report
        assert f"chat smoke request on '{MODEL_NAME}'" in report["detail"]
        assert reason in report["detail"] and "now serving health 1.0.0" in report["detail"]
        assert stored_states(cp, agent.device_id, bad_version)[-2:] == ["active", "rolled_back"]
        assert cp.device(agent.device_id)["installed_release"]["id"] == good
        assert_serves(agent, good)
        assert took < 30, f"{tag}: assign -> rolled_back took {took:.1f} s"
        print(f"{tag}: assign -> rolled_back reported in {took:.2f} s")

    fixed = publish(cp, "1.2.0", model, {"acceptance": {"max_smoke_ms": {"chat": 20_000}}})
    fixed_version = cp.assign(agent.device_id, fixed)
    report = final_report(cp, agent.device_id, fixed_version)
    assert report["state"] == "committed" and "health window passed" in report["detail"]
    assert_serves(agent, fixed)
