"""Structured output, tools and logprobs on the local API: what a request asks for,
checked before any model work, and how the generated text goes back on the wire.

The request side (:func:`response_format_grammar`, :func:`tools_plan`, :func:`chat_turns`)
takes plain values so that other surfaces (Ollama's ``format`` and ``tools``) reuse it;
the response side builds OpenAI's shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent.api.wire import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatFinishReason,
    ChatMessageOut,
    ChoiceLogprobs,
    CompletionLogprobs,
    FunctionCallOut,
    NamedToolChoice,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    ToolIn,
    TopLogprob,
    Usage,
)
from edge_agent.runtime import ChatTurn, GeneratedText, TextPiece, TokenLogprob, ToolCall
from edge_agent.runtime.grammar import (
    SchemaLimits,
    SchemaRefusedError,
    ToolFunction,
    json_object_grammar,
    json_schema_grammar,
    parse_tool_calls,
    tool_call_grammar,
)
from edge_agent.settings import AgentSettings

__all__ = [
    "ChatExtras",
    "chat_choice",
    "chat_chunks",
    "chat_extras",
    "chat_turns",
    "completion_logprobs",
    "response_format_grammar",
    "schema_limits",
    "tools_plan",
]

ToolMode = Literal["none", "auto", "required", "named"]


def schema_limits(settings: AgentSettings) -> SchemaLimits:
    return SchemaLimits(
        max_bytes=settings.max_schema_bytes,
        max_depth=settings.max_schema_depth,
        max_grammar_bytes=settings.max_grammar_bytes,
        max_repeat=settings.max_schema_repeat,
    )


# --- requests --------------------------------------------------------------------------


def response_format_grammar(
    response_format: Mapping[str, Any] | None,
    limits: SchemaLimits,
    *,
    param: str = "response_format",
) -> str | None:
    """The grammar an OpenAI ``response_format`` asks for (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise SchemaRefusedError(
                f"{param}.json_schema must be an object with a 'name' and a 'schema'",
                f"{param}.json_schema",
            )
        schema = spec.get("schema", {"type": "object"})
        return json_schema_grammar(schema, limits, param=f"{param}.json_schema.schema")
    raise SchemaRefusedError(
        f"{param}.type {kind!r} is not one of 'text', 'json_object', 'json_schema'",
        f"{param}.type",
    )


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools become: the definitions the chat template renders, the
    grammar of the answer, and whether the answer is read back as tool calls."""

    definitions: list[dict[str, Any]]
    grammar: str
    mode: ToolMode


def tools_plan(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    limits: SchemaLimits,
    *,
    parallel: bool = True,
) -> ToolPlan | None:
    """The plan for OpenAI-shaped ``tools`` (``{"type": "function", "function": {...}}``)
    and ``tool_choice``; None when no tool may be called (no tools, or ``"none"``)."""
    if tool_choice is not None and not tools and tool_choice != "none":
        raise SchemaRefusedError(
            "tool_choice needs tools: send the tools to choose from", "tool_choice"
        )
    if not tools or tool_choice == "none":
        return None
    functions: list[ToolFunction] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") or {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaRefusedError(f"tools[{i}].function.name is missing", f"tools[{i}]")
        if name in seen:
            raise SchemaRefusedError(
                f"tools[{i}].function.name {name!r} is declared twice", f"tools[{i}]"
            )
        seen.add(name)
        functions.append(ToolFunction(name, function.get("parameters") or {}))
    mode: ToolMode
    if tool_choice is None or tool_choice == "auto":
        choice, mode = "auto", "auto"
    elif tool_choice == "required":
        choice, mode = "required", "required"
    elif isinstance(tool_choice, Mapping):
        choice, mode = str((tool_choice.get("function") or {}).get("name", "")), "named"
    else:
        raise SchemaRefusedError(
            f"tool_choice {tool_choice!r} is not 'none', 'auto', 'required' or a function",
            "tool_choice",
        )
    grammar = tool_call_grammar(functions, choice, limits, parallel=parallel)
    return ToolPlan([dict(t) for t in tools], grammar, mode)


@dataclass(frozen=True)
class ChatExtras:
    """What a chat request asks beyond plain text."""

    grammar: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_mode: ToolMode = "none"
    logprobs: int | None = None

    @property
    def reshapes(self) -> bool:
        """Whether the answer leaves the plain text path (tool calls or logprobs)."""
        return self.tool_mode != "none" or self.logprobs is not None


def chat_extras(body: ChatCompletionRequest, limits: SchemaLimits) -> ChatExtras:
    """Check a chat request's response_format, tools and logprobs and plan them."""
    if body.functions:
        raise SchemaRefusedError(
            "the legacy 'functions' field is not supported; send the same definitions as"
            ' tools: [{"type": "function", "function": {...}}]',
            "functions",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise SchemaRefusedError("top_logprobs needs logprobs: true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    choice: str | Mapping[str, Any] | None = (
        body.tool_choice.model_dump()
        if isinstance(body.tool_choice, NamedToolChoice)
        else body.tool_choice
    )
    tools = [_tool_dict(t) for t in body.tools] if body.tools else None
    plan = tools_plan(tools, choice, limits, parallel=body.parallel_tool_calls)
    grammar = response_format_grammar(body.response_format, limits)
    if plan is not None and grammar is not None:
        raise SchemaRefusedError(
            "response_format and tools cannot be combined in one request (the answer is either"
            " tool calls or the formatted text); send one of them",
            "response_format",
        )
    if plan is not None:
        return ChatExtras(plan.grammar, plan.definitions, plan.mode, logprobs)
    return ChatExtras(grammar, None, "none", logprobs)


def _tool_dict(tool: ToolIn) -> dict[str, Any]:
    return tool.model_dump(exclude_none=True)


def chat_turns(body: ChatCompletionRequest) -> list[ChatTurn]:
    """The conversation, with assistant tool calls and tool results kept."""
    turns: list[ChatTurn] = []
    for i, message in enumerate(body.messages):
        if message.tool_calls and message.role != "assistant":
            raise SchemaRefusedError(
                f"messages[{i}] has tool_calls but role {message.role!r}; only assistant"
                " messages carry them",
                f"messages[{i}].tool_calls",
            )
        if message.role == "tool" and message.tool_call_id is None:
            raise SchemaRefusedError(
                f"messages[{i}] (role tool) needs the tool_call_id of the call it answers",
                f"messages[{i}].tool_call_id",
            )
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()
        )
        tool_call_id = message.tool_call_id if message.role == "tool" else None
        turns.append(ChatTurn(message.role, message.text(), calls, tool_call_id))
    return turns


# --- responses -------------------------------------------------------------------------


def _tool_calls(text: str) -> list[ToolCallOut] | None:
    parsed = parse_tool_calls(text)
    if parsed is None:
        return None
    return [
        ToolCallOut(
            id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCallOut(name=n, arguments=a)
        )
        for n, a in parsed
    ]


def _logprob(entry: TokenLogprob) -> TokenLogprobOut:
    raw = entry.token_bytes or entry.token.encode("utf-8")
    return TokenLogprobOut(
        token=entry.token,
        logprob=entry.logprob,
        bytes=list(raw),
        top_logprobs=[
            TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8"))) for t, lp in entry.top
        ],
    )


def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[_logprob(e) for e in entries])


