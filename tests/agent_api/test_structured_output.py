"""Structured output, tool calls and logprobs through the official openai client, on the
real SmolLM2 model: what the grammar promises (the output parses and validates), what is
refused before any model work, and logprobs that agree with themselves."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from tests.agent_api.conftest import LLM, TOKEN, Served, release, settings_for_tests
from tests.live_server import LiveServer

pytestmark = pytest.mark.slow

TOOL_TEMPLATE = (
    Path(__file__).resolve().parents[2] / "models" / "chat_templates" / "chatml-tools.jinja"
).read_text()


@pytest.fixture
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def create(client: openai.OpenAI, **request: Any) -> Any:
    """``client.chat.completions.create`` with the served model (untyped: the requests
    here are built as plain dicts)."""
    return client.chat.completions.create(model=LLM, **request)


def short(max_length: int = 12) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length}


def obj(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


# Twenty schemas, each bounded so that a complete answer fits in max_tokens.
SCHEMAS: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "Describe a person.", obj(name=short(), age={"type": "integer"})),
    ("flag", "Is the sky blue?", obj(answer={"type": "boolean"})),
    ("color", "Pick a color.", obj(color={"enum": ["red", "green", "blue"]})),
    ("const", "Say the version.", obj(version={"const": "1.0"}, ok={"type": "boolean"})),
    ("tags", "List two tags.", obj(tags={"type": "array", "items": short(8), "maxItems": 3})),
    (
        "at-least-two",
        "Give numbers.",
        obj(nums={"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}),
    ),
    ("nested", "A city and its country.", obj(city=obj(name=short(), country=short()))),
    ("nullable", "A nickname if any.", obj(nick={"anyOf": [short(), {"type": "null"}]})),
    ("typelist", "An id.", obj(id={"type": ["integer", "string"]})),
    ("date", "When was it?", obj(day={"type": "string", "format": "date"})),
    ("time", "What time is it?", obj(at={"type": "string", "format": "time"})),
    ("datetime", "When is the meeting?", obj(when={"type": "string", "format": "date-time"})),
    ("uuid", "Make an identifier.", obj(id={"type": "string", "format": "uuid"})),
    ("pattern", "A product code.", obj(code={"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"})),
    (
        "pattern-group",
        "Small or large?",
        obj(size={"type": "string", "pattern": "^(small|large)( box)?$"}),
    ),
    ("optional", "A title, maybe a year.", obj(["title"], title=short(), year={"type": "integer"})),
    ("number", "A price.", obj(price={"type": "number"}, currency={"enum": ["EUR", "USD"]})),
    (
        "tuple",
        "A point.",
        obj(point={"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}]}),
    ),
    (
        "defs",
        "A pet and its owner.",
        {
            **obj(pet={"$ref": "#/$defs/Animal"}, owner=short()),
            "$defs": {"Animal": obj(kind={"enum": ["cat", "dog"]}, legs={"type": "integer"})},
        },
    ),
    (
        "enum-items",
        "Two weekdays.",
        obj(days={"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "maxItems": 2}),
    ),
]


def ask(client: openai.OpenAI, prompt: str, response_format: Any, **extra: Any) -> Any:
    return create(
        client,
        messages=[{"role": "user", "content": prompt}],
        response_format=response_format,
        max_tokens=96,
        temperature=0,
        **extra,
    )


@pytest.mark.parametrize(("name", "prompt", "schema"), SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_json_schema_answers_parse_and_validate_against_their_schema(
    client: openai.OpenAI, name: str, prompt: str, schema: dict[str, Any]
) -> None:
    reply = ask(
        client,
        prompt,
        {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    value = json.loads(choice.message.content or "")
    jsonschema.validate(
        value, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_a_streamed_json_schema_answer_validates_too(client: openai.OpenAI) -> None:
    schema = obj(name=short(), age={"type": "integer"})
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}}
    whole = ask(client, "Describe a person.", fmt).choices[0].message.content
    stream = create(
        client,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format=fmt,
        max_tokens=96,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # Not compared with the whole answer: the second request reuses the first one's KV
    # prefix, and that batch split can flip a near-tie at temperature 0.
    for answer in (whole, text):
        jsonschema.validate(json.loads(answer or ""), schema)


def test_json_object_answers_are_json_objects(client: openai.OpenAI) -> None:
    reply = ask(client, "List three fruits.", {"type": "json_object"}, max_completion_tokens=40)
    text = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut short: the beginning of an object, which more text would close
        assert text.startswith("{")
        with pytest.raises(json.JSONDecodeError, match=r"Expecting|Unterminated"):
            json.loads(text)


def test_the_openai_parse_helper_returns_the_pydantic_model(client: openai.OpenAI) -> None:
    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=16)
        country: str = pydantic.Field(max_length=16)
        capital: bool

    reply = client.chat.completions.parse(
        model=LLM,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert parsed.name


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (obj(age={"type": "integer", "minimum": 0}), "'minimum' at $.properties.age"),
        (obj(tags={"type": "array", "items": short(), "uniqueItems": True}), "'uniqueItems'"),
        (obj(mail={"type": "string", "format": "email"}), "format 'email'"),
        ({"$ref": "https://example.com/s.json"}, "https://example.com/s.json"),
        (obj(x={"not": {"type": "string"}}), "'not' at $.properties.x"),
    ],
)
def test_an_unenforceable_schema_is_a_400_naming_the_construct(
    client: openai.OpenAI, schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "Hi", {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "response_format.json_schema.schema"
    assert named in error["message"]


# --- tools -------------------------------------------------------------------------------

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": obj(city=short(20), unit={"enum": ["celsius", "fahrenheit"]}),
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": obj(zone=short(20)),
    },
}
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def tool_client(smollm2: Path) -> Iterator[openai.OpenAI]:
    """SmolLM2 given a tool-capable chat template in its release config (its own template
    cannot render tools)."""
    settings = settings_for_tests()
    registry = ModelRegistry(settings)
    config = {"models": {LLM: {"chat_template": TOOL_TEMPLATE}}}
    registry.activate(release("tools", {LLM: ("llm", smollm2)}, config))
    app = create_local_api(registry, settings, api_token=TOKEN)
    with LiveServer(app) as server:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    registry.close()


def call_tools(client: openai.OpenAI, tool_choice: Any, **extra: Any) -> Any:
    request: dict[str, Any] = {"max_tokens": 80, "temperature": 0, **extra}
    return create(
        client,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice=tool_choice,
        **request,
    )


def assert_valid_calls(calls: Any, allowed: set[str]) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in allowed
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, PARAMETERS[call.function.name])


def test_required_tool_choice_gives_calls_that_match_their_parameters(
    tool_client: openai.OpenAI,
) -> None:
    reply = call_tools(tool_client, "required")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls, {"get_weather", "get_time"})


def test_a_named_tool_choice_calls_that_function(tool_client: openai.OpenAI) -> None:
    reply = call_tools(tool_client, {"type": "function", "function": {"name": "get_time"}})
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert calls is not None and len(calls) == 1
    assert_valid_calls(calls, {"get_time"})


def test_streamed_tool_calls_match_the_whole_answer(tool_client: openai.OpenAI) -> None:
    whole = call_tools(tool_client, "required").choices[0].message.tool_calls
    stream = call_tools(tool_client, "required", stream=True)
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["tool_calls"]
    assert whole is not None
    assert [(d.function.name, d.function.arguments) for d in deltas if d.function] == [
        (w.function.name, w.function.arguments) for w in whole
    ]
    assert_valid_calls([d for d in deltas], {"get_weather", "get_time"})


def test_auto_answers_in_words_or_with_valid_calls(tool_client: openai.OpenAI) -> None:
    for stream in (False, True):
        if stream:
            chunks = list(call_tools(tool_client, "auto", stream=True))
            calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            choice = call_tools(tool_client, "auto").choices[0]
            calls, text, reason = (
                choice.message.tool_calls or [],
                choice.message.content,
                choice.finish_reason,
            )
        if calls:
            assert reason == "tool_calls" and not text
            assert_valid_calls(calls, {"get_weather", "get_time"})
        else:
            assert text and not text.startswith("<") and reason in ("stop", "length")


def test_tool_choice_none_answers_in_words(tool_client: openai.OpenAI) -> None:
    choice = call_tools(tool_client, "none", max_tokens=12).choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_a_conversation_with_a_call_and_its_result_is_answered(tool_client: openai.OpenAI) -> None:
    reply = create(
        tool_client,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 40


def test_a_model_whose_template_cannot_take_tools_is_a_400_naming_it(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call_tools(client, "auto")
    error = caught.value.body
    assert isinstance(error, dict)
    assert f"model {LLM!r} cannot take tools" in error["message"]


def test_tool_parameters_the_grammar_cannot_enforce_are_a_400(tool_client: openai.OpenAI) -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": obj(n={"type": "integer", "maximum": 9})},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        create(
            tool_client,
            messages=[{"role": "user", "content": "Hi"}],
            tools=[WEATHER, bad],
            max_tokens=4,
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert "tools[1].function.parameters" in error["message"]
    assert "'maximum' at $.properties.n" in error["message"]


# --- logprobs ----------------------------------------------------------------------------


def check_entry(token: str, logprob: float, top: list[tuple[str, float]], n: int) -> None:
    assert logprob <= 0.0
    assert len(top) == n
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True)
    assert all(v <= 0.0 for v in values)
    assert math.fsum(math.exp(v) for v in values) <= 1.0 + 1e-4
    for alternative, value in top:
        if alternative == token:
            assert value == pytest.approx(logprob, abs=1e-6)
    if top:
        assert logprob <= values[0] + 1e-6  # nothing is likelier than the most likely


def test_chat_logprobs_cover_every_token_streamed_or_not(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    plain = create(client, messages=messages, max_tokens=10, temperature=0)
    whole = create(
        client,
        messages=messages,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = whole.choices[0]
    assert choice.message.content == plain.choices[0].message.content  # same sampling
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert whole.usage is not None and len(entries) == whole.usage.completion_tokens
    for e in entries:
        check_entry(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs], 3)
        assert bytes(e.bytes or []) == e.token.encode("utf-8")
        # temperature 0 takes the likeliest token: it heads its own alternatives
        assert e.top_logprobs[0].token == e.token
    stream = create(
        client,
        messages=messages,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    streamed = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]


def test_logprobs_of_a_grammar_constrained_answer_are_the_models_own(
    client: openai.OpenAI,
) -> None:
    reply = create(
        client,
        messages=[{"role": "user", "content": "Pick a color."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "c", "schema": obj(color={"enum": ["red", "blue"]})},
        },
        logprobs=True,
        top_logprobs=5,
        max_tokens=30,
        temperature=0,
    )
    content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
    assert content
    assert "".join(e.token for e in content) == reply.choices[0].message.content
    for e in content:
        check_entry(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs], 5)


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    whole = client.completions.create(
        model=LLM, prompt=prompt, max_tokens=6, temperature=0, logprobs=2
    )
    choice = whole.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert "".join(lp.tokens) == choice.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == len(prompt)
    assert lp.text_offset == [
        len(prompt) + len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))
    ]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        check_entry(token, value, sorted(top.items(), key=lambda kv: -kv[1]), 2)
    streamed: list[str] = []
    for chunk in client.completions.create(
        model=LLM, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.tokens or []
    assert streamed == lp.tokens


def test_top_logprobs_outside_0_to_20_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(
            client,
            messages=[{"role": "user", "content": "Hi"}],
            logprobs=True,
            top_logprobs=21,
            max_tokens=2,
        )
    assert "top_logprobs" in str(caught.value)
