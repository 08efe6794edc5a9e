"""Ollama's native API (``/api/...``) as a second surface over the same runtime.

Clients written for Ollama (its CLI's protocol, ``ollama-python``, ``ollama-js``, tools
that speak it) work against the agent unchanged: chat and generate streamed as NDJSON
(Ollama's default) or whole, embeddings, the model listings and ``/api/version``. Every
route sits behind the local API's bearer token and admission rules (``create_local_api``
includes :data:`router` with the same auth dependency), validates its request before any
model work, and answers errors in Ollama's shape, ``{"error": "..."}``, with the status
of the exception class. Models are the release's artifacts by name; a ``:latest`` tag is
accepted. What differs from Ollama is in docs/local-api.md.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from edge_agent.api.generation import run_embedding, start_generation
from edge_agent.api.inbound import InvalidParameterError, as_agent_error, json_body
from edge_agent.api.ollama_wire import (
    OLLAMA_VERSION,
    ChatRequest,
    Durations,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelDetails,
    ModelEntry,
    OllamaOptionError,
    RunningModel,
    ShowRequest,
    created_at,
    keep_alive_seconds,
    sampling_from_options,
)
from edge_agent.errors import (
    AgentError,
    ClientGoneError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthorizedError,
)
from edge_agent.release import InstalledArtifact
from edge_agent.runtime import (
    LLM,
    ChatTurn,
    GeneratedText,
    ModelLease,
    ModelRegistry,
    Sampling,
    ServedModel,
    TextGenerator,
    TextPiece,
)
from edge_agent.runtime.grammar import SchemaLimits, json_object_grammar, json_schema_grammar
from edge_agent.runtime.memory_budget import gguf_scalars
from edge_agent.settings import AgentSettings
from edge_agent.telemetry.instrument import GenerationObserver

__all__ = ["OllamaServing", "ollama_error_response", "router"]

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
_NEVER = "9999-12-31T23:59:59Z"  # /api/ps: a model with no idle unload


@dataclass(frozen=True)
class OllamaServing:
    """What the Ollama routes serve from; ``create_local_api`` puts one on ``app.state``."""

    registry: ModelRegistry
    settings: AgentSettings
    observer: GenerationObserver | None = None


# --- errors in Ollama's shape -----------------------------------------------------------


def ollama_error_response(exc: Exception) -> Response:
    """``{"error": "<what went wrong>"}`` with the status of the error's class."""
    error = as_agent_error(exc)
    if isinstance(error, ClientGoneError):  # nobody reads it
        log.debug("%s", error)
        return Response(status_code=error.http_status)
    headers: dict[str, str] = {}
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, ResourceExhaustedError):
        headers["Retry-After"] = "1"
    return JSONResponse({"error": str(error)}, error.http_status, headers=headers)