def chat_choice(extras: ChatExtras, whole: GeneratedText) -> ChatChoice:
    """The one choice of a whole (not streamed) answer."""
    logprobs = chat_logprobs(whole.logprobs) if extras.logprobs is not None else None
    calls = _tool_calls(whole.text) if extras.tool_mode != "none" else None
    if calls:
        return ChatChoice(
            message=ChatMessageOut(content=None, tool_calls=calls),
            finish_reason="tool_calls",
            logprobs=logprobs,
        )
    return ChatChoice(
        message=ChatMessageOut(content=whole.text),
        finish_reason=whole.finish_reason,
        logprobs=logprobs,
    )


def completion_logprobs(entries: Sequence[TokenLogprob], start: int) -> CompletionLogprobs:
    """Completions' logprobs; ``start`` is where the generated text begins (characters)."""
    return CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[dict(e.top) for e in entries],
        text_offset=[start + e.offset for e in entries],
    )


ChunkMaker = Callable[..., ChatCompletionChunk]


async def chat_chunks(
    extras: ChatExtras,
    first: TextPiece | None,
    following: Callable[[], Awaitable[TextPiece | None]],
    chunk: Callable[[list[ChatChunkChoice], Usage | None], ChatCompletionChunk],
    *,
    include_usage: bool,
) -> AsyncIterator[ChatCompletionChunk]:
    """The chunks of a streamed answer with logprobs or tools. Text streams as it comes;
    tool calls (all of a ``required`` or named answer; an ``auto`` one once its first
    character says so) are held until complete, then sent as one delta."""
    want_logprobs = extras.logprobs is not None
    holding = extras.tool_mode in ("required", "named")
    deciding = extras.tool_mode == "auto"
    held_text: list[str] = []
    held_logprobs: list[TokenLogprob] = []
    role: Literal["assistant"] | None = "assistant"

    def content(text: str, entries: Sequence[TokenLogprob]) -> ChatCompletionChunk:
        nonlocal role
        delta = ChatDelta(role=role, content=text)
        role = None
        logprobs = chat_logprobs(entries) if want_logprobs else None
        return chunk([ChatChunkChoice(delta=delta, logprobs=logprobs)], None)

    piece = first
    while piece is not None:
        if deciding and piece.text:
            deciding = False
            holding = piece.text.startswith("<")  # the grammar's free text never does
        if holding or deciding:
            held_text.append(piece.text)
            held_logprobs.extend(piece.logprobs)
        elif piece.text or piece.logprobs or (role is not None and piece.finish_reason is None):
            yield content(piece.text, piece.logprobs)
        if piece.finish_reason is not None:
            reason: ChatFinishReason = piece.finish_reason
            if held_text or held_logprobs:
                text = "".join(held_text)
                calls = _tool_calls(text)
                if calls:
                    deltas = [
                        ToolCallDelta(index=i, id=c.id, type="function", function=c.function)
                        for i, c in enumerate(calls)
                    ]
                    logprobs = chat_logprobs(held_logprobs) if want_logprobs else None
                    delta = ChatDelta(role=role, tool_calls=deltas)
                    role = None
                    yield chunk([ChatChunkChoice(delta=delta, logprobs=logprobs)], None)
                    reason = "tool_calls"
                else:
                    yield content(text, held_logprobs)
            elif role is not None:
                yield content("", ())
            yield chunk([ChatChunkChoice(delta=ChatDelta(), finish_reason=reason)], None)
            if include_usage:
                usage = Usage(
                    prompt_tokens=piece.prompt_tokens,
                    completion_tokens=piece.completion_tokens,
                    total_tokens=piece.prompt_tokens + piece.completion_tokens,
                )
                yield chunk([], usage)
            return
        piece = await following()
