"""Structured output's rules, without a model: what a schema may ask for, what is refused
(with its JSON path), the limits, and reading tool calls back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_agent.runtime.grammar import (
    SchemaLimits,
    SchemaRefusedError,
    ToolFunction,
    json_schema_grammar,
    parse_tool_calls,
    tool_call_grammar,
)
from tests.requirements import LLAMA, require_installed

LIMITS = SchemaLimits()


@pytest.fixture(autouse=True)
def _converter() -> None:
    require_installed(*LLAMA)  # the converter ships in llama-cpp-python


def refusal(schema: Any, limits: SchemaLimits = LIMITS) -> str:
    with pytest.raises(SchemaRefusedError) as caught:
        json_schema_grammar(schema, limits)
    assert caught.value.param == "response_format.json_schema.schema"
    return str(caught.value)


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


# Each construct the converter would silently drop or get wrong, where it sits, and the
# word the refusal must name.
UNENFORCEABLE = [
    (obj(age={"type": "integer", "minimum": 0}), "'minimum' at $.properties.age"),
    (obj(age={"type": "number", "exclusiveMaximum": 5}), "'exclusiveMaximum' at $.properties.age"),
    (obj(n={"type": "integer", "multipleOf": 2}), "'multipleOf' at $.properties.n"),
    (
        obj(tags={"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        "'uniqueItems'",
    ),
    (obj(a={"not": {"type": "null"}}), "'not' at $.properties.a"),
    ({"if": {"type": "object"}, "then": {"required": ["a"]}}, "'if' at $"),
    (obj(a={"oneOf": [{"type": "string"}, {"type": "integer"}]}), "'oneOf' at $.properties.a"),
    ({"allOf": [obj(a={"type": "string"}), obj(b={"type": "string"})]}, "'allOf' at $"),
    (obj(email={"type": "string", "format": "email"}), "format 'email' at $.properties.email"),
    (obj(u={"type": "string", "format": "uri"}), "format 'uri'"),
    ({"$ref": "https://example.com/schema.json"}, "$ref 'https://example.com/schema.json'"),
    ({"$ref": "other.json#/x"}, "$ref 'other.json#/x'"),
    ({"$ref": "#/$defs/Missing"}, "refers to #/$defs/Missing"),
    ({"type": "object", "dependentSchemas": {"a": {}}}, "'dependentSchemas'"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "'dependentRequired'"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "'patternProperties'"),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, "'propertyNames'"),
    ({"type": "object", "minProperties": 1}, "'minProperties'"),
    ({"type": "array", "items": {}, "contains": {"type": "string"}}, "'contains'"),
    (obj(s={"type": "string", "pattern": "^\\d+$"}), "escape \\d"),
    (obj(s={"type": "string", "pattern": "^.*$"}), "'.' inside the pattern"),
    (obj(s={"type": "string", "pattern": "[a-z]+"}), "anchored"),
    (obj(s={"type": "string", "pattern": "^a|b$"}), "alternatives must sit in a group"),
    (obj(s={"type": "string", "pattern": "^[^x]+$"}), "negated classes"),
    (obj(s={"type": "string", "pattern": "^[ -~]+$"}), "includes a quote or a backslash"),
    (obj(s={"type": "string", "pattern": "^(?=a)a$"}), "(?...) groups"),
    (obj(s={"type": "string", "format": "date", "maxLength": 3}), "format and minLength/maxLength"),
    ({"type": ["string", "null"], "maxLength": 4}, "'maxLength' at $ beside a list of types"),
    ({"$ref": "#/$defs/A", "maxLength": 3, "$defs": {"A": {"type": "string"}}}, "beside $ref"),
    ({"anyOf": [{"type": "string"}], "type": "string"}, "'type' beside anyOf"),
    ({"type": "object", "properties": {}, "required": ["ghost"]}, "requires 'ghost'"),
    ({"enum": ['say "hi"']}, "quote, backslash or control character"),
    ({"type": "array", "minItems": 2}, "add items"),
    ({"type": "array", "prefixItems": [{}, {}], "items": {"type": "string"}}, "'items' beside"),
    (obj(a=False), "is false"),
    ({"type": "integer", "x-custom": 1}, "'x-custom' at $"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "nothing matches"),
]


@pytest.mark.parametrize(("schema", "named"), UNENFORCEABLE, ids=[n for _, n in UNENFORCEABLE])
def test_a_construct_the_grammar_cannot_enforce_is_refused_by_name_and_path(
    schema: Any, named: str
) -> None:
    assert named in refusal(schema)


def test_annotations_are_accepted_and_do_not_reach_the_converter() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Person",
        "description": "someone",
        "type": "object",
        "properties": {"name": {"type": "string", "title": "Name", "default": "x"}},
        "required": ["name"],
        "examples": [{"name": "Ada"}],
    }
    grammar = json_schema_grammar(schema, LIMITS)
    assert "Name" not in grammar and "Ada" not in grammar
    assert '"\\"name\\""' in grammar


def test_size_depth_and_repeat_limits_are_settings_named_in_the_refusal() -> None:
    big = obj(**{f"field_{i}": {"type": "string"} for i in range(200)})
    assert "max_schema_bytes" in refusal(big, SchemaLimits(max_bytes=1000))
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(10):
        deep = obj(inner=deep)
    assert "max_schema_depth" in refusal(deep, SchemaLimits(max_depth=5))
    assert "max_schema_repeat" in refusal({"type": "string", "maxLength": 100_000})
    assert "max_schema_repeat" in refusal(obj(s={"type": "string", "pattern": "^a{1,5000}$"}))
    wide = obj(**{f"f{i}": {"type": "string", "maxLength": 200} for i in range(20)})
    assert "max_grammar_bytes" in refusal(wide, SchemaLimits(max_grammar_bytes=4096))


def test_a_date_is_a_calendar_date_in_the_grammar() -> None:
    grammar = json_schema_grammar({"type": "string", "format": "date"}, LIMITS)
    date_rule = next(line for line in grammar.splitlines() if line.startswith("date ::="))
    assert '"02" "-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] )' in date_rule  # no 30 February
    assert '"000" [1-9]' in date_rule  # no year 0000


def test_defs_are_renamed_so_a_def_named_like_a_builtin_rule_keeps_its_own_grammar() -> None:
    schema = {
        "type": "object",
        "properties": {"s": {"$ref": "#/$defs/string"}, "t": {"type": "string"}},
        "required": ["s", "t"],
        "$defs": {"string": {"enum": ["only-this"]}},
    }
    grammar = json_schema_grammar(schema, LIMITS)
    assert "only-this" in grammar


def test_tool_grammar_names_the_parameters_path_of_the_function_at_fault() -> None:
    tools = [
        ToolFunction("ok", obj(city={"type": "string"})),
        ToolFunction("bad", obj(n={"type": "integer", "maximum": 3})),
    ]
    with pytest.raises(SchemaRefusedError) as caught:
        tool_call_grammar(tools, "auto", LIMITS)
    assert "tools[1].function.parameters" in str(caught.value)
    assert "'maximum' at $.properties.n" in str(caught.value)
    with pytest.raises(SchemaRefusedError, match="not among the tools"):
        tool_call_grammar(tools[:1], "nope", LIMITS)
    with pytest.raises(SchemaRefusedError, match="must be an object schema"):
        tool_call_grammar([ToolFunction("s", {"type": "string"})], "auto", LIMITS)


def test_tool_calls_are_read_back_only_when_complete() -> None:
    one = '<tool_call>\n{"name": "get", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert parse_tool_calls(one) == [("get", json.dumps({"city": "Oslo"}))]
    two = one + "\n" + one.replace("Oslo", "Rome")
    assert [json.loads(a)["city"] for _, a in parse_tool_calls(two) or []] == ["Oslo", "Rome"]
    assert parse_tool_calls(one[:-5]) is None  # cut short by max_tokens
    assert parse_tool_calls("The weather is fine.") is None
    assert parse_tool_calls(one + " and more words") is None