class _OllamaRoute(APIRoute):
    """A route whose failures (auth and body validation included: they run inside the
    route handler) are answered in Ollama's error shape instead of OpenAI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error becomes one {"error": ...} answer
                return ollama_error_response(exc)

        return answer


router = APIRouter(prefix="/api", route_class=_OllamaRoute, tags=["ollama"])

# What chat and generate answer, for the schema: one JSON object with "stream": false,
# else NDJSON (one JSON object per line, the last with "done": true).
_GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'The whole answer with "stream": false, else NDJSON: one JSON object'
        ' per line, the last with "done": true and the counters',
        "content": {
            "application/json": {"schema": {"type": "object"}},
            NDJSON: {"schema": {"type": "object"}},
        },
    }
}


def _serving(request: Request) -> OllamaServing:
    serving: OllamaServing = request.app.state.ollama
    return serving


Serving = Annotated[OllamaServing, Depends(_serving)]
# Ollama's own examples post JSON with `curl -d` (a form Content-Type): any type is read
ChatBody = Annotated[ChatRequest, Depends(json_body(ChatRequest, any_content_type=True))]
GenerateBody = Annotated[
    GenerateRequest, Depends(json_body(GenerateRequest, any_content_type=True))
]
EmbedBody = Annotated[EmbedRequest, Depends(json_body(EmbedRequest, any_content_type=True))]
EmbeddingsBody = Annotated[
    EmbeddingsRequest, Depends(json_body(EmbeddingsRequest, any_content_type=True))
]
ShowBody = Annotated[ShowRequest, Depends(json_body(ShowRequest, any_content_type=True))]


# --- request checks (before any model work) ---------------------------------------------


def served_name(model: str) -> str:
    """The artifact name for an Ollama model name: ``name`` or ``name:latest``."""
    return model.removesuffix(":latest")


def format_grammar(value: str | dict[str, Any] | None, settings: AgentSettings) -> str | None:
    """The grammar for Ollama's ``format``: none, ``"json"`` (any JSON object) or a JSON
    schema (enforced by grammar-constrained sampling, so the answer parses and validates;
    a construct the grammar cannot enforce is a 400 naming its JSON path)."""
    if value is None or value == "":
        return None
    if value == "json":
        return json_object_grammar()
    if isinstance(value, str):
        raise InvalidParameterError(
            f'format must be "json" or a JSON schema (an object), got {value!r}', "format"
        )
    limits = SchemaLimits(
        max_bytes=settings.max_schema_bytes,
        max_depth=settings.max_schema_depth,
        max_grammar_bytes=settings.max_grammar_bytes,
        max_repeat=settings.max_schema_repeat,
    )
    return json_schema_grammar(value, limits, param="format")


def _refuse_thinking(think: bool | str | None) -> None:
    if think:
        raise InvalidParameterError(
            "think is not supported: this agent's models do not return a separate reasoning"
            " trace; leave it out or send false",
            "think",
        )


def _keep_alive(value: Any) -> float | None:
    try:
        return keep_alive_seconds(value)
    except ValueError as e:
        raise InvalidParameterError(str(e), "keep_alive") from e


def _sampling(
    serving: OllamaServing,
    name: str,
    options: Mapping[str, Any] | None,
    grammar: str | None = None,
) -> Sampling:
    context = serving.registry.context_length(name)  # unknown model: 404 here, before work
    try:
        sampling = sampling_from_options(options, context_length=context)
    except OllamaOptionError as e:
        raise InvalidParameterError(str(e), e.param) from e
    return replace(sampling, grammar=grammar)


def _chat_turns(body: ChatRequest) -> list[ChatTurn]:
    for i, message in enumerate(body.messages):
        if message.images:
            raise InvalidParameterError(
                f"messages[{i}].images: this agent's chat models read text only; send the"
                " message without images (the vision routes under /v1/vision take images)",
                f"messages.{i}.images",
            )
        if message.tool_calls:
            raise InvalidParameterError(
                f"messages[{i}].tool_calls: tools are not supported on the Ollama API of this"
                " agent",
                f"messages.{i}.tool_calls",
            )
    if body.tools:
        raise InvalidParameterError(
            "tools are not supported on the Ollama API of this agent; send the request"
            " without tools",
            "tools",
        )
    return [ChatTurn(m.role, m.content) for m in body.messages]


def _generate_prompt(body: GenerateRequest) -> tuple[str | None, list[ChatTurn]]:
    """(the raw prompt to continue, or None) and the turns to chat with otherwise."""
    for field, given in (
        ("suffix", body.suffix),
        ("template", body.template),
        ("context", body.context),
        ("images", body.images),
    ):
        if given:
            raise InvalidParameterError(f"{field} is not supported: {_UNSUPPORTED[field]}", field)
    if body.raw:
        if body.system:
            raise InvalidParameterError(
                "system cannot be used with raw: a raw prompt is sent to the model as it is"
                " (put the system text in the prompt, or drop raw)",
                "system",
            )
        return body.prompt, []
    turns = [ChatTurn("system", body.system)] if body.system else []
    return None, [*turns, ChatTurn("user", body.prompt)]


_UNSUPPORTED = {
    "suffix": "this agent does not fill in the middle; send the prompt without a suffix",
    "template": "the chat template is part of the release (its model config), not a request",
    "context": "token contexts are not kept between requests; use /api/chat with the"
    " conversation's messages",
    "images": "this agent's text models read text only (the vision routes under /v1/vision"
    " take images)",
}


# --- timing: Ollama's counters ----------------------------------------------------------


class _Stopwatch:
    """When a request arrived, was admitted, started on its model, and produced its first
    and last pieces (``time.perf_counter_ns``; the model's thread writes the last three
    before handing over the piece that the event loop then reads)."""

    def __init__(self) -> None:
        self.received = time.perf_counter_ns()
        self.admitted = self.received
        self.started: int | None = None
        self.first: int | None = None
        self.last: int | None = None

    def admit(self) -> None:
        self.admitted = time.perf_counter_ns()

    def start(self) -> None:
        self.started = time.perf_counter_ns()

    def timed(
        self, produce: Callable[[TextGenerator], Iterator[TextPiece]]
    ) -> Callable[[TextGenerator], Iterator[TextPiece]]:
        def run(model: TextGenerator) -> Iterator[TextPiece]:
            self.start()
            pieces = produce(model)
            try:
                for piece in pieces:
                    now = time.perf_counter_ns()
                    if self.first is None:
                        self.first = now
                    self.last = now
                    yield piece
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()

        return run

    def durations(self, prompt_tokens: int, eval_tokens: int) -> Durations:
        now = time.perf_counter_ns()
        started = self.started if self.started is not None else now
        first = self.first if self.first is not None else started
        last = self.last if self.last is not None else first
        return Durations(
            total_duration=now - self.received,
            load_duration=started - self.admitted,
            prompt_eval_count=prompt_tokens,
            prompt_eval_duration=first - started,
            eval_count=eval_tokens,
            eval_duration=last - first,
        )


# --- chat and generate ------------------------------------------------------------------


def _line(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _part(kind: Literal["chat", "generate"], model: str, text: str) -> dict[str, Any]:
    if kind == "chat":
        return {
            "model": model,
            "created_at": created_at(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }
    return {"model": model, "created_at": created_at(), "response": text, "done": False}


def _final(
    kind: Literal["chat", "generate"],
    model: str,
    text: str,
    reason: str,
    durations: Durations | None,
) -> dict[str, Any]:
    body = _part(kind, model, text)
    body["done"] = True
    body["done_reason"] = reason
    if durations is not None:
        body.update(durations.model_dump())
    return body


async def _load(lease: ModelLease[Any]) -> None:
    """Load the leased model now (a no-op job: the model loads before any job runs)."""
    try:
        future = lease.run(lambda _m: None)
    except BaseException:
        lease.release()
        raise
    lease.release_when_done(future)
    await asyncio.wrap_future(future)


async def _load_or_unload(
    serving: OllamaServing,
    kind: Literal["chat", "generate"],
    model: str,
    name: str,
    keep: float | None,
) -> dict[str, Any]:
    """Ollama's empty request: load the model (or, with keep_alive 0, unload it)."""
    lease = serving.registry.lease_generator(name)  # admission: busy and unknown rules apply
    if keep == 0:
        with lease:
            serving.registry.keep_alive(name, 0)
        return _final(kind, model, "", "unload", None)
    await _load(lease)
    serving.registry.keep_alive(name, keep)
    return _final(kind, model, "", "load", None)


