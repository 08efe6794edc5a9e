"""Structured output: JSON Schemas checked and turned into GBNF grammars.

A grammar is what makes structured output a promise rather than a hope: llama.cpp only
samples tokens the grammar allows, so the text always parses. The promise holds only for
what the grammar can express, so every schema is first walked here and each construct
the converter would silently drop (numeric bounds, ``uniqueItems``, ``not``, most
``format``\\s, remote ``$ref``\\s, ...) is refused with its JSON path, before any work.
What passes is rebuilt into a plain schema the converter handles exactly (annotations
dropped, ``$defs`` renamed to safe rule names, ``{}`` spelled out as "any JSON value"),
converted with llama-cpp-python's ``SchemaConverter`` (imported only when needed), and
a few of its rules are replaced by stricter ones of ours (a calendar-valid ``date``).

Pure: values in, grammar text out; no model, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.errors import BadRequestError

__all__ = [
    "JSON_TYPES",
    "SchemaLimits",
    "SchemaRefusedError",
    "ToolChoice",
    "ToolFunction",
    "json_object_grammar",
    "json_schema_grammar",
    "parse_tool_calls",
    "starts_tool_calls",
    "tool_call_grammar",
]

JSON_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
FORMATS = ("date", "time", "date-time", "uuid")
"""The string formats the grammar enforces (others would be ignored, so they are refused)."""

TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"
MAX_PARALLEL_TOOL_CALLS = 4
"""How many tool calls one answer may hold when ``parallel_tool_calls`` is on."""

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
    }
)
_ROOT_ONLY = frozenset({"$schema", "$id", "$defs", "definitions"})

# Keywords the converter ignores or gets wrong, with what to do instead.
_WHY = {
    "oneOf": "the grammar cannot keep the alternatives mutually exclusive; use anyOf",
    "allOf": "the converter merges only properties and drops the rest; merge the schemas",
    "not": "a grammar cannot exclude a schema",
    "if": "conditional schemas cannot be enforced by a grammar",
    "then": "conditional schemas cannot be enforced by a grammar",
    "else": "conditional schemas cannot be enforced by a grammar",
    "dependentSchemas": "conditional schemas cannot be enforced by a grammar",
    "dependentRequired": "conditional requirements cannot be enforced by a grammar",
    "dependencies": "conditional requirements cannot be enforced by a grammar",
    "patternProperties": "property-name patterns are not enforced; list the properties",
    "propertyNames": "property-name rules are not enforced; list the properties",
    "unevaluatedProperties": "use additionalProperties",
    "unevaluatedItems": "use items",
    "minProperties": "property counts are not enforced; use required",
    "maxProperties": "property counts are not enforced; use additionalProperties: false",
    "contains": "the converter ignores it",
    "minContains": "the converter ignores it",
    "maxContains": "the converter ignores it",
    "uniqueItems": "a grammar cannot keep array items distinct",
    "minimum": "numeric bounds are not enforced; use enum, or check the value yourself",
    "maximum": "numeric bounds are not enforced; use enum, or check the value yourself",
    "exclusiveMinimum": "numeric bounds are not enforced; use enum, or check the value yourself",
    "exclusiveMaximum": "numeric bounds are not enforced; use enum, or check the value yourself",
    "multipleOf": "numeric steps are not enforced; use enum, or check the value yourself",
    "$dynamicRef": "dynamic references are not supported; use $ref to #/$defs/<name>",
    "$recursiveRef": "dynamic references are not supported; use $ref to #/$defs/<name>",
    "$anchor": "anchors are not supported; use $ref to #/$defs/<name>",
    "$dynamicAnchor": "anchors are not supported; use $ref to #/$defs/<name>",
    "contentSchema": "the converter ignores it",
}

_OBJECT_WORDS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_WORDS = frozenset({"items", "prefixItems", "minItems", "maxItems", "uniqueItems"})
_STRING_WORDS = frozenset({"format", "pattern", "minLength", "maxLength"})


@dataclass(frozen=True)
class SchemaLimits:
    """Bounds on a schema before it is converted (settings ``max_schema_*``)."""

    max_bytes: int = 32_768
    max_depth: int = 24
    max_grammar_bytes: int = 262_144
    max_repeat: int = 256
    """The largest minItems/maxItems/minLength/maxLength/{m,n} (grammar size grows with it)."""


class SchemaRefusedError(BadRequestError):
    """A schema (or tool definition) asks for something the grammar cannot enforce, or
    is too big; ``param`` names the request field, the message the JSON path."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolFunction:
    """One declared function: its name and its (already parsed) parameters schema."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


ToolChoice = Literal["auto", "required"] | str
"""``"auto"``, ``"required"``, or the name of the one function to call."""


# --- public entry points ---------------------------------------------------------------


def json_object_grammar() -> str:
    """Any JSON object (``response_format: {"type": "json_object"}``)."""
    return _convert({"type": "object"})


def json_schema_grammar(
    schema: object, limits: SchemaLimits, *, param: str = "response_format.json_schema.schema"
) -> str:
    """The grammar of ``schema``; raises :class:`SchemaRefusedError` naming the first
    construct it cannot enforce (``param`` is where the schema sits in the request)."""
    cleaned, defs = _Checker(schema, limits, param, prefix="d").run()
    grammar = _convert(_with_defs(cleaned, defs))
    return _bounded(grammar, limits, param)


def tool_call_grammar(
    functions: Sequence[ToolFunction],
    choice: ToolChoice,
    limits: SchemaLimits,
    *,
    parallel: bool = True,
    param: str = "tools",
) -> str:
    """The grammar of an answer to a chat with tools.

    ``"required"``: one or more calls (up to :data:`MAX_PARALLEL_TOOL_CALLS` when
    ``parallel``), each ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
    with arguments that match that function's parameters; a function name: exactly one
    call of it; ``"auto"``: those calls, or plain text that does not start with ``<``.
    """
    chosen = list(functions)
    if choice not in ("auto", "required"):
        chosen = [f for f in functions if f.name == choice]
        if not chosen:
            names = ", ".join(repr(f.name) for f in functions)
            raise SchemaRefusedError(
                f"tool_choice names function {choice!r}, which is not among the tools ({names})",
                "tool_choice",
            )
    alternatives: list[dict[str, Any]] = []
    all_defs: dict[str, Any] = {}
    for index, function in enumerate(functions):
        if function not in chosen:
            continue
        where = f"{param}[{index}].function.parameters"
        arguments, defs = _Checker(
            function.parameters or {"type": "object", "additionalProperties": False},
            limits,
            where,
            prefix=f"f{index}",
        ).run()
        if arguments.get("type") != "object":
            raise SchemaRefusedError(
                f"{where}: a function's parameters must be an object schema"
                ' ({"type": "object", "properties": {...}})',
                where,
            )
        all_defs.update(defs)
        alternatives.append(
            {
                "type": "object",
                "properties": {"name": {"const": function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
            }
        )
    call_schema: dict[str, Any] = (
        alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    )
    json_rules = _convert(_with_defs(call_schema, all_defs))
    lines = []
    for line in json_rules.splitlines():
        if line.startswith("root ::= "):
            line = "tool-call-json ::= " + line.removeprefix("root ::= ")
        lines.append(line)
    block = f"{_literal(TOOL_CALL_OPEN)} tool-call-json {_literal(TOOL_CALL_CLOSE)}"
    lines.append(f"tool-call-block ::= {block}")
    more = MAX_PARALLEL_TOOL_CALLS - 1 if parallel and choice in ("auto", "required") else 0
    calls = "tool-call-block" + _optional_repeats('"\\n" tool-call-block', more)
    lines.append(f"tool-calls ::= {calls}")
    if choice == "auto":
        lines.append("root ::= tool-calls | free-text")
        lines.append("free-text ::= ([^<\\x00] [^\\x00]*)?")
    else:
        lines.append("root ::= tool-calls")
    return _bounded("\n".join(lines) + "\n", limits, param)


# --- the walk --------------------------------------------------------------------------


_DEF_REF = re.compile(r"^#/(\$defs|definitions)/([^/]+)$")
_SAFE_RULE = re.compile(r"[^a-zA-Z0-9-]+")


class _Checker:
    """Walks one schema, refusing what the grammar cannot enforce, and rebuilds it."""

    def __init__(self, schema: object, limits: SchemaLimits, param: str, *, prefix: str) -> None:
        self._schema = schema
        self._limits = limits
        self._param = param
        self._defs_in: dict[str, object] = {}
        self._def_names: dict[str, str] = {}
        self._defs_out: dict[str, Any] = {}
        digest = hashlib.sha256(repr(schema).encode("utf-8")).hexdigest()[:8]
        self._prefix = f"ref-{prefix}-{digest}"

    def run(self) -> tuple[Any, dict[str, Any]]:
        try:
            size = len(json.dumps(self._schema))
        except (TypeError, ValueError) as e:
            raise self._refuse((), f"is not a JSON value ({e})") from e
        if size > self._limits.max_bytes:
            raise SchemaRefusedError(
                f"{self._param} is {size} bytes of JSON; this agent converts schemas of at"
                f" most {self._limits.max_bytes} bytes (setting max_schema_bytes)",
                self._param,
            )
        root = self._schema
        if not isinstance(root, (dict, bool)):
            raise self._refuse((), "must be a JSON object (a schema)")
        if isinstance(root, dict):
            for key in ("$defs", "definitions"):
                defs = root.get(key)
                if defs is None:
                    continue
                if not isinstance(defs, dict):
                    raise self._refuse((key,), "must be an object of named schemas")
                for name, sub in defs.items():
                    ref = f"#/{key}/{name}"
                    self._defs_in[ref] = sub
                    safe = _SAFE_RULE.sub("-", str(name)).strip("-") or "def"
                    self._def_names[ref] = f"{self._prefix}-{len(self._def_names)}-{safe}"
            for ref, sub in self._defs_in.items():
                key, name = ref[2:].split("/", 1)
                self._defs_out[self._def_names[ref]] = self._visit(sub, (key, name), 1)
        cleaned = self._visit(root, (), 0)
        return cleaned, self._defs_out

    # -- helpers --

    def _path(self, path: Sequence[str | int]) -> str:
        text = "$"
        for part in path:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text

    def _refuse(self, path: Sequence[str | int], why: str) -> SchemaRefusedError:
        return SchemaRefusedError(
            f"{self._param}: the schema at {self._path(path)} {why}", self._param
        )

    def _unsupported(self, path: Sequence[str | int], keyword: str) -> SchemaRefusedError:
        why = _WHY.get(keyword, "is not a keyword this agent can enforce")
        return SchemaRefusedError(
            f"{self._param}: '{keyword}' at {self._path(path)} is not supported in structured"
            f" output ({why})",
            self._param,
        )

    def _count(self, node: Mapping[str, Any], key: str, path: Sequence[str | int]) -> int | None:
        value = node.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._refuse((*path, key), "must be a non-negative integer")
        if value > self._limits.max_repeat:
            raise SchemaRefusedError(
                f"{self._param}: {key} {value} at {self._path(path)} is above this agent's"
                f" limit of {self._limits.max_repeat} (setting max_schema_repeat)",
                self._param,
            )
        return value

    # -- the visit --

    def _visit(self, node: object, path: tuple[str | int, ...], depth: int) -> Any:
        if depth > self._limits.max_depth:
            raise SchemaRefusedError(
                f"{self._param}: the schema nests deeper than {self._limits.max_depth} levels"
                f" at {self._path(path)} (setting max_schema_depth)",
                self._param,
            )
        if node is True:
            return _ANY
        if node is False:
            raise self._refuse(path, "is false (nothing matches), so no output could be valid")
        if not isinstance(node, dict):
            raise self._refuse(path, f"must be an object or a boolean, not {type(node).__name__}")
        words = {k: v for k, v in node.items() if k not in _ANNOTATIONS}
        for key in list(words):
            if key in _ROOT_ONLY:
                if path:
                    if key in ("$defs", "definitions"):
                        raise self._refuse(
                            (*path, key), "defines schemas below the root; move them to $defs"
                        )
                    raise self._unsupported(path, key)
                del words[key]
        for key in words:
            if key in _WHY and not (key == "uniqueItems" and words[key] is False):
                raise self._unsupported(path, key)
        if "$ref" in words:
            return self._ref(words, path)
        if "anyOf" in words:
            return self._any_of(words, path, depth)
        if "const" in words or "enum" in words:
            return self._constant(words, path)
        kind = self._kind(words, path)
        if isinstance(kind, list):
            return {"type": kind}
        if kind == "object":
            return self._object(words, path, depth)
        if kind == "array":
            return self._array(words, path, depth)
        if kind == "string":
            return self._string(words, path)
        extra = sorted(set(words) - {"type"})
        if extra:
            raise self._unsupported(path, extra[0])
        return {"type": kind}

    def _kind(self, words: Mapping[str, Any], path: tuple[str | int, ...]) -> str | list[str]:
        declared = words.get("type")
        if isinstance(declared, list):
            if not declared or not all(isinstance(t, str) and t in JSON_TYPES for t in declared):
                raise self._refuse(
                    (*path, "type"), f"must list JSON types ({', '.join(JSON_TYPES)})"
                )
            extra = sorted(set(words) - {"type"})
            if extra:
                raise SchemaRefusedError(
                    f"{self._param}: '{extra[0]}' at {self._path(path)} beside a list of types"
                    " is not enforced; use anyOf with one schema per type",
                    self._param,
                )
            return list(dict.fromkeys(declared))
        if declared is not None:
            if not isinstance(declared, str) or declared not in JSON_TYPES:
                raise self._refuse((*path, "type"), f"names no JSON type ({declared!r})")
            return declared
        groups = [
            kind
            for kind, keys in (
                ("object", _OBJECT_WORDS),
                ("array", _ARRAY_WORDS),
                ("string", _STRING_WORDS),
            )
            if keys & set(words)
        ]
        if not words:
            return list(JSON_TYPES)  # anything (the converter would read {} as "an object")
        if len(groups) != 1:
            unknown = sorted(words)
            if not groups:
                raise self._unsupported(path, unknown[0])
            raise self._refuse(path, f"mixes keywords of {' and '.join(groups)}; give a type")
        return groups[0]

    def _ref(self, words: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
        ref = words["$ref"]
        extra = sorted(set(words) - {"$ref"})
        if extra:
            raise SchemaRefusedError(
                f"{self._param}: '{extra[0]}' beside $ref at {self._path(path)} is ignored by"
                " the converter; move it into the referenced schema",
                self._param,
            )
        if not isinstance(ref, str) or not _DEF_REF.match(ref):
            raise SchemaRefusedError(
                f"{self._param}: $ref {ref!r} at {self._path(path)} is not supported (only"
                " local references of the form #/$defs/<name>; nothing is fetched)",
                self._param,
            )
        if ref not in self._def_names:
            raise self._refuse(path, f"refers to {ref}, which the schema does not define")
        return {"$ref": f"#/$defs/{self._def_names[ref]}"}

    def _any_of(self, words: Mapping[str, Any], path: tuple[str | int, ...], depth: int) -> Any:
        options = words["anyOf"]
        extra = sorted(set(words) - {"anyOf"})
        if extra:
            raise SchemaRefusedError(
                f"{self._param}: '{extra[0]}' beside anyOf at {self._path(path)} is ignored by"
                " the converter; put it inside each alternative",
                self._param,
            )
        if not isinstance(options, list) or not options:
            raise self._refuse((*path, "anyOf"), "must be a non-empty list of schemas")
        return {
            "anyOf": [
                self._visit(option, (*path, "anyOf", i), depth + 1)
                for i, option in enumerate(options)
            ]
        }

    def _constant(self, words: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
        extra = sorted(set(words) - {"const", "enum", "type"})
        if extra:
            raise SchemaRefusedError(
                f"{self._param}: '{extra[0]}' beside const/enum at {self._path(path)} is not"
                " enforced; list only the allowed values",
                self._param,
            )
        if "const" in words and "enum" in words:
            raise self._refuse(path, "has both const and enum; keep one")
        if "enum" in words:
            values = words["enum"]
            if not isinstance(values, list) or not values:
                raise self._refuse((*path, "enum"), "must be a non-empty list")
            for i, value in enumerate(values):
                self._encodable(value, (*path, "enum", i))
            return {"enum": values}
        self._encodable(words["const"], (*path, "const"))
        return {"const": words["const"]}

    def _encodable(self, value: object, path: tuple[str | int, ...]) -> None:
        """The converter writes constants into the grammar unescaped: a quote, backslash
        or control character there would break the JSON it generates."""
        if isinstance(value, str):
            if any(c in value for c in '"\\') or any(ord(c) < 0x20 for c in value):
                raise self._refuse(
                    path,
                    f"holds {value!r}, with a quote, backslash or control character that the"
                    " grammar converter cannot encode",
                )
        elif isinstance(value, dict):
            for k, v in value.items():
                self._encodable(k, path)
                self._encodable(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._encodable(v, (*path, i))

    def _object(self, words: Mapping[str, Any], path: tuple[str | int, ...], depth: int) -> Any:
        extra = sorted(set(words) - _OBJECT_WORDS - {"type"})
        if extra:
            raise self._unsupported(path, extra[0])
        properties = words.get("properties", {})
        if not isinstance(properties, dict):
            raise self._refuse((*path, "properties"), "must be an object of schemas")
        required = words.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self._refuse((*path, "required"), "must be a list of property names")
        missing = [r for r in required if r not in properties]
        if missing:
            raise self._refuse(
                (*path, "required"),
                f"requires {missing[0]!r}, which is not among its properties (the grammar"
                " generates only listed properties)",
            )
        cleaned: dict[str, Any] = {"type": "object"}
        if properties:
            out: dict[str, Any] = {}
            for name, sub in properties.items():
                self._encodable(name, (*path, "properties"))
                out[name] = self._visit(sub, (*path, "properties", name), depth + 1)
            cleaned["properties"] = out
            cleaned["required"] = list(dict.fromkeys(required))
        additional = words.get("additionalProperties")
        if additional is False:
            cleaned["additionalProperties"] = False
        elif isinstance(additional, dict) and additional:
            cleaned["additionalProperties"] = self._visit(
                additional, (*path, "additionalProperties"), depth + 1
            )
        elif additional is not None and additional is not True and additional != {}:
            raise self._refuse((*path, "additionalProperties"), "must be a boolean or a schema")
        elif properties and additional in (True, {}):
            cleaned["additionalProperties"] = True
        if "properties" not in cleaned and "additionalProperties" not in cleaned:
            return {"type": "object"}
        return cleaned

    def _array(self, words: Mapping[str, Any], path: tuple[str | int, ...], depth: int) -> Any:
        extra = sorted(set(words) - _ARRAY_WORDS - {"type"})
        if extra:
            raise self._unsupported(path, extra[0])
        low = self._count(words, "minItems", path)
        high = self._count(words, "maxItems", path)
        if low is not None and high is not None and low > high:
            raise self._refuse(path, f"has minItems {low} above maxItems {high}: nothing matches")
        items = words.get("items")
        prefix = words.get("prefixItems")
        if isinstance(items, list):  # the older spelling of a tuple
            prefix, items = items, False
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix:
                raise self._refuse((*path, "prefixItems"), "must be a non-empty list of schemas")
            if items not in (None, False):
                raise SchemaRefusedError(
                    f"{self._param}: 'items' beside prefixItems at {self._path(path)} is ignored"
                    " by the converter (it generates exactly the prefix); set items: false",
                    self._param,
                )
            n = len(prefix)
            if (low is not None and n < low) or (high is not None and n > high):
                raise self._refuse(path, f"generates exactly {n} items, outside min/maxItems")
            return {
                "type": "array",
                "prefixItems": [
                    self._visit(s, (*path, "prefixItems", i), depth + 1)
                    for i, s in enumerate(prefix)
                ],
            }
        if items is None or items is True or items == {}:
            if low or high is not None:
                raise SchemaRefusedError(
                    f"{self._param}: minItems/maxItems at {self._path(path)} are enforced only"
                    " with an items schema; add items",
                    self._param,
                )
            return {"type": "array"}
        if items is False:
            if low:
                raise self._refuse(path, "allows no items but requires some")
            return {"type": "array", "maxItems": 0, "items": {"type": "null"}}
        cleaned: dict[str, Any] = {
            "type": "array",
            "items": self._visit(items, (*path, "items"), depth + 1),
        }
        if low:
            cleaned["minItems"] = low
        if high is not None:
            cleaned["maxItems"] = high
        return cleaned

    def _string(self, words: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
        extra = sorted(set(words) - _STRING_WORDS - {"type"})
        if extra:
            raise self._unsupported(path, extra[0])
        used = [k for k in ("format", "pattern") if k in words]
        if {"minLength", "maxLength"} & set(words):
            used.append("minLength/maxLength")
        if len(used) > 1:
            raise SchemaRefusedError(
                f"{self._param}: {' and '.join(used)} together at {self._path(path)} are not"
                " enforced (the converter keeps only one); keep one of them",
                self._param,
            )
        if "format" in words:
            fmt = words["format"]
            if fmt not in FORMATS:
                raise SchemaRefusedError(
                    f"{self._param}: format {fmt!r} at {self._path(path)} is not enforced by the"
                    f" grammar (supported: {', '.join(FORMATS)}); use a pattern or no format",
                    self._param,
                )
            return {"type": "string", "format": fmt}
        if "pattern" in words:
            pattern = words["pattern"]
            if not isinstance(pattern, str):
                raise self._refuse((*path, "pattern"), "must be a string")
            problem = _pattern_problem(pattern, self._limits.max_repeat)
            if problem is not None:
                raise SchemaRefusedError(
                    f"{self._param}: pattern {pattern!r} at {self._path(path)} is not supported"
                    f" ({problem})",
                    self._param,
                )
            return {"type": "string", "pattern": _respelled(pattern)}
        low = self._count(words, "minLength", path)
        high = self._count(words, "maxLength", path)
        if low is not None and high is not None and low > high:
            raise self._refuse(path, f"has minLength {low} above maxLength {high}: nothing matches")
        cleaned: dict[str, Any] = {"type": "string"}
        if low:
            cleaned["minLength"] = low
        if high is not None:
            cleaned["maxLength"] = high
        return cleaned


_ANY: dict[str, Any] = {"type": list(JSON_TYPES)}


# --- patterns --------------------------------------------------------------------------

_PATTERN_META = set("^$.*+?()[]{}|\\")
_PATTERN_ESCAPABLE = set(".$*+?()[]{}|/-")
# The converter copies these escapes into GBNF literals, where they do not parse: they are
# spelled as the plain character (or a one-character class) before converting.
_PATTERN_RESPELLED = {".": "[.]", "$": "[$]", "/": "/", "-": "-"}


def _respelled(pattern: str) -> str:
    """``pattern`` (already inside the subset) with escapes the converter mishandles
    written another way with the same meaning."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and pattern[i + 1] in _PATTERN_RESPELLED:
            out.append(_PATTERN_RESPELLED[pattern[i + 1]])
            i += 2
        elif pattern[i] == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def _safe_char(c: str) -> bool:
    """A character the grammar may place unescaped inside a JSON string."""
    return ord(c) >= 0x20 and c not in '"\\' and ord(c) != 0x7F


