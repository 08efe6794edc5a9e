"""The local API app: OpenAI-compatible routes over the model registry, token-protected."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from edge_agent.api.generation import StartedGeneration, run_embedding, start_generation
from edge_agent.api.grounded_chat import ChatGrounding, GroundedChat
from edge_agent.api.inbound import InvalidParameterError, as_agent_error, json_body
from edge_agent.api.ollama import OllamaServing
from edge_agent.api.ollama import router as ollama_router
from edge_agent.api.streaming import PieceStream
from edge_agent.api.structured import (
    chat_choice,
    chat_chunks,
    chat_extras,
    chat_turns,
    completion_logprobs,
    schema_limits,
)
from edge_agent.api.wire import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    EmbeddingItem,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ErrorBody,
    ErrorDetail,
    GroundedChatCompletion,
    GroundedChatCompletionChunk,
    Health,
    ModelCard,
    ModelList,
    Usage,
)
from edge_agent.errors import (
    AgentError,
    ClientGoneError,
    ConfigError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthorizedError,
)
from edge_agent.rag.api import RagChatOptions
from edge_agent.runtime import (
    GeneratedText,
    ModelRegistry,
    Sampling,
    TextGenerator,
    TextPiece,
)
from edge_agent.runtime.memory import process_memory
from edge_agent.settings import AgentSettings
from edge_agent.telemetry.instrument import GenerationObserver
from protocol.http_limits import MIB, BodySizeLimit, RouteBodyLimit

__all__ = ["InvalidParameterError", "create_local_api"]

log = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]


# --- errors: one handler, status from the exception class -------------------------------


def _code(exc: AgentError) -> str:
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StarletteHTTPException):  # routing: unknown path, wrong method
        detail = ErrorDetail(
            message=f"{request.method} {request.url.path}: {exc.detail}",
            type="invalid_request_error",
            code=re.sub(r"\W+", "_", str(exc.detail)).strip("_").lower() or None,
        )
        return JSONResponse(
            ErrorBody(error=detail).model_dump(), exc.status_code, headers=exc.headers
        )
    error = as_agent_error(exc)
    if isinstance(error, ClientGoneError):  # any local client can do this at will: no traceback
        log.debug("%s", error)
        return Response(status_code=error.http_status)  # nobody reads it
    headers: dict[str, str] = {}
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, ResourceExhaustedError):
        headers["Retry-After"] = "1"
    return JSONResponse(_error_body(error).model_dump(), error.http_status, headers=headers)


def _error_body(error: AgentError) -> ErrorBody:
    return ErrorBody(
        error=ErrorDetail(
            message=str(error),
            type=error.error_type,
            param=getattr(error, "param", None),
            code=_code(error),
        )
    )


# --- request plumbing -------------------------------------------------------------------


def _bearer_check(api_token: str) -> Callable[[Request], Awaitable[None]]:
    expected = api_token.encode("utf-8")

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise UnauthorizedError(
                "missing API token: send the header 'Authorization: Bearer <token>'"
            )
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), expected
        ):
            raise UnauthorizedError("invalid API token: check the agent's api-token")

    return require_token


def _sse(message: BaseModel) -> bytes:
    return b"data: " + message.model_dump_json().encode("utf-8") + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"
_MARK = "\x00piece\x00"


class _TextEvents:
    """Encodes the many mid-stream events of one response cheaply: the wire model is
    serialized once with a marker as its text, and each piece fills that template."""

    def __init__(self, template: BaseModel) -> None:
        data = template.model_dump(mode="json", exclude_none=True)  # leaner for clients
        for choice in data.get("choices", ()):
            choice.setdefault("finish_reason", None)  # OpenAI sends it in every chunk
        encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        marker = json.dumps(_MARK)[1:-1]
        head, found, tail = encoded.partition(marker)
        if not found:
            raise AssertionError("the event template has no text marker")
        self._head = b"data: " + head.encode("utf-8")
        self._tail = tail.encode("utf-8") + b"\n\n"

    def encode(self, text: str) -> bytes:
        escaped = json.dumps(text, ensure_ascii=False)[1:-1]
        return self._head + escaped.encode("utf-8") + self._tail


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _completion_prompt(request: CompletionRequest) -> str:
    if request.echo or request.suffix is not None:
        raise InvalidParameterError("echo and suffix are not supported by this agent")
    if isinstance(request.prompt, str):
        prompt = request.prompt
    elif len(request.prompt) != 1:
        raise InvalidParameterError(
            f"prompt must be one string (got a list of {len(request.prompt)}); "
            "send one request per prompt",
            "prompt",
        )
    else:
        prompt = request.prompt[0]
    if not prompt:
        raise InvalidParameterError(
            "prompt is empty: send at least one character of text to continue", "prompt"
        )
    return prompt


def _sampling(
    request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> Sampling:
    return Sampling(
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop_sequences(),
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
    )


ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(json_body(CompletionRequest))]
EmbeddingBody = Annotated[EmbeddingRequest, Depends(json_body(EmbeddingRequest))]


# --- the app ----------------------------------------------------------------------------


# What a generation route answers, for the schema: a JSON body, or with "stream": true
# server-sent events (one "data: <chunk JSON>" line per piece, then "data: [DONE]").
_GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'The whole answer, or with "stream": true a stream of server-sent'
        ' events ("data: <chunk JSON>" per piece, ending with "data: [DONE]")',
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {  # each event: its "data" line (a chunk's JSON, [DONE])
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            },
        },
    }
}


def create_local_api(
    registry: ModelRegistry,
    settings: AgentSettings,
    *,
    api_token: str,
    status: StatusSource | None = None,
    extra_routers: Sequence[APIRouter] = (),
    chat_grounding: ChatGrounding | None = None,
    generation_observer: GenerationObserver | None = None,
) -> FastAPI:
    """Build the agent's local API.

    Every route except ``GET /healthz`` needs ``Authorization: Bearer <api_token>``;
    ``extra_routers`` (RAG, vision, ...) are mounted behind the same check and share the
    error handler, so raising an ``edge_agent.errors`` exception gives the right status.
    ``status`` supplies the body of ``GET /v1/status`` (the registry adds ``models``).
    ``chat_grounding`` returns the RAG engine of the active release; chat requests that
    carry ``"rag"`` are grounded in its index (without it they get 400).
    ``generation_observer`` times each generation for telemetry (None: not measured).
    Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``, ...) is served
    over the same registry behind the same token (``edge_agent.api.ollama``).
    """
    if len(api_token) < 16:
        raise ConfigError("the local API token must be at least 16 characters long")

    app = FastAPI(  # no unauthenticated schema route: only /healthz answers without a token
        title="Outpost agent local API",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    exception_classes = (
        AgentError,
        RequestValidationError,
        StarletteHTTPException,
        ClientDisconnect,  # by name: an `Exception` handler would log it and re-raise
        Exception,
    )
    for exc_class in exception_classes:
        app.add_exception_handler(exc_class, _error_response)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Health:
        return Health()

    app.state.max_request_bytes = settings.max_request_bytes
    app.add_middleware(  # every body capped before auth and parsing (uploads: their own cap)
        BodySizeLimit,
        default_max_bytes=settings.max_request_bytes,
        routes=[
            RouteBodyLimit("POST", r"/v1/(vision/.+|rag/ingest)", settings.max_upload_bytes + MIB)
        ],
        error_type="invalid_request_error",
        error_fields={"param": None, "code": "payload_too_large"},
        flat_error_prefixes=("/api/",),  # Ollama's surface: {"error": "<message>"}
    )
    auth = [Depends(_bearer_check(api_token))]
    limits = schema_limits(settings)
    v1 = APIRouter(prefix="/v1")

    def model_card(name: str) -> ModelCard | None:
        for m in registry.models():
            if m.name == name:
                return ModelCard(id=m.name, kind=m.kind, release_id=m.release_id, loaded=m.loaded)
        return None

    @v1.get("/models")
    async def list_models() -> ModelList:
        return ModelList(
            data=[
                ModelCard(id=m.name, kind=m.kind, release_id=m.release_id, loaded=m.loaded)
                for m in registry.models()
            ]
        )

    @v1.get("/models/{name}")
    async def get_model(name: str) -> ModelCard:
        card = model_card(name)
        if card is None:
            registry.context_length(name)  # raises NoModelError or NotFoundError (lists models)
            raise NotFoundError(f"model {name!r} does not exist")
        return card

    @v1.get("/status")
    async def get_status() -> dict[str, Any]:
        body: dict[str, Any] = {
            "models": [asdict(m) for m in registry.models()],
            "memory": registry.memory_report(),
            "process": process_memory(),
        }
        if status is not None:
            body.update(status())
        return body

    async def generate(
        request: Request,
        model: str,
        stream: bool,
        produce: Callable[[TextGenerator], Iterator[TextPiece]],
        *,
        chat: bool,
    ) -> StartedGeneration:
        return await start_generation(
            registry, generation_observer, request, model, stream, produce, chat=chat
        )

    async def grounded_generate(
        request: Request, body: ChatCompletionRequest, options: RagChatOptions, sampling: Sampling
    ) -> tuple[GroundedChat, PieceStream | None, GeneratedText | None, TextPiece | None]:
        if chat_grounding is None:
            raise InvalidParameterError(
                "retrieval is not available on this device (it serves no RAG index); "
                "send the request without 'rag'",
                "rag",
            )
        registry.lease_generator(body.model).release()  # an unknown model fails before retrieval
        grounded = await run_in_threadpool(
            GroundedChat.prepare, chat_grounding, body.messages, options
        )
        if not grounded.abstains:
            pieces, whole, first = await generate(
                request,
                body.model,
                body.stream,
                lambda m: grounded.recording(m.chat(grounded.turns, sampling)),
                chat=True,
            )
            return grounded, pieces, whole, first
        said = grounded.abstention()  # the model is not called
        if body.stream:  # a stream of just this piece, already finished
            return grounded, PieceStream(asyncio.get_running_loop()), None, said
        return grounded, None, GeneratedText(said.text, "stop", 0, 0), None

    @v1.post("/chat/completions", response_model=None, responses=_GENERATION_RESPONSES)
    async def chat_completions(
        request: Request, body: ChatBody
    ) -> ChatCompletion | StreamingResponse:
        turns = chat_turns(body)
        extras = chat_extras(body, limits)  # schemas and tools checked before model work
        max_tokens = body.max_completion_tokens or body.max_tokens
        sampling = replace(
            _sampling(body, max_tokens), grammar=extras.grammar, logprobs=extras.logprobs
        )
        if body.rag is not None and (extras.reshapes or extras.grammar is not None):
            raise InvalidParameterError(
                "rag cannot be combined with response_format, tools or logprobs (a grounded"
                " answer has its own shape); send them in separate requests",
                "rag",
            )
        grounded: GroundedChat | None = None
        if body.rag is None:
            pieces, whole, first = await generate(
                request,
                body.model,
                body.stream,
                lambda m: m.chat(turns, sampling, extras.tools),
                chat=True,
            )
        else:
            grounded, pieces, whole, first = await grounded_generate(
                request, body, body.rag, sampling
            )
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if whole is not None and extras.reshapes:
            return ChatCompletion(
                id=ident,
                created=created,
                model=body.model,
                choices=[chat_choice(extras, whole)],
                usage=_usage(whole.prompt_tokens, whole.completion_tokens),
            )
        if whole is not None:
            grounding = None
            text, finish_reason = whole.text, whole.finish_reason
            if grounded is not None:
                grounding = await run_in_threadpool(grounded.attribution, whole.text)
                if not grounding.supported:  # withheld; usage still counts what was generated
                    text, finish_reason = grounded.delivered(whole.text, grounding), "stop"
            completion = ChatCompletion(
                id=ident,
                created=created,
                model=body.model,
                choices=[
                    ChatChoice(
                        message=ChatMessageOut(content=text),
                        finish_reason=finish_reason,
                    )
                ],
                usage=_usage(whole.prompt_tokens, whole.completion_tokens),
            )
            if grounding is None:
                return completion
            return GroundedChatCompletion(**dict(completion), **dict(grounding))
        assert pieces is not None

        async def grounding_chunk(grounded: GroundedChat) -> bytes:
            grounding = await run_in_threadpool(grounded.attribution)
            return _sse(
                GroundedChatCompletionChunk(
                    id=ident, created=created, model=body.model, choices=[], **dict(grounding)
                )
            )

        def chunk(delta: ChatDelta, reason: Any = None, usage: Usage | None = None) -> bytes:
            choices = (
                [] if usage is not None else [ChatChunkChoice(delta=delta, finish_reason=reason)]
            )
            return _sse(
                ChatCompletionChunk(
                    id=ident, created=created, model=body.model, choices=choices, usage=usage
                )
            )

        middle = _TextEvents(
            ChatCompletionChunk(
                id=ident,
                created=created,
                model=body.model,
                choices=[ChatChunkChoice(delta=ChatDelta(content=_MARK))],
            )
        )

        async def structured_events() -> AsyncIterator[bytes]:
            def made(choices: list[ChatChunkChoice], usage: Usage | None) -> ChatCompletionChunk:
                return ChatCompletionChunk(
                    id=ident, created=created, model=body.model, choices=choices, usage=usage
                )

            try:
                async for event in chat_chunks(
                    extras, first, pieces.next, made, include_usage=body.include_usage
                ):
                    yield _sse(event)
                yield _SSE_DONE
            except Exception as e:  # after the 200 header: report in-band, as OpenAI does
                yield _sse(_error_body(as_agent_error(e)))
            finally:
                pieces.cancel()

        async def events() -> AsyncIterator[bytes]:
            piece = first
            role: Literal["assistant"] | None = "assistant"
            try:
                while piece is not None:
                    if role is None and piece.finish_reason is None:
                        yield middle.encode(piece.text)
                    elif piece.text or piece.finish_reason is None:
                        yield chunk(ChatDelta(role=role, content=piece.text))
                        role = None
                    if piece.finish_reason is not None:
                        yield chunk(ChatDelta(), piece.finish_reason)
                        if body.include_usage:
                            usage = _usage(piece.prompt_tokens, piece.completion_tokens)
                            yield chunk(ChatDelta(), usage=usage)
                        break
                    piece = await pieces.next()
                if grounded is not None:
                    yield await grounding_chunk(grounded)
                yield _SSE_DONE
            except Exception as e:  # after the 200 header: report in-band, as OpenAI does
                yield _sse(_error_body(as_agent_error(e)))
            finally:
                pieces.cancel()

        return StreamingResponse(
            structured_events() if extras.reshapes else events(),
            media_type="text/event-stream",
            headers=_SSE_HEADERS,
        )

    @v1.post("/completions", response_model=None, responses=_GENERATION_RESPONSES)
    async def completions(request: Request, body: CompletionBody) -> Completion | StreamingResponse:
        prompt = _completion_prompt(body)
        sampling = replace(_sampling(body, body.max_tokens), logprobs=body.logprobs)
        pieces, whole, first = await generate(
            request, body.model, body.stream, lambda m: m.complete(prompt, sampling), chat=False
        )
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        wants_logprobs = body.logprobs is not None
        if whole is not None:
            logprobs = completion_logprobs(whole.logprobs, len(prompt)) if wants_logprobs else None
            choice = CompletionChoice(
                text=whole.text, finish_reason=whole.finish_reason, logprobs=logprobs
            )
            return Completion(
                id=ident,
                created=created,
                model=body.model,
                choices=[choice],
                usage=_usage(whole.prompt_tokens, whole.completion_tokens),
            )
        assert pieces is not None

        def chunk(piece: TextPiece) -> bytes:
            logprobs = completion_logprobs(piece.logprobs, len(prompt)) if wants_logprobs else None
            choice = CompletionChoice(
                text=piece.text, finish_reason=piece.finish_reason, logprobs=logprobs
            )
            return _sse(Completion(id=ident, created=created, model=body.model, choices=[choice]))

        middle = _TextEvents(
            Completion(
                id=ident,
                created=created,
                model=body.model,
                choices=[CompletionChoice(text=_MARK)],
            )
        )

        async def events() -> AsyncIterator[bytes]:
            piece = first
            try:
                while piece is not None:
                    if piece.finish_reason is None and not wants_logprobs:
                        yield middle.encode(piece.text)
                    else:
                        yield chunk(piece)
                    if piece.finish_reason is not None:
                        if body.include_usage:
                            usage = _usage(piece.prompt_tokens, piece.completion_tokens)
                            yield _sse(
                                Completion(
                                    id=ident,
                                    created=created,
                                    model=body.model,
                                    choices=[],
                                    usage=usage,
                                )
                            )
                        break
                    piece = await pieces.next()
                yield _SSE_DONE
            except Exception as e:  # after the 200 header: report in-band, as OpenAI does
                yield _sse(_error_body(as_agent_error(e)))
            finally:
                pieces.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)

    @v1.post("/embeddings")
    async def embeddings(request: Request, body: EmbeddingBody) -> EmbeddingList:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        result = await run_embedding(registry, settings, request, body.model, texts)
        dims = len(result.vectors[0]) if result.vectors else 0
        if body.dimensions is not None and body.dimensions != dims:
            raise InvalidParameterError(
                f"model {body.model!r} makes {dims}-dimensional embeddings; "
                f"'dimensions' cannot change that",
                "dimensions",
            )
        items = [
            EmbeddingItem(
                index=i,
                embedding=(
                    base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
                    if body.encoding_format == "base64"
                    else v
                ),
            )
            for i, v in enumerate(result.vectors)
        ]
        return EmbeddingList(
            data=items,
            model=body.model,
            usage=EmbeddingUsage(
                prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
            ),
        )

    app.include_router(v1, dependencies=auth)
    for router in extra_routers:
        app.include_router(router, dependencies=auth)
    app.state.ollama = OllamaServing(registry, settings, generation_observer)
    app.include_router(ollama_router, dependencies=auth)  # Ollama's native API, /api/...
    return app
