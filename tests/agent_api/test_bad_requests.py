"""Bad input gets a clear OpenAI-shaped 4xx, and the agent keeps serving afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.agent_api.conftest import EMBEDDER, LLM, N_CTX, TOKEN, Served

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client
        # whatever the test sent, the agent still answers a good request
        ok = client.post(
            "/v1/completions",
            headers=AUTH,
            json={"model": LLM, "prompt": "Hello", "max_tokens": 2, "temperature": 0},
        )
        assert ok.status_code == 200, ok.text


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def chat(model: str = LLM, content: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def test_malformed_json_is_400_saying_so(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b'{"model": "smollm2", "messages": [',
    )
    error = error_of(response, 400)
    assert "not valid JSON" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_json_array_body_is_400(http: httpx.Client) -> None:
    error = error_of(http.post("/v1/completions", headers=AUTH, json=[1, 2]), 400)
    assert "JSON object" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "hot"),
        ("max_tokens", "ten"),
        ("stream", "yes"),
        ("messages", "hello"),
        ("n", 3),
        ("max_tokens", 0),
    ],
)
def test_wrong_field_type_or_value_is_400_naming_the_field(
    http: httpx.Client, field: str, value: Any
) -> None:
    body = chat(**{field: value}) if field != "messages" else {"model": LLM, "messages": value}
    error = error_of(http.post("/v1/chat/completions", headers=AUTH, json=body), 400)
    assert error["param"] is not None and error["param"].startswith(field)
    assert field in error["message"]


def test_missing_required_field_is_400(http: httpx.Client) -> None:
    error = error_of(http.post("/v1/completions", headers=AUTH, json={"model": LLM}), 400)
    assert error["param"] == "prompt"
    assert "Field required" in error["message"]


def test_unknown_model_is_404_listing_the_available_ones(http: httpx.Client) -> None:
    error = error_of(http.post("/v1/chat/completions", headers=AUTH, json=chat("gpt-4o")), 404)
    assert "'gpt-4o' does not exist" in error["message"]
    assert LLM in error["message"]
    assert error["code"] == "not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_longer_than_the_context_is_400_with_token_counts(
    http: httpx.Client, stream: bool
) -> None:
    long = "lorem ipsum " * N_CTX
    response = http.post(
        "/v1/chat/completions", headers=AUTH, json=chat(content=long, stream=stream)
    )
    error = error_of(response, 400)
    assert error["code"] == "context_overflow"
    assert f"context of {N_CTX} tokens" in error["message"]
    n_prompt = int(error["message"].split("the prompt is ")[1].split(" tokens")[0])
    assert n_prompt > N_CTX


def test_completion_longer_than_the_context_is_400(http: httpx.Client) -> None:
    body = {"model": LLM, "prompt": "word " * (N_CTX + 10), "max_tokens": 4}
    error = error_of(http.post("/v1/completions", headers=AUTH, json=body), 400)
    assert error["code"] == "context_overflow"
    assert "tokens" in error["message"]


def test_embedding_input_longer_than_the_model_takes_is_400(http: httpx.Client) -> None:
    body = {"model": EMBEDDER, "input": ["short", "word " * 2000]}
    error = error_of(http.post("/v1/embeddings", headers=AUTH, json=body), 400)
    assert "input[1]" in error["message"] and "tokens" in error["message"]


def test_body_over_the_limit_is_413(http: httpx.Client, served: Served) -> None:
    big = chat(content="x" * (served.settings.max_request_bytes + 10))
    error = error_of(http.post("/v1/chat/completions", headers=AUTH, json=big), 413)
    assert str(served.settings.max_request_bytes) in error["message"]


def test_body_over_the_limit_without_content_length_is_413(
    http: httpx.Client, served: Served
) -> None:
    payload = json.dumps(chat(content="y" * (served.settings.max_request_bytes + 10))).encode()

    def chunked() -> Iterator[bytes]:  # a generator body is sent chunked, without a length
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    response = http.post("/v1/chat/completions", headers=AUTH, content=chunked())
    error_of(response, 413)


def test_non_json_content_type_is_415(http: httpx.Client) -> None:
    response = http.post(
        "/v1/completions",
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        content=b"model=smollm2&prompt=hi",
    )
    assert "application/json" in error_of(response, 415)["message"]


def test_missing_token_is_401(http: httpx.Client) -> None:
    error = error_of(http.get("/v1/models"), 401)
    assert error["type"] == "authentication_error"
    assert "Authorization: Bearer" in error["message"]


def test_wrong_token_is_401_even_before_the_body_is_read(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        headers={"Authorization": "Bearer not-the-token"},
        content=b"{broken",
    )
    assert error_of(response, 401)["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_openai_client_with_a_wrong_key_gets_authentication_error(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_health_needs_no_token(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_route_is_404_in_openai_shape(http: httpx.Client) -> None:
    error_of(http.get("/v1/nope", headers=AUTH), 404)


def test_unsupported_features_are_refused_by_name(http: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    error = error_of(http.post("/v1/chat/completions", headers=AUTH, json=chat(tools=tools)), 400)
    assert "tools" in error["message"]
    body = {"model": LLM, "prompt": ["a", "b"]}
    error = error_of(http.post("/v1/completions", headers=AUTH, json=body), 400)
    assert "one string" in error["message"]


def test_status_reports_models_and_the_updaters_view(http: httpx.Client) -> None:
    body = http.get("/v1/status", headers=AUTH).json()
    assert body["release"] == {"id": "r1"}
    assert {m["name"] for m in body["models"]} == {LLM, EMBEDDER}