def _pattern_problem(pattern: str, max_repeat: int) -> str | None:
    """Why ``pattern`` is outside the subset the converter turns into an exact grammar
    (None when it is inside): anchored ``^...$``; literals, escaped metacharacters,
    non-negated classes of safe characters, groups with ``|`` inside them, and the
    quantifiers ``? * + {m} {m,} {m,n}``. The converter mistranslates the rest (``.`` and
    negated classes admit quotes that end the JSON string, ``\\d`` is no GBNF escape,
    a top-level ``|`` loses its anchors)."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        return "it must be anchored: start with ^ and end with $"
    body = pattern[1:-1]
    i, depth, can_repeat = 0, 0, False
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in _PATTERN_ESCAPABLE:
                return f"escape \\{nxt} is not supported; write a class such as [0-9]"
            i, can_repeat = i + 2, True
        elif c == "[":
            end = body.find("]", i + 1)
            if end < 0:
                return "a character class is not closed"
            members = body[i + 1 : end]
            if members.startswith("^"):
                return "negated classes are not supported (they admit quotes)"
            if not members or "\\" in members or "[" in members:
                return "classes must list plain characters and ranges"
            for j, m in enumerate(members):
                if not _safe_char(m):
                    return f"class member {m!r} cannot appear unescaped in a JSON string"
                if m == "-" and 0 < j < len(members) - 1:
                    lo, hi = members[j - 1], members[j + 1]
                    if ord(lo) > ord(hi):
                        return f"class range {lo}-{hi} is reversed"
                    if ord(lo) <= 0x22 <= ord(hi) or ord(lo) <= 0x5C <= ord(hi):
                        return f"class range {lo}-{hi} includes a quote or a backslash"
            i, can_repeat = end + 1, True
        elif c == "(":
            if body[i + 1 : i + 2] == "?":
                return "(?...) groups are not supported"
            depth, i, can_repeat = depth + 1, i + 1, False
        elif c == ")":
            if depth == 0:
                return "unbalanced parentheses"
            depth, i, can_repeat = depth - 1, i + 1, True
        elif c == "|":
            if depth == 0:
                return "alternatives must sit in a group, as in ^(a|b)$"
            i, can_repeat = i + 1, False
        elif c in "*+?":
            if not can_repeat:
                return f"{c!r} does not follow something to repeat (lazy quantifiers too)"
            i, can_repeat = i + 1, False
        elif c == "{":
            end = body.find("}", i)
            match = re.fullmatch(r"(\d+)(,(\d*))?", body[i + 1 : end]) if end > 0 else None
            if not can_repeat or match is None:
                return "a {m,n} quantifier is malformed or follows nothing"
            low = int(match.group(1))
            high = int(match.group(3)) if match.group(3) else low if not match.group(2) else None
            if max(low, high or 0) > max_repeat:
                return f"a repeat count above {max_repeat} (setting max_schema_repeat)"
            if high is not None and high < low:
                return "a {m,n} quantifier has m > n"
            i, can_repeat = end + 1, False
        elif c in "^$.":
            return f"{c!r} inside the pattern is not supported"
        else:
            if not _safe_char(c):
                return f"{c!r} cannot appear unescaped in a JSON string"
            i, can_repeat = i + 1, True
    if depth:
        return "unbalanced parentheses"
    return None


# --- conversion ------------------------------------------------------------------------

# The converter's date admits 2024-02-31 and year 0000; this one only calendar dates
# (years 0001-9999; 29 February is never generated, as the grammar cannot count years).
_DATE_RULE = (
    'date ::= ( [1-9] [0-9] [0-9] [0-9] | "0" [1-9] [0-9] [0-9] | "00" [1-9] [0-9]'
    ' | "000" [1-9] ) "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )'
    ' | ( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" )'
    ' | "02" "-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) )'
)


def _with_defs(schema: Any, defs: Mapping[str, Any]) -> Any:
    if not defs:
        return schema
    return {**schema, "$defs": dict(defs)}


def _convert(schema: Any) -> str:
    try:
        from llama_cpp import llama_grammar
    except ImportError as e:  # the agent was installed without its llm extra
        raise BadRequestError(
            "structured output needs llama-cpp-python (the agent's 'llm' extra)"
        ) from e
    converter_class: Any = llama_grammar.SchemaConverter  # untyped upstream
    converter = converter_class(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "schema")
    converter.visit(resolved, "")
    lines = [
        _DATE_RULE if line.startswith("date ::= ") else line
        for line in converter.format_grammar().splitlines()
    ]
    return "\n".join(lines) + "\n"


def _bounded(grammar: str, limits: SchemaLimits, param: str) -> str:
    size = len(grammar.encode("utf-8"))
    if size > limits.max_grammar_bytes:
        raise SchemaRefusedError(
            f"{param} makes a grammar of {size} bytes; this agent samples with grammars of at"
            f" most {limits.max_grammar_bytes} bytes (setting max_grammar_bytes): simplify it",
            param,
        )
    return grammar


def _literal(text: str) -> str:
    return json.dumps(text)


def _optional_repeats(item: str, times: int) -> str:
    """`` (item (item ...)?)?`` nested ``times`` deep: up to ``times`` more items."""
    result = ""
    for _ in range(times):
        result = f" ({item}{result})?"
    return result


# --- reading tool calls back -----------------------------------------------------------

_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)


def starts_tool_calls(text: str) -> bool:
    """Whether generated text is (the beginning of) tool calls rather than an answer."""
    probe = text[: len(TOOL_CALL_OPEN)]
    return bool(probe) and TOOL_CALL_OPEN.startswith(probe)


def parse_tool_calls(text: str) -> list[tuple[str, str]] | None:
    """The ``(name, arguments as JSON text)`` of each call in text generated under
    :func:`tool_call_grammar`; None when the text is not complete calls (an answer in
    words, or calls cut short by ``max_tokens``)."""
    rest = text.strip()
    if not rest.startswith(TOOL_CALL_OPEN.strip()):
        return None
    calls: list[tuple[str, str]] = []
    position = 0
    for match in _CALL_BLOCK.finditer(text):
        if text[position : match.start()].strip():
            return None
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append((call["name"], json.dumps(call.get("arguments", {}), ensure_ascii=False)))
        position = match.end()
    if not calls or text[position:].strip():
        return None
    return calls
