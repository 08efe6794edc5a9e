"""The RAG endpoints of the local API, and the hooks the chat route uses to opt into RAG.

The lead's app includes ``rag_router(engine_provider)``; its exception handler turns the
``edge_agent.errors`` classes raised here into HTTP statuses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Message

from edge_agent.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from edge_agent.rag.engine import Answer, IngestOutcome, RagEngine
from edge_agent.rag.grounding import Citation, Source, candidate_sentences, cite

__all__ = [
    "CitationOut",
    "IngestResponse",
    "IngestText",
    "QueryRequest",
    "QueryResponse",
    "RagChatOptions",
    "augment_chat_messages",
    "cite_chat_answer",
    "rag_router",
]

EngineProvider = Callable[[], RagEngine]
FilterValue = str | int | float | bool
DEFAULT_MAX_UPLOAD_BYTES = 50_000_000


class IngestText(BaseModel):
    """JSON body of ``POST /v1/rag/ingest`` for text sent inline."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1)
    title: str | None = Field(default=None, max_length=512)
    media_type: Literal["text/plain", "text/markdown", "text/html"] = "text/plain"
    metadata: dict[str, FilterValue] = Field(default_factory=dict)


class IngestResponse(BaseModel):
    document: str
    status: Literal["added", "replaced", "unchanged", "duplicate", "near_duplicate"]
    chunks: int
    duplicate_of: str | None = None

    @classmethod
    def of(cls, outcome: IngestOutcome) -> IngestResponse:
        return cls(
            document=outcome.document,
            status=outcome.status,
            chunks=outcome.chunks,
            duplicate_of=outcome.duplicate_of,
        )


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=200_000)
    k: int = Field(default=5, ge=1, le=50)
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    generate: bool = True
    max_tokens: int = Field(default=256, ge=1, le=2048)


class CitationOut(BaseModel):
    """A quoted span: ``quote == document_text[start:end]`` and, inside the source it was
    taken from, ``quote == sources[source - 1].text[source_start:source_end]``.
    """

    source: int
    document: str
    chunk_id: int
    start: int
    end: int
    quote: str
    source_start: int
    source_end: int

    @classmethod
    def of(cls, c: Citation, sources: Sequence[Source]) -> CitationOut:
        origin = next(s for s in sources if s.number == c.source)
        return cls(
            source=c.source,
            document=c.document,
            chunk_id=c.chunk_id,
            start=c.start,
            end=c.end,
            quote=c.quote,
            source_start=c.start - origin.start,
            source_end=c.end - origin.start,
        )


class SourceOut(BaseModel):
    """A retrieved passage with its text (``document_text[start:end]``)."""

    number: int
    document: str
    title: str
    chunk_id: int
    start: int
    end: int
    text: str
    similarity: float

    @classmethod
    def of(cls, s: Source) -> SourceOut:
        return cls(
            number=s.number,
            document=s.document,
            title=s.title,
            chunk_id=s.chunk_id,
            start=s.start,
            end=s.end,
            text=s.text,
            similarity=round(s.similarity, 4),
        )


class QueryResponse(BaseModel):
    answer: str
    abstained: bool
    reason: str
    citations: list[CitationOut]
    sources: list[SourceOut]

    @classmethod
    def of(cls, a: Answer) -> QueryResponse:
        return cls(
            answer=a.answer,
            abstained=a.abstained,
            reason=a.reason,
            citations=[CitationOut.of(c, a.sources) for c in a.citations],
            sources=[SourceOut.of(s) for s in a.sources],
        )


