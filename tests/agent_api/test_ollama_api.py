"""Clients written for Ollama's own API work against the agent unchanged.

The official ``ollama`` Python client (and raw requests in Ollama's shapes) against the
real agent app on loopback with the real SmolLM2 and MiniLM models: chat and generate,
streamed (NDJSON, Ollama's default) and whole, embeddings, the listings, the counters of a
finished generation, keep_alive, and errors in Ollama's ``{"error": "..."}`` shape behind
the same bearer token as the OpenAI API. At temperature 0 an answer is the same text, and
the same token counts, as the OpenAI route gives for the same request.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from tests.agent_api.conftest import (
    EMBEDDER,
    LLM,
    N_CTX,
    TOKEN,
    Served,
    release,
    settings_for_tests,
)
from tests.live_server import LiveServer
from tests.requirements import require_module

pytestmark = pytest.mark.slow

ollama = require_module("ollama", "the official ollama Python client", "pip install -e '.[dev]'")

AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = [{"role": "user", "content": "What color is the sky?"}]
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture
def client(served: Served) -> Any:
    return ollama.Client(host=served.url, headers=AUTH, timeout=120)


@pytest.fixture
def oa(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as c:
        yield c


def assert_counters(final: Any, *, prompt_tokens: int, eval_tokens: int) -> None:
    """Ollama's counters: token counts as the OpenAI usage says, durations in ns."""
    assert final.prompt_eval_count == prompt_tokens
    assert final.eval_count == eval_tokens
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, name), int), name
        assert getattr(final, name) >= 0, name
    assert final.prompt_eval_duration > 0
    assert final.eval_duration > 0  # several tokens: some time between the first and last
    parts = final.load_duration + final.prompt_eval_duration + final.eval_duration
    assert final.total_duration >= parts
    assert final.total_duration < 10**12  # nanoseconds of a short request, not a clock value


# --- chat -------------------------------------------------------------------------------


def test_chat_whole_is_the_openai_answer(client: Any, oa: openai.OpenAI) -> None:
    reply = client.chat(model=LLM, messages=QUESTION, options=GREEDY, stream=False)
    same = oa.chat.completions.create(model=LLM, messages=QUESTION, max_tokens=12, temperature=0)
    assert reply.message.role == "assistant"
    assert reply.message.content == same.choices[0].message.content
    assert "blue" in reply.message.content.lower()
    assert reply.done is True
    assert reply.done_reason == same.choices[0].finish_reason
    assert reply.model == LLM
    assert datetime.fromisoformat(reply.created_at.replace("Z", "+00:00")).tzinfo is not None
    assert same.usage is not None
    assert_counters(
        reply,
        prompt_tokens=same.usage.prompt_tokens,
        eval_tokens=same.usage.completion_tokens,
    )


def test_chat_streams_ndjson_by_default_and_matches_the_whole_answer(client: Any) -> None:
    whole = client.chat(model=LLM, messages=QUESTION, options=GREEDY, stream=False)
    parts = list(client.chat(model=LLM, messages=QUESTION, options=GREEDY, stream=True))
    *middle, last = parts
    assert len([p for p in middle if p.message.content]) > 3  # piece by piece, not one blob
    assert all(p.done is False for p in middle)
    assert last.done is True and last.done_reason == whole.done_reason
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert_counters(last, prompt_tokens=whole.prompt_eval_count, eval_tokens=whole.eval_count)


def test_a_raw_chat_request_streams_ndjson_when_stream_is_not_given(http: httpx.Client) -> None:
    body = {"model": LLM, "messages": QUESTION, "options": GREEDY}
    with http.stream("POST", "/api/chat", headers=AUTH, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) > 3
    assert lines[-1]["done"] is True
    assert lines[-1]["message"] == {"role": "assistant", "content": ""}
    assert {"total_duration", "eval_count", "done_reason"} <= set(lines[-1])
    assert all(line["done"] is False for line in lines[:-1])


