"""The official openai client works unchanged against the agent's local API."""

from __future__ import annotations

import math

import openai
import pytest

from tests.agent_api.conftest import EMBEDDER, LLM, TOKEN, Served

pytestmark = pytest.mark.slow


@pytest.fixture
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def test_models_list_names_the_release_models(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {LLM, EMBEDDER}
    assert models[LLM].owned_by == "outpost"
    assert client.models.retrieve(EMBEDDER).id == EMBEDDER


def test_chat_answers_a_question(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "What color is the sky?"}],
        max_tokens=16,
        temperature=0,
    )
    choice = reply.choices[0]
    assert "blue" in (choice.message.content or "").lower()
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 16


def test_chat_streams_token_by_token_and_matches_the_whole_reply(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(
        model=LLM, messages=messages, max_tokens=12, temperature=0
    )
    stream = client.chat.completions.create(
        model=LLM,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for t in texts if t) > 3  # many pieces, not one buffered blob
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(texts) == whole.choices[0].message.content
    assert "hello" in "".join(texts).lower()
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["length"] or finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completion_continues_a_prompt(client: openai.OpenAI) -> None:
    done = client.completions.create(
        model=LLM, prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert "paris" in done.choices[0].text.lower()
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=LLM, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
        )
    ]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == done.choices[0].text


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_place_similar_sentences_close(client: openai.OpenAI) -> None:
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates.",
    ]
    # the client asks for base64 by default and decodes it itself
    result = client.embeddings.create(model=EMBEDDER, input=texts)
    vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2
    assert result.usage.prompt_tokens > 10
    as_floats = client.embeddings.create(model=EMBEDDER, input=texts[0], encoding_format="float")
    assert _cosine(as_floats.data[0].embedding, vectors[0]) > 0.9999


def test_registry_embed_matches_the_endpoint(client: openai.OpenAI, served: Served) -> None:
    text = "Solar panels charge the battery during the day."
    via_api = client.embeddings.create(model=EMBEDDER, input=text).data[0].embedding
    direct = served.registry.embed(EMBEDDER, [text])[0]
    assert _cosine(via_api, direct) > 0.9999


def test_embeddings_on_a_chat_model_name_the_embedding_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=LLM, input="hello")
    assert EMBEDDER in str(caught.value)