class RagChatOptions(BaseModel):
    """The ``"rag"`` field a chat completion request may carry to opt into retrieval."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(default=5, ge=1, le=50)
    filters: dict[str, FilterValue] = Field(default_factory=dict)


def augment_chat_messages(
    engine: RagEngine, messages: Sequence[Mapping[str, Any]], options: RagChatOptions
) -> tuple[list[dict[str, str]], list[Source]]:
    """Ground a chat request: retrieve for the last user message and put the numbered
    sources into the prompt. Call before generation; pass the sources to
    :func:`cite_chat_answer` afterwards.
    """
    plain = [{"role": str(m.get("role", "")), "content": _text(m.get("content"))} for m in messages]
    return engine.augment_chat_messages(plain, k=options.k, filters=options.filters or None)


def cite_chat_answer(
    engine: RagEngine, answer: str, sources: Sequence[Source], question: str | None = None
) -> list[Citation]:
    """Span-grounded, verified citations for a generated chat answer (fitting the
    ``question``'s shape where one fits, see :func:`~edge_agent.rag.grounding.cite`).
    """
    sentences = candidate_sentences(sources)
    relevance = engine.relevance(sentences)
    return engine.verified(cite(answer, sentences, relevance, question=question))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as e:
            raise BadRequestError("Content-Length is not a number") from e
        if size > limit:
            raise PayloadTooLargeError(
                f"upload of {size} bytes exceeds the limit of {limit} bytes; split the document"
            )
    parts: list[bytes] = []
    total = 0
    async for part in request.stream():
        total += len(part)
        if total > limit:
            raise PayloadTooLargeError(
                f"upload exceeds the limit of {limit} bytes; split the document"
            )
        parts.append(part)
    return b"".join(parts)


def _metadata(raw: str | None) -> dict[str, FilterValue]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequestError(f"metadata is not valid JSON: {e}") from e
    if not isinstance(value, dict) or not all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        raise BadRequestError("metadata must be a JSON object of strings, numbers and booleans")
    return value


def rag_router(
    engine_provider: EngineProvider, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> APIRouter:
    """``/v1/rag/ingest``, ``/v1/rag/query``, ``/v1/rag/documents`` and ``/v1/rag/status``.

    ``engine_provider`` returns the engine of the active release (raising ``NoModelError``
    when there is none); uploads larger than ``max_upload_bytes`` get 413 without being
    read to the end.
    """
    router = APIRouter(prefix="/v1/rag", tags=["rag"])

    @router.post("/ingest", response_model=IngestResponse)
    async def ingest(
        request: Request,
        id: Annotated[str | None, Query(max_length=512)] = None,
        title: Annotated[str | None, Query(max_length=512)] = None,
        metadata: Annotated[str | None, Query(description="JSON object")] = None,
    ) -> IngestResponse:
        """Ingest one document: a JSON body (``IngestText``), a multipart upload (field
        ``file``, optional ``id`` and ``metadata``), or the raw file with its media type.
        """
        data = await _read_capped(request, max_upload_bytes)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        engine = engine_provider()
        if content_type == "application/json":
            try:
                body = IngestText.model_validate_json(data)
            except ValidationError as e:
                raise BadRequestError(f"invalid ingest request: {e}") from e
            outcome = await run_in_threadpool(
                engine.ingest_text,
                body.id,
                body.text,
                title=body.title,
                media_type=body.media_type,
                metadata=body.metadata,
            )
            return IngestResponse.of(outcome)
        if content_type == "multipart/form-data":

            async def replay() -> Message:
                return {"type": "http.request", "body": data, "more_body": False}

            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadRequestError("multipart upload needs a file in the field 'file'")
            name = upload.filename or "upload"
            payload = await upload.read()
            key = str(form.get("id") or id or name)
            meta = _metadata(str(form.get("metadata") or metadata or "") or None)
            declared = upload.content_type
        else:
            if not id:
                raise BadRequestError("a raw upload needs ?id=<document id>")
            name, payload, key, meta, declared = id, data, id, _metadata(metadata), content_type
        outcome = await run_in_threadpool(
            engine.ingest_bytes, key, payload, name=name, media_type=declared, metadata=meta
        )
        return IngestResponse.of(outcome)

    @router.post("/query", response_model=QueryResponse)
    async def query(request: Request, body: QueryRequest) -> QueryResponse:
        """Answer from the index with citations; ``abstained`` says when it would not. A
        generated answer stops after the token it is on when the client hangs up."""
        # imported here: the HTTP layer imports this module (grounded chat)
        from edge_agent.api.disconnect import unless_client_leaves

        engine = engine_provider()
        cancelled = threading.Event()
        answer = await unless_client_leaves(
            request,
            run_in_threadpool(
                engine.answer,
                body.question,
                k=body.k,
                filters=body.filters or None,
                max_tokens=body.max_tokens,
                generate=body.generate,
                cancelled=cancelled,
            ),
            cancelled.set,
            "its answer was cancelled",
        )
        return QueryResponse.of(answer)

    @router.get("/documents")
    async def documents() -> dict[str, Any]:
        engine = engine_provider()
        docs = await run_in_threadpool(engine.index.documents)
        return {
            "data": [
                {
                    "id": d.key,
                    "title": d.title,
                    "media_type": d.media_type,
                    "sha256": d.content_sha256,
                    "chunks": d.chunk_count,
                    "metadata": dict(d.metadata),
                }
                for d in docs
            ]
        }

    @router.delete("/documents/{document_id:path}")
    async def delete_document(document_id: str) -> dict[str, Any]:
        engine = engine_provider()
        if not await run_in_threadpool(engine.index.delete_document, document_id):
            raise NotFoundError(f"no document {document_id!r} in the index")
        return {"id": document_id, "deleted": True}

    @router.get("/status")
    async def status() -> dict[str, Any]:
        engine = engine_provider()
        ident = engine.index.identity
        return {
            "index": str(engine.index.path),
            "readonly": engine.index.readonly,
            "embedding_model": {
                "name": ident.name,
                "sha256": ident.sha256,
                "dimension": ident.dimension,
            },
            **await run_in_threadpool(engine.index.counts),
        }

    return router