def test_options_are_honoured_num_predict_stop_and_seed(client: Any) -> None:
    short = client.chat(
        model=LLM, messages=QUESTION, options={"temperature": 0, "num_predict": 3}, stream=False
    )
    assert short.eval_count <= 3 and short.done_reason == "length"
    full = client.chat(model=LLM, messages=QUESTION, options=GREEDY, stream=False)
    cut = full.message.content.split()[2]  # a word the greedy answer reaches
    stopped = client.chat(
        model=LLM, messages=QUESTION, options={**GREEDY, "stop": [cut]}, stream=False
    )
    assert cut not in stopped.message.content
    assert full.message.content.startswith(stopped.message.content.rstrip())
    sampled = {"temperature": 1.0, "seed": 7, "num_predict": 12}
    one = client.chat(model=LLM, messages=QUESTION, options=sampled, stream=False)
    two = client.chat(model=LLM, messages=QUESTION, options=sampled, stream=False)
    assert one.message.content == two.message.content


def test_format_json_and_a_schema_give_json_that_parses_and_validates(client: Any) -> None:
    ask = [{"role": "user", "content": "Give the color of the sky as JSON."}]
    options = {"temperature": 0, "num_predict": 64}
    anything = client.chat(model=LLM, messages=ask, format="json", options=options, stream=False)
    text = anything.message.content
    assert text.lstrip().startswith("{")  # grammar-bound from its first token
    if anything.done_reason == "stop":  # the toy model may nest until num_predict runs out
        assert isinstance(json.loads(text), dict)
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "maxLength": 12}, "sure": {"type": "boolean"}},
        "required": ["color", "sure"],
        "additionalProperties": False,
    }
    parts = list(client.chat(model=LLM, messages=ask, format=schema, options=options, stream=True))
    answer = json.loads("".join(p.message.content for p in parts))
    assert set(answer) == {"color", "sure"}
    assert isinstance(answer["color"], str) and len(answer["color"]) <= 12
    assert isinstance(answer["sure"], bool)
    generated = client.generate(
        model=LLM, prompt="The sky's color, as JSON.", format=schema, options=options
    )
    assert set(json.loads(generated.response)) == {"color", "sure"}


# --- generate ---------------------------------------------------------------------------


def test_generate_goes_through_the_chat_template_like_a_user_message(
    client: Any, oa: openai.OpenAI
) -> None:
    system = "You answer in one short sentence."
    reply = client.generate(
        model=LLM, prompt="What color is the sky?", system=system, options=GREEDY, stream=False
    )
    same = oa.chat.completions.create(
        model=LLM,
        messages=[{"role": "system", "content": system}, *QUESTION],
        max_tokens=12,
        temperature=0,
    )
    assert reply.response == same.choices[0].message.content
    assert reply.done is True and reply.done_reason == same.choices[0].finish_reason
    assert same.usage is not None
    assert_counters(
        reply, prompt_tokens=same.usage.prompt_tokens, eval_tokens=same.usage.completion_tokens
    )


