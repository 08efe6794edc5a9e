"""``GET /metrics`` on the agent's local API: it needs the API token, parses with the
Prometheus client's own parser, counts requests by feature and error class, has LLM-sized
buckets, and carries no per-device or per-request label."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.runtime import ModelRegistry
from edge_agent.telemetry.agent import TelemetryAgent
from tests.agent_api.conftest import LLM, TOKEN, release, settings_for_tests
from tests.agent_telemetry.helpers import telemetry_app
from tests.live_server import LiveServer
from tests.requirements import LLAMA, require_installed, smollm2_gguf_path

DEVICE_ID = "dev-canary-7f3a"
ALLOWED_LABELS = {"feature", "class", "le", "version", "release", "scope"}


def _app(registry: ModelRegistry, tmp_path: Path) -> tuple[FastAPI, TelemetryAgent]:
    settings = settings_for_tests(state_dir=tmp_path)
    return telemetry_app(registry, settings, api_token=TOKEN, device_id=DEVICE_ID)


def _scrape(
    client: TestClient | httpx.Client,
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert DEVICE_ID not in text and TOKEN not in text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture
def no_release(tmp_path: Path) -> Iterator[tuple[TestClient, TelemetryAgent]]:
    registry = ModelRegistry(settings_for_tests(state_dir=tmp_path))
    app, telemetry = _app(registry, tmp_path)
    with TestClient(app, base_url="http://agent.test") as client:
        yield client, telemetry
    registry.close()


def test_metrics_need_the_api_token(no_release: tuple[TestClient, TelemetryAgent]) -> None:
    client, _ = no_release
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401
    # ... and the refusals themselves are counted, without saying who
    samples = _scrape(client)
    assert samples["outpost_agent_request_errors_total"][(("class", "unauthorized"),)] == 2


def test_requests_and_errors_are_counted_by_feature_and_class(
    no_release: tuple[TestClient, TelemetryAgent],
) -> None:
    client, telemetry = no_release
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=body, headers=auth).status_code == 503
    bad = client.post("/v1/embeddings", content=b"{", headers=auth)
    assert bad.status_code == 400
    samples = _scrape(client)
    requests = samples["outpost_agent_requests_total"]
    assert requests[(("feature", "chat"),)] == 1
    assert requests[(("feature", "embedding"),)] == 1
    assert requests[(("feature", "vision"),)] == 0
    errors = samples["outpost_agent_request_errors_total"]
    assert errors[(("class", "busy"),)] == 1  # 503: no release to serve yet
    assert errors[(("class", "bad_request"),)] == 1
    # failed requests are not timed: the latency histograms stay empty
    assert samples["outpost_agent_embedding_seconds_count"][()] == 0
    # buckets fit LLM latencies: well past the client library's default 10 s
    assert (("le", "120"),) in samples["outpost_agent_chat_ttft_seconds_bucket"]
    assert telemetry.metrics.snapshot().counts["requests_by_feature"][0] == 1


@pytest.mark.slow
def test_a_real_generation_fills_ttft_tokens_and_prompt_histograms(tmp_path: Path) -> None:
    require_installed(*LLAMA)
    settings = settings_for_tests(state_dir=tmp_path)
    registry = ModelRegistry(settings)
    registry.activate(release("r1", {LLM: ("llm", smollm2_gguf_path())}))
    app, _ = _app(registry, tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    chat = {"model": LLM, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    try:
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.post("/v1/chat/completions", json=chat, headers=auth).status_code == 200
            streamed = client.post(
                "/v1/chat/completions", json={**chat, "stream": True}, headers=auth
            )
            assert streamed.status_code == 200 and "[DONE]" in streamed.text
            completion = {"model": LLM, "prompt": "Once upon a time", "max_tokens": 8}
            assert client.post("/v1/completions", json=completion, headers=auth).status_code == 200
            samples = _scrape(client)
    finally:
        registry.close()
    assert samples["outpost_agent_chat_ttft_seconds_count"][()] == 2
    assert samples["outpost_agent_chat_ttft_seconds_sum"][()] > 0
    assert samples["outpost_agent_chat_time_per_output_token_seconds_count"][()] >= 1
    assert samples["outpost_agent_prompt_tokens_count"][()] == 3
    assert samples["outpost_agent_completion_seconds_count"][()] == 1
    assert samples["outpost_agent_output_tokens_total"][()] > 0
    assert samples["outpost_agent_decode_seconds_total"][()] > 0
    assert samples["outpost_agent_requests_total"][(("feature", "chat"),)] == 2