async def _answer(
    request: Request,
    serving: OllamaServing,
    kind: Literal["chat", "generate"],
    model: str,
    name: str,
    produce: Callable[[TextGenerator], Iterator[TextPiece]],
    *,
    stream: bool,
    keep: float | None,
    watch: _Stopwatch,
) -> Response:
    watch.admit()
    pieces, whole, first = await start_generation(
        serving.registry,
        serving.observer,
        request,
        name,
        stream,
        watch.timed(produce),
        chat=kind == "chat",
    )
    serving.registry.keep_alive(name, keep)  # runs after this request's job on the model
    if whole is not None:
        return JSONResponse(_whole(kind, model, whole, watch))
    assert pieces is not None

    async def lines() -> AsyncIterator[bytes]:
        piece = first
        try:
            while piece is not None:
                if piece.text:
                    yield _line(_part(kind, model, piece.text))
                if piece.finish_reason is not None:
                    counters = watch.durations(piece.prompt_tokens, piece.completion_tokens)
                    yield _line(_final(kind, model, "", piece.finish_reason, counters))
                    break
                piece = await pieces.next()
        except Exception as e:  # after the 200 header: in-band, as Ollama does
            yield _line({"error": str(as_agent_error(e))})
        finally:
            pieces.cancel()

    return StreamingResponse(lines(), media_type=NDJSON)


def _whole(
    kind: Literal["chat", "generate"], model: str, whole: GeneratedText, watch: _Stopwatch
) -> dict[str, Any]:
    counters = watch.durations(whole.prompt_tokens, whole.completion_tokens)
    return _final(kind, model, whole.text, whole.finish_reason, counters)


@router.post("/chat", response_model=None, responses=_GENERATION_RESPONSES)
async def chat(request: Request, serving: Serving, body: ChatBody) -> Response:
    """A chat reply, streamed as NDJSON unless ``"stream": false``."""
    watch = _Stopwatch()
    name = served_name(body.model)
    _refuse_thinking(body.think)
    keep = _keep_alive(body.keep_alive)
    turns = _chat_turns(body)
    sampling = _sampling(serving, name, body.options, format_grammar(body.format, serving.settings))
    if not turns:
        return JSONResponse(await _load_or_unload(serving, "chat", body.model, name, keep))
    return await _answer(
        request,
        serving,
        "chat",
        body.model,
        name,
        lambda m: m.chat(turns, sampling),
        stream=body.stream,
        keep=keep,
        watch=watch,
    )