def test_generate_raw_continues_the_prompt_like_completions(client: Any, oa: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    parts = list(
        client.generate(
            model=LLM,
            prompt=prompt,
            raw=True,
            options={"temperature": 0, "num_predict": 6},
            stream=True,
        )
    )
    same = oa.completions.create(model=LLM, prompt=prompt, max_tokens=6, temperature=0)
    text = "".join(p.response for p in parts)
    assert text == same.choices[0].text
    assert "paris" in text.lower()
    assert parts[-1].done is True
    assert same.usage is not None
    assert parts[-1].eval_count == same.usage.completion_tokens
    assert parts[-1].prompt_eval_count == same.usage.prompt_tokens


def test_a_latest_tag_names_the_same_model(client: Any) -> None:
    tagged = client.generate(model=f"{LLM}:latest", prompt="Hi", options=GREEDY, stream=False)
    plain = client.generate(model=LLM, prompt="Hi", options=GREEDY, stream=False)
    assert tagged.response == plain.response
    assert tagged.model == f"{LLM}:latest"  # echoed as the client named it, as Ollama does


def test_a_curl_style_form_content_type_is_read_as_json(http: httpx.Client) -> None:
    # Ollama's docs post with `curl -d '{...}'`, which says application/x-www-form-urlencoded
    body = json.dumps({"model": LLM, "prompt": "Hi", "stream": False, "options": GREEDY})
    response = http.post(
        "/api/generate",
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        content=body,
    )
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True and response.json()["response"]


# --- embeddings -------------------------------------------------------------------------


def test_embed_is_the_openai_embedding(client: Any, oa: openai.OpenAI) -> None:
    texts = ["The sky is blue.", "Paris is in France."]
    reply = client.embed(model=EMBEDDER, input=texts)
    same = oa.embeddings.create(model=EMBEDDER, input=texts)
    assert len(reply.embeddings) == 2
    for got, want in zip(reply.embeddings, same.data, strict=True):
        assert len(got) == 384
        assert max(abs(a - b) for a, b in zip(got, want.embedding, strict=True)) < 1e-6
    assert reply.prompt_eval_count == same.usage.prompt_tokens
    assert reply.total_duration >= reply.load_duration >= 0
    one = client.embed(model=EMBEDDER, input="The sky is blue.")
    # alone or in a batch: the same vector up to llama.cpp's batch arithmetic
    assert one.embeddings[0] == pytest.approx(reply.embeddings[0], abs=1e-3)


def test_the_older_embeddings_route_answers_one_vector(client: Any) -> None:
    reply = client.embeddings(model=EMBEDDER, prompt="The sky is blue.")
    vector = list(reply.embedding)
    assert len(vector) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    same = client.embed(model=EMBEDDER, input="The sky is blue.")
    assert vector == pytest.approx(list(same.embeddings[0]), abs=1e-6)


# --- listings ---------------------------------------------------------------------------


def test_tags_list_the_release_models(client: Any, served: Served) -> None:
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {f"{LLM}:latest", f"{EMBEDDER}:latest"}
    artifacts = {a.name: a for a in served.release.artifacts}
    chat = listed[f"{LLM}:latest"]
    assert chat.digest == artifacts[LLM].sha256
    assert chat.size == artifacts[LLM].length
    assert chat.details is not None and chat.details.format == "gguf"
    # read from the GGUF header: SmolLM2-135M is a llama-architecture Q4_1 file
    assert (chat.details.family, chat.details.quantization_level) == ("llama", "Q4_1")
    assert chat.details.parameter_size == "135M"
    embedder = listed[f"{EMBEDDER}:latest"].details
    assert embedder is not None and embedder.family == "bert"
    assert chat.modified_at is not None


def test_show_tells_kind_context_and_digest(client: Any, served: Served) -> None:
    shown = client.show(LLM)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo["outpost.context_length"] == N_CTX
    assert shown.modelinfo["outpost.release_id"] == served.release.release_id
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] > N_CTX  # trained for; served: N_CTX
    assert not any(key.startswith("tokenizer.") for key in shown.modelinfo)
    assert client.show(f"{EMBEDDER}:latest").capabilities == ["embedding"]


def test_version_and_ps_answer(client: Any, http: httpx.Client) -> None:
    response = http.get("/api/version", headers=AUTH)
    assert response.status_code == 200 and response.json()["version"].count(".") == 2
    client.chat(model=LLM, messages=QUESTION, options={"num_predict": 2}, stream=False)
    loaded = {m.model: m for m in client.ps().models}
    assert f"{LLM}:latest" in loaded
    assert loaded[f"{LLM}:latest"].size is not None and loaded[f"{LLM}:latest"].size > 0


