"""Chat completions that opt into retrieval with ``"rag"``, through the official openai client:
real SmolLM2, the converted MiniLM, and an index of the eval pack's handbook."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from edge_agent.api import create_local_api
from edge_agent.rag import RagEngine
from edge_agent.rag.api import rag_router
from edge_agent.rag.release import ReleaseRagEngines
from edge_agent.runtime import ModelRegistry
from tests.agent_api.conftest import (
    EMBEDDER,
    LLM,
    TOKEN,
    release,
    settings_for_tests,
)
from tests.live_server import LiveServer

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "evals" / "rag" / "docs"
ANSWERABLE = "What temperature range must pharmaceutical shipments stay in?"
OFF_TOPIC = "How do I bake sourdough bread?"
# On the handbook's topic (retrieval finds the right documents) but the documents hold no
# price and no phone number: whatever the model writes, its citations cannot support it.
PRICE = "What is the price of a Kestrel K2 gateway?"
PHONE = "What is the phone number of the 24-hour fleet support line?"
# a document that makes the counting question answerable, so that the model generates a long
# answer (to the end of its token budget unless stopped)
COUNTING = (
    "Counting drill: at every shift change the depot crew lists the numbers from 1 to 1000,"
    " separated by commas, without stopping."
)
ENDLESS = "List the numbers from 1 to 1000 separated by commas, without stopping."
WASH_ROTA = "The night crew at depot Vega washes the delivery trucks every Friday after midnight."


@dataclass
class GroundedApi:
    engine: RagEngine
    url: str  # chat grounded in the handbook index
    no_rag_url: str  # an agent started without a RAG provider
    no_embedder_url: str  # a release that ships no embedding model
    registry: ModelRegistry


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(
    smollm2: Path, minilm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GroundedApi]:
    settings = settings_for_tests(n_ctx=2048)  # numbered sources need room in the prompt
    registry = ModelRegistry(settings)
    registry.activate(release("g1", {LLM: ("llm", smollm2), EMBEDDER: ("embedding", minilm)}))
    engines = ReleaseRagEngines(registry, tmp_path_factory.mktemp("state"))
    engine = engines()  # the release ships no index: documents are ingested on the device
    results = engine.ingest_paths(sorted(DOCS.iterdir()), root=DOCS)
    assert not [r for r in results if isinstance(r, Exception)]
    engine.ingest_text("wash-rota.txt", WASH_ROTA, metadata={"team": "night"})
    engine.ingest_text("counting-drill.txt", COUNTING)

    bare = ModelRegistry(settings)
    bare.activate(release("g2", {LLM: ("llm", smollm2)}))
    apps = (
        create_local_api(registry, settings, api_token=TOKEN, chat_grounding=engines),
        create_local_api(registry, settings, api_token=TOKEN),
        create_local_api(
            bare, settings, api_token=TOKEN, chat_grounding=ReleaseRagEngines(bare, Path("/x"))
        ),
    )
    apps[0].include_router(rag_router(engines))  # as the agent mounts it (edge_agent.serving)
    with LiveServer(apps[0]) as grounded, LiveServer(apps[1]) as plain, LiveServer(apps[2]) as b:
        yield GroundedApi(engine, grounded.url, plain.url, b.url, registry)
    engines.close()
    registry.close()
    bare.close()


def assert_quotes_are_exact(engine: RagEngine, citations: list[dict[str, Any]]) -> None:
    for c in citations:
        text = engine.index.document_text(c["document"])
        assert text is not None, c
        assert text[c["start"] : c["end"]] == c["quote"], c


def ask(question: str) -> list[Any]:
    return [{"role": "user", "content": question}]


def test_a_grounded_answer_carries_sources_and_exact_citations(api: GroundedApi) -> None:
    reply = client(api.url).chat.completions.create(
        model=LLM,
        messages=ask(ANSWERABLE),
        max_tokens=60,
        temperature=0,
        extra_body={"rag": {"k": 3}},
    )
    extra = reply.model_extra or {}
    assert extra["abstained"] is False and extra["supported"] is True and extra["reason"]
    assert [s["number"] for s in extra["sources"]] == [1, 2, 3]
    assert "cold-chain-thresholds.md" in {s["document"] for s in extra["sources"]}
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.prompt_tokens > 150  # the numbered sources went into the prompt
    assert extra["citations"], reply.choices[0].message.content
    assert {c["source"] for c in extra["citations"]} <= {1, 2, 3}
    assert_quotes_are_exact(api.engine, extra["citations"])


def test_a_streamed_grounded_answer_ends_with_a_citations_chunk(api: GroundedApi) -> None:
    stream = client(api.url).chat.completions.create(
        model=LLM,
        messages=ask(ANSWERABLE),
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"rag": {"k": 3}},
    )
    chunks = list(stream)  # the official client parses every event, the extra one too
    *answer, usage, last = chunks
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert text and sum(1 for c in answer if c.choices and c.choices[0].delta.content) > 3
    assert usage.usage is not None and usage.usage.prompt_tokens > 150
    assert last.choices == [] and last.usage is None
    extra = last.model_extra or {}
    assert extra["abstained"] is False and extra["supported"] is True
    assert "cold-chain-thresholds.md" in {s["document"] for s in extra["sources"]}
    assert extra["citations"], text
    assert_quotes_are_exact(api.engine, extra["citations"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_unanswerable_question_is_abstained_on_without_generating(
    api: GroundedApi, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": LLM,
        "messages": ask(OFF_TOPIC),
        "extra_body": {"rag": {}},
    }
    openai_client = client(api.url)
    if not stream:
        reply = openai_client.chat.completions.create(**request)
        extra = reply.model_extra or {}
        text = reply.choices[0].message.content or ""
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (0, 0)
    else:
        chunks = list(
            openai_client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        [usage] = [c.usage for c in chunks if c.usage is not None]
        assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)
        extra = chunks[-1].model_extra or {}
    assert extra["abstained"] is True and extra["citations"] == []
    assert extra["supported"] is True  # nothing was generated, so nothing to hide
    assert "sourdough" in extra["reason"]
    assert text.startswith("I don't know") and "sourdough" in text


UNSUPPORTED = [
    pytest.param(
        PRICE, "kestrel-k2-overview.md", {"no retrieved sentence states a price"}, id="price"
    ),
    pytest.param(
        PHONE,
        "support-contacts.md",
        {
            "no retrieved sentence states a phone number",
            "the answer could not be tied to any retrieved passage",
        },
        id="phone",
    ),
]


@pytest.mark.parametrize(("question", "document", "reasons"), UNSUPPORTED)
def test_a_whole_answer_its_citations_do_not_support_is_withheld(
    api: GroundedApi, question: str, document: str, reasons: set[str]
) -> None:
    reply = client(api.url).chat.completions.create(
        model=LLM,
        messages=ask(question),
        max_tokens=48,
        temperature=0,
        extra_body={"rag": {"k": 3}},
    )
    extra = reply.model_extra or {}
    assert document in {s["document"] for s in extra["sources"]}  # retrieval found the topic
    assert max(s["similarity"] for s in extra["sources"]) > 0.45
    assert extra["abstained"] is True and extra["supported"] is False
    assert extra["reason"] in reasons and extra["citations"] == []
    assert reply.choices[0].message.content == f"I don't know: {extra['reason']}."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None  # the model did run: its tokens are counted
    assert reply.usage.prompt_tokens > 150 and reply.usage.completion_tokens > 0


@pytest.mark.parametrize(("question", "document", "reasons"), UNSUPPORTED)
def test_a_streamed_answer_its_citations_do_not_support_is_flagged(
    api: GroundedApi, question: str, document: str, reasons: set[str]
) -> None:
    chunks = list(
        client(api.url).chat.completions.create(
            model=LLM,
            messages=ask(question),
            max_tokens=48,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"rag": {"k": 3}},
        )
    )
    *answer, usage, last = chunks
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert text and not text.startswith("I don't know")  # the model's text went out as usual
    assert usage.usage is not None and usage.usage.completion_tokens > 0
    assert last.choices == []
    extra = last.model_extra or {}
    assert document in {s["document"] for s in extra["sources"]}
    assert extra["abstained"] is True and extra["supported"] is False
    assert extra["reason"] in reasons and extra["citations"] == []


def test_filters_restrict_the_sources(api: GroundedApi) -> None:
    question = "When are the delivery trucks washed at the depot?"
    chat = client(api.url).chat.completions
    unfiltered = chat.create(
        model=LLM, messages=ask(question), max_tokens=24, temperature=0, extra_body={"rag": {}}
    )
    assert len({s["document"] for s in (unfiltered.model_extra or {})["sources"]}) > 1
    reply = chat.create(
        model=LLM,
        messages=ask(question),
        max_tokens=24,
        temperature=0,
        extra_body={"rag": {"k": 3, "filters": {"team": "night"}}},
    )
    assert {s["document"] for s in (reply.model_extra or {})["sources"]} == {"wash-rota.txt"}


def test_rag_on_an_agent_without_retrieval_is_a_clear_400(api: GroundedApi) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(api.no_rag_url).chat.completions.create(
            model=LLM, messages=ask(ANSWERABLE), extra_body={"rag": {"k": 3}}
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "rag"
    assert "retrieval is not available on this device" in error["message"]


def test_rag_on_a_release_without_an_embedding_model_is_a_clear_503(api: GroundedApi) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client(api.no_embedder_url).chat.completions.create(
            model=LLM, messages=ask(ANSWERABLE), extra_body={"rag": {"k": 3}}
        )
    assert caught.value.status_code == 503
    error = caught.value.body
    assert isinstance(error, dict)
    assert "retrieval is not available on this device" in error["message"]
    assert "no embedding model" in error["message"]


@pytest.mark.parametrize(
    ("rag", "param", "says"),
    [
        ({"k": 0}, "rag.k", "greater than or equal to 1"),
        ({"k": 51}, "rag.k", "less than or equal to 50"),
        ({"colour": "blue"}, "rag.colour", "Extra inputs are not permitted"),
        ({"filters": {"team": ["a", "b"]}}, "rag.filters.team", ""),
        ("yes", "rag", ""),
    ],
)
def test_a_malformed_rag_field_is_a_400_naming_the_field(
    api: GroundedApi, rag: Any, param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(api.url).chat.completions.create(
            model=LLM, messages=ask(ANSWERABLE), extra_body={"rag": rag}
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"].startswith(param) and says in error["message"]
    assert param in error["message"]


def test_an_unknown_model_is_refused_before_retrieval(api: GroundedApi) -> None:
    with pytest.raises(openai.NotFoundError):
        client(api.url).chat.completions.create(
            model="no-such-model", messages=ask(ANSWERABLE), extra_body={"rag": {}}
        )


def test_without_rag_the_reply_has_no_grounding_fields(api: GroundedApi) -> None:
    reply = client(api.url).chat.completions.create(
        model=LLM, messages=ask("Say hello."), max_tokens=4, temperature=0
    )
    assert not {"citations", "sources", "abstained"} & set(reply.model_extra or {})


def test_a_generated_rag_answer_stops_when_its_client_hangs_up(api: GroundedApi) -> None:
    def generated() -> int:
        served = next(m for m in api.registry.models() if m.name == LLM)
        return int(served.engine.get("tokens_generated", 0))  # {} until it is loaded

    def admitted() -> int:
        return next(m.admitted for m in api.registry.models() if m.name == LLM)

    before = generated()
    # k=1: only the counting drill, so the model counts on to its 1,200-token budget
    body = json.dumps({"question": ENDLESS, "generate": True, "max_tokens": 1200, "k": 1})
    host, port = urlsplit(api.url).netloc.split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            (
                f"POST /v1/rag/query HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        deadline = time.monotonic() + 120
        while generated() - before < 20:  # hang up once the answer is being generated
            assert time.monotonic() < deadline, "no answer was being generated"
            time.sleep(0.02)
    left = generated()
    while admitted() and time.monotonic() < deadline:
        time.sleep(0.02)
    # the generation stops within a few tokens of the client leaving (running on to its
    # budget would be a thousand more); counted, not timed
    assert generated() - left <= 24, f"{generated() - left} tokens after the client left"
