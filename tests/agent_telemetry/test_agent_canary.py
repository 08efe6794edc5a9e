"""Canary: what users type, upload and ask never leaves the device.

A real control plane and a real agent (SmolLM2) on loopback, with a MQTT broker; every
byte the agent sends to the control plane and to the broker passes through a recording
relay. Unique strings go into chat and completion prompts, a RAG document (its text and
its file name) and a RAG question, an image's file name and EXIF, and request headers.
The agent reports telemetry every 10 s meanwhile (the release's policy). None of the
strings may appear in anything the agent sent; the relays did see the agent's telemetry
reports and its MQTT session, so they were recording the right traffic.

SQLite control plane only: the property under test is the agent's.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protocol import paths
from tests.agent_telemetry.wiretap import WireTap
from tests.e2e.conftest import Agent, ControlPlane, smollm2_path, wait_until
from tests.remote_config.mqtt_harness import Broker
from tests.requirements import LLAMA, require_installed

pytestmark = pytest.mark.slow

CANARIES = {
    name: f"canary{name}{secrets.token_hex(6)}"
    for name in ("prompt", "completion", "doc", "docname", "question", "image", "exif", "header")
}


def _jpeg_with_exif(comment: str) -> bytes:
    """A small real JPEG with an APP1 Exif segment that carries ``comment``."""
    import cv2

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = (40, 160, 220)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    data = encoded.tobytes()
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + comment.encode()
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + app1 + data[2:]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[ControlPlane, Agent, WireTap, WireTap]]:
    require_installed(*LLAMA)
    with Broker(tmp_path / "mqtt") as broker, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OUTPOST_CP_MQTT_HOST", "127.0.0.1")
        mp.setenv("OUTPOST_CP_MQTT_PORT", str(broker.port))
        cp = ControlPlane(tmp_path / "cp")
        cp.start()
        http_tap = WireTap("127.0.0.1", cp.port)
        mqtt_tap = WireTap("127.0.0.1", broker.port)
        agent = Agent(cp, tmp_path / "device", server_url=http_tap.url)
        try:
            yield cp, agent, http_tap, mqtt_tap
        finally:
            if agent.process is not None:
                agent.terminate()
            http_tap.close()
            mqtt_tap.close()
            cp.stop()
            cp.admin.close()


def test_no_prompt_document_image_or_header_leaves_the_device(
    fleet: tuple[ControlPlane, Agent, WireTap, WireTap], tmp_path: Path
) -> None:
    cp, agent, http_tap, mqtt_tap = fleet
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"telemetry": {"interval_seconds": 10}}))
    model = cp.upload(smollm2_path(), name="smollm2", kind="llm", fmt="gguf")
    bundle = cp.upload(policy, name="policy", kind="policy", fmt="json")
    release_id = cp.release("canary", "1", [model["id"], bundle["id"]])
    agent.start(
        env={"OUTPOST_AGENT_MQTT_HOST": "127.0.0.1", "OUTPOST_AGENT_MQTT_PORT": str(mqtt_tap.port)}
    )
    agent.wait_installed(cp.assign(agent.device_id, release_id), timeout=180)

    c = CANARIES
    headers = {"X-Request-Tag": c["header"], "User-Agent": f"kiosk-{c['header']}"}
    with agent.api() as api:
        chat = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"Repeat after me: {c['prompt']}"}],
            "max_tokens": 16,
        }
        assert api.post("/v1/chat/completions", json=chat, headers=headers).status_code == 200
        streamed = api.post("/v1/chat/completions", json={**chat, "stream": True}, headers=headers)
        assert streamed.status_code == 200
        done = api.post(
            "/v1/completions",
            json={"model": "smollm2", "prompt": c["completion"], "max_tokens": 8},
            headers=headers,
        )
        assert done.status_code == 200
        # no RAG index or vision model in this release: these fail on the device, and
        # their failure is counted, never described, in telemetry
        api.post(
            "/v1/rag/ingest",
            files={"file": (f"{c['docname']}.txt", f"Secret plan: {c['doc']}".encode())},
            headers=headers,
        )
        api.post("/v1/rag/query", json={"question": c["question"]}, headers=headers)
        api.post(
            "/v1/vision/classify",
            files={"file": (f"{c['image']}.jpg", _jpeg_with_exif(c["exif"]), "image/jpeg")},
            headers=headers,
        )
        api.post("/v1/embeddings", json={"model": c["prompt"], "input": c["doc"]}, headers=headers)

    # two telemetry periods after the traffic, so its counts were reported
    def telemetry_posts() -> int:
        return http_tap.sent().count(f"POST {paths.DEVICE_TELEMETRY} ".encode())

    before = telemetry_posts()
    wait_until(lambda: telemetry_posts() >= before + 2, timeout=90, what="two telemetry reports")
    with agent.api() as api:
        status = api.get("/v1/status").json()
    agent.terminate()

    sent_http, sent_mqtt = http_tap.sent(), mqtt_tap.sent()
    # the relays saw the traffic they should: reports with usage counts, the MQTT session
    assert b'"requests_by_feature"' in sent_http
    assert agent.device_id.encode() in sent_mqtt
    assert status["telemetry"]["enabled"] is True
    for name, canary in CANARIES.items():
        for form in (canary, canary.upper(), canary.encode().hex()):
            assert form.encode() not in sent_http, f"the {name} canary reached the control plane"
            assert form.encode() not in sent_mqtt, f"the {name} canary reached the broker"