# --- errors in Ollama's shape -----------------------------------------------------------


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    message: str = body["error"]
    return message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "llama3", "messages": QUESTION}),
        ("/api/generate", {"model": "llama3", "prompt": "Hi"}),
        ("/api/embed", {"model": "llama3", "input": "Hi"}),
        ("/api/embeddings", {"model": "llama3", "prompt": "Hi"}),
        ("/api/show", {"model": "llama3"}),
        ("/api/chat", {"model": f"{LLM}:135m", "messages": QUESTION}),  # only :latest
        ("/api/chat", {"model": EMBEDDER, "messages": QUESTION}),  # not a chat model
    ],
)
def test_an_unknown_model_is_404_naming_the_models_served(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    message = error_of(http.post(path, headers=AUTH, json=body), 404)
    assert LLM in message or EMBEDDER in message


def test_the_client_raises_ollamas_response_error_for_an_unknown_model(client: Any) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3", messages=QUESTION)
    assert caught.value.status_code == 404
    assert "llama3" in caught.value.error and LLM in caught.value.error


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"top_k": 40}, "options.top_k"),
        ({"warmth": 1}, "options.warmth"),
        ({"temperature": "hot"}, "options.temperature"),
        ({"num_ctx": N_CTX * 8}, "options.num_ctx"),
    ],
)
def test_bad_options_are_400_naming_the_option(
    http: httpx.Client, options: dict[str, Any], named: str
) -> None:
    body = {"model": LLM, "messages": QUESTION, "options": options, "stream": False}
    assert named in error_of(http.post("/api/chat", headers=AUTH, json=body), 400)


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/api/chat", {"model": LLM, "messages": QUESTION, "format": "xml"}, "format"),
        (
            "/api/chat",
            {"model": LLM, "messages": QUESTION, "format": {"type": "integer", "minimum": 0}},
            "format",
        ),
        (
            "/api/chat",
            {"model": LLM, "messages": QUESTION, "tools": [{"type": "function"}]},
            "tools",
        ),
        (
            "/api/chat",
            {"model": LLM, "messages": [{"role": "user", "content": "?", "images": ["aGk="]}]},
            "images",
        ),
        (
            "/api/chat",
            {"model": LLM, "messages": QUESTION, "keep_alive": "5 minutes"},
            "keep_alive",
        ),
        ("/api/chat", {"model": LLM, "messages": [{"role": "wizard", "content": "?"}]}, "role"),
        ("/api/chat", {"model": LLM, "messages": "Hi"}, "messages"),
        ("/api/chat", {"model": LLM, "messages": QUESTION, "stream": "yes"}, "stream"),
        ("/api/generate", {"model": LLM, "prompt": "Hi", "context": [1, 2, 3]}, "context"),
        ("/api/generate", {"model": LLM, "prompt": "Hi", "template": "{{ .Prompt }}"}, "template"),
        ("/api/generate", {"model": LLM, "prompt": "Hi", "raw": True, "system": "x"}, "system"),
        ("/api/generate", {"model": LLM, "prompt": 42}, "prompt"),
        ("/api/embed", {"model": EMBEDDER, "input": []}, "input"),
        ("/api/embed", {"model": EMBEDDER, "input": [1, 2]}, "input"),
        ("/api/embed", {"model": EMBEDDER, "input": "x", "options": {"top_k": 1}}, "top_k"),
        ("/api/show", {}, "model"),
    ],
)
def test_bad_requests_are_400_saying_what_was_wrong(
    http: httpx.Client, path: str, body: dict[str, Any], named: str
) -> None:
    assert named in error_of(http.post(path, headers=AUTH, json=body), 400)


def test_malformed_json_is_400_in_ollamas_shape(http: httpx.Client) -> None:
    response = http.post(
        "/api/chat",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b'{"model": "smollm2", "messages": [',
    )
    assert "not valid JSON" in error_of(response, 400)


def test_a_body_over_the_request_limit_is_413_in_ollamas_shape(http: httpx.Client) -> None:
    response = http.post("/api/chat", headers=AUTH, content=b" " * (65 * 1024))
    assert "exceeds the limit" in error_of(response, 413)