@router.post("/generate", response_model=None, responses=_GENERATION_RESPONSES)
async def generate(request: Request, serving: Serving, body: GenerateBody) -> Response:
    """A reply to one prompt (through the chat template, or as it is with ``raw``)."""
    watch = _Stopwatch()
    name = served_name(body.model)
    _refuse_thinking(body.think)
    keep = _keep_alive(body.keep_alive)
    raw, turns = _generate_prompt(body)
    sampling = _sampling(serving, name, body.options, format_grammar(body.format, serving.settings))
    if not body.prompt:
        return JSONResponse(await _load_or_unload(serving, "generate", body.model, name, keep))

    def produce(m: TextGenerator) -> Iterator[TextPiece]:
        return m.chat(turns, sampling) if raw is None else m.complete(raw, sampling)

    return await _answer(
        request,
        serving,
        "generate",
        body.model,
        name,
        produce,
        stream=body.stream,
        keep=keep,
        watch=watch,
    )


# --- embeddings -------------------------------------------------------------------------


def _check_embedding_options(serving: OllamaServing, name: str, body: Any) -> float | None:
    keep = _keep_alive(body.keep_alive)
    _sampling(serving, name, body.options)  # names and num_ctx checked like a generation's
    return keep


@router.post("/embed")
async def embed(request: Request, serving: Serving, body: EmbedBody) -> dict[str, Any]:
    """One vector per input (a string or a list of strings)."""
    watch = _Stopwatch()
    name = served_name(body.model)
    keep = _check_embedding_options(serving, name, body)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    watch.admit()
    result = await run_embedding(
        serving.registry, serving.settings, request, name, texts, on_start=watch.start
    )
    serving.registry.keep_alive(name, keep)
    dims = len(result.vectors[0]) if result.vectors else 0
    if body.dimensions is not None and body.dimensions != dims:
        raise InvalidParameterError(
            f"model {body.model!r} makes {dims}-dimensional embeddings; 'dimensions' cannot"
            " change that",
            "dimensions",
        )
    counters = watch.durations(result.prompt_tokens, 0)
    return {
        "model": body.model,
        "embeddings": result.vectors,
        "total_duration": counters.total_duration,
        "load_duration": counters.load_duration,
        "prompt_eval_count": result.prompt_tokens,
    }


@router.post("/embeddings")
async def embeddings(request: Request, serving: Serving, body: EmbeddingsBody) -> dict[str, Any]:
    """The older embedding route: ``prompt`` in, ``embedding`` out (an empty prompt loads
    the model and returns an empty vector, as Ollama does)."""
    name = served_name(body.model)
    keep = _check_embedding_options(serving, name, body)
    if not body.prompt:
        await _load(serving.registry.lease_embedder(name))
        serving.registry.keep_alive(name, keep)
        return {"embedding": []}
    result = await run_embedding(serving.registry, serving.settings, request, name, [body.prompt])
    serving.registry.keep_alive(name, keep)
    return {"embedding": result.vectors[0]}


# --- listings ---------------------------------------------------------------------------


def _artifacts(registry: ModelRegistry) -> dict[str, InstalledArtifact]:
    release = registry.release
    return {} if release is None else {a.name: a for a in release.artifacts}


# llama.cpp's file types (general.file_type), as Ollama names the quantization level
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip
Metadata = Mapping[str, int | float | bool | str]


@functools.lru_cache(maxsize=32)
def _gguf_metadata(path: str, sha256: str) -> Metadata:
    """A GGUF file's scalar metadata (read once per file and hash; {} if unreadable)."""
    try:
        return gguf_scalars(Path(path))
    except (OSError, ValueError):
        return {}


async def _metadata(artifact: InstalledArtifact | None) -> Metadata:
    if artifact is None or artifact.format != "gguf":
        return {}
    return await run_in_threadpool(_gguf_metadata, str(artifact.path), artifact.sha256)


def _details(served: ServedModel, meta: Metadata) -> ModelDetails:
    family = meta.get("general.architecture")
    size = meta.get("general.size_label")
    file_type = meta.get("general.file_type")
    return ModelDetails(
        format=served.format,
        family=family if isinstance(family, str) else "",
        families=[family] if isinstance(family, str) else None,
        parameter_size=size if isinstance(size, str) else "",
        quantization_level=_FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
    )


def _modified_at(artifact: InstalledArtifact | None) -> str:
    if artifact is None:
        return created_at()
    try:
        mtime = os.stat(artifact.path).st_mtime
    except OSError:
        return created_at()
    return created_at(datetime.fromtimestamp(mtime, UTC))


def _tagged(name: str) -> str:
    return f"{name}:latest"


@router.get("/tags")
async def tags(serving: Serving) -> dict[str, Any]:
    """Every model of the active release (chat and embedding), by ``<name>:latest``."""
    artifacts = _artifacts(serving.registry)
    entries = [
        ModelEntry(
            name=_tagged(m.name),
            model=_tagged(m.name),
            modified_at=_modified_at(artifacts.get(m.name)),
            size=artifacts[m.name].length if m.name in artifacts else 0,
            digest=m.sha256,
            details=_details(m, await _metadata(artifacts.get(m.name))),
        )
        for m in serving.registry.models()
    ]
    return {"models": [e.model_dump() for e in entries]}


@router.get("/ps")
async def running(serving: Serving) -> dict[str, Any]:
    """The models loaded now, and when each unloads if unused (its keep-alive)."""
    registry = serving.registry
    artifacts = _artifacts(registry)
    now_wall, now = time.time(), time.monotonic()
    entries = []
    for m in registry.models():
        if not m.loaded:
            continue
        try:
            unloads_at = registry.unloads_at(m.name)
        except AgentError:  # swapped out between the two calls
            continue
        expires = (
            _NEVER
            if unloads_at is None
            else created_at(datetime.fromtimestamp(now_wall + (unloads_at - now), UTC))
        )
        entries.append(
            RunningModel(
                name=_tagged(m.name),
                model=_tagged(m.name),
                size=artifacts[m.name].length if m.name in artifacts else 0,
                digest=m.sha256,
                details=_details(m, await _metadata(artifacts.get(m.name))),
                expires_at=expires,
            )
        )
    return {"models": [e.model_dump() for e in entries]}


@router.post("/show")
async def show(serving: Serving, body: ShowBody) -> dict[str, Any]:
    """What this agent knows about one model: its GGUF metadata (``general.*`` and the
    architecture's keys; ``<arch>.context_length`` is what it was trained for), and its
    kind, release, served context (``outpost.context_length``) and digest."""
    given = body.model or body.name
    if given is None:
        raise InvalidParameterError('send the model to show: {"model": "<name>"}', "model")
    name = served_name(given)
    registry = serving.registry
    context = registry.context_length(name)  # unknown model: 404 naming the release's models
    served = next((m for m in registry.models() if m.name == name), None)
    if served is None:
        raise NotFoundError(f"model {given!r} does not exist")
    artifact = _artifacts(registry).get(name)
    meta = await _metadata(artifact)
    return {
        "modelfile": f"# served by the Outpost agent from release {served.release_id}\n",
        "parameters": "",
        "template": "",
        "details": _details(served, meta).model_dump(),
        "model_info": {
            **{k: v for k, v in meta.items() if not k.startswith("tokenizer.")},
            "outpost.kind": served.kind,
            "outpost.release_id": served.release_id,
            "outpost.context_length": context,
            "outpost.sha256": served.sha256,
        },
        "capabilities": ["completion"] if served.kind == LLM else ["embedding"],
        "modified_at": _modified_at(artifact),
    }


@router.get("/version")
async def version() -> dict[str, str]:
    """The Ollama API version this surface answers as."""
    return {"version": OLLAMA_VERSION}


_ROUTES = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show")
_GET_ROUTES = ("/api/tags", "/api/ps", "/api/version")


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
async def not_offered(request: Request, path: str) -> Response:
    """Ollama's other routes (pull, push, create, copy, delete, ...): not on a device."""
    where = f"/api/{path}"
    if where in _ROUTES or where in _GET_ROUTES:
        allowed = "GET" if where in _GET_ROUTES else "POST"
        return JSONResponse(
            {"error": f"{request.method} {where}: method not allowed (use {allowed})"},
            405,
            headers={"Allow": allowed},
        )
    return JSONResponse(
        {
            "error": f"{request.method} {where}: not offered by this agent; its models come"
            " from signed releases (no pull, push, create, copy or delete). Ollama routes"
            f" here: {', '.join(_ROUTES + _GET_ROUTES)}"
        },
        404,
    )