def test_too_many_embedding_inputs_are_refused_before_any_work(
    http: httpx.Client, served: Served
) -> None:
    count = served.settings.max_embedding_inputs + 1
    body = {"model": EMBEDDER, "input": ["x"] * count}
    assert "max_embedding_inputs" in error_of(http.post("/api/embed", headers=AUTH, json=body), 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("GET", "/api/version"),
        ("POST", "/api/chat"),
        ("POST", "/api/pull"),
    ],
)
def test_no_token_is_401_and_a_wrong_one_too(http: httpx.Client, method: str, path: str) -> None:
    body = {"model": LLM, "messages": QUESTION}
    response = http.request(method, path, json=body if method == "POST" else None)
    assert "Authorization: Bearer" in error_of(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = http.request(
        method, path, headers={"Authorization": "Bearer nope-nope-nope-nope"}, json=body
    )
    assert "invalid API token" in error_of(wrong, 401)


def test_the_client_with_no_token_gets_401(served: Served) -> None:
    anonymous = ollama.Client(host=served.url, timeout=30)
    with pytest.raises(ollama.ResponseError) as caught:
        anonymous.list()
    assert caught.value.status_code == 401


def test_routes_an_edge_device_does_not_offer_are_404_and_wrong_methods_405(
    http: httpx.Client,
) -> None:
    pulled = error_of(http.post("/api/pull", headers=AUTH, json={"model": "llama3"}), 404)
    assert "signed releases" in pulled and "/api/chat" in pulled
    wrong = http.get("/api/chat", headers=AUTH)
    assert "use POST" in error_of(wrong, 405)
    assert wrong.headers["allow"] == "POST"


# --- keep_alive, on a registry of its own (it unloads models) ---------------------------


@pytest.fixture
def own(smollm2: Any) -> Iterator[tuple[ModelRegistry, str]]:
    settings = settings_for_tests()
    registry = ModelRegistry(settings)
    registry.activate(release("ka", {LLM: ("llm", smollm2)}))
    app = create_local_api(registry, settings, api_token=TOKEN)
    try:
        with LiveServer(app) as server:
            yield registry, server.url
    finally:
        registry.close()


def loaded(registry: ModelRegistry) -> bool:
    return next(m for m in registry.models() if m.name == LLM).loaded


def test_keep_alive_zero_unloads_after_the_request_and_durations_show_in_ps(
    own: tuple[ModelRegistry, str],
) -> None:
    registry, url = own
    client = ollama.Client(host=url, headers=AUTH, timeout=120)
    assert client.ps().models == []
    loading = client.generate(model=LLM, prompt="")  # Ollama's way to load a model
    assert loading.done_reason == "load" and loaded(registry)
    client.chat(model=LLM, messages=QUESTION, options={"num_predict": 2}, keep_alive="5m")
    expires = client.ps().models[0].expires_at
    in_five = datetime.now(UTC) + timedelta(minutes=5)
    assert abs((expires - in_five).total_seconds()) < 60
    client.chat(model=LLM, messages=QUESTION, options={"num_predict": 2}, keep_alive=-1)
    assert client.ps().models[0].expires_at.year == 9999  # never unloads
    reply = client.chat(model=LLM, messages=QUESTION, options={"num_predict": 2}, keep_alive=0)
    assert reply.done is True and reply.message.content
    assert eventually(lambda: not loaded(registry))  # queued right behind the reply's job
    assert client.ps().models == []
    again = client.chat(model=LLM, messages=QUESTION, options={"num_predict": 2})
    assert again.done is True and loaded(registry)  # the next request loads it again
    assert client.generate(model=LLM, prompt="", keep_alive=0).done_reason == "unload"
    assert eventually(lambda: not loaded(registry))


def eventually(condition: Callable[[], bool], within: float = 30.0) -> bool:
    """Whether ``condition`` holds within ``within`` s (a bound on waiting, not on speed)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
