"""Model work shared by the local API's surfaces (OpenAI's and Ollama's): one generation
on a model's thread, stopped when its client leaves, and embedding in checked batches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence

from fastapi import Request

from edge_agent.api.disconnect import unless_client_leaves
from edge_agent.api.inbound import InvalidParameterError
from edge_agent.api.streaming import PieceStream
from edge_agent.errors import ClientGoneError
from edge_agent.runtime import (
    Embedder,
    Embeddings,
    GeneratedText,
    ModelRegistry,
    TextGenerator,
    TextPiece,
    join_until_cancelled,
)
from edge_agent.settings import AgentSettings
from edge_agent.telemetry.instrument import GenerationObserver

__all__ = [
    "EMBEDDING_BATCH",
    "StartedGeneration",
    "check_embedding_inputs",
    "embed_in_batches",
    "run_embedding",
    "start_generation",
]

StartedGeneration = tuple[PieceStream | None, GeneratedText | None, TextPiece | None]
"""(the stream of a streamed generation, the whole text of one that was not, the first
piece of the stream): a streamed generation has the first and the third."""


EMBEDDING_BATCH = 32  # inputs per llama.cpp call: a client that leaves is noticed between them


def check_embedding_inputs(texts: Sequence[str], settings: AgentSettings) -> None:
    """Refuse an embedding request beyond the per-request caps, before any work is queued."""
    if not texts:
        raise InvalidParameterError("input must not be empty", "input")
    if len(texts) > settings.max_embedding_inputs:
        raise InvalidParameterError(
            f"input has {len(texts)} items; this agent embeds at most"
            f" {settings.max_embedding_inputs} per request (setting max_embedding_inputs):"
            " split them over several requests",
            "input",
        )
    chars = sum(len(t) for t in texts)
    if chars > settings.max_embedding_chars:
        raise InvalidParameterError(
            f"input totals {chars} characters; this agent embeds at most"
            f" {settings.max_embedding_chars} per request (setting max_embedding_chars):"
            " split them over several requests",
            "input",
        )


def embed_in_batches(
    model: Embedder, texts: Sequence[str], cancelled: threading.Event, max_tokens: int
) -> Embeddings:
    """Embed ``texts`` on the model's thread, a batch at a time, stopping between batches
    once ``cancelled`` is set (the client left); refuse more than ``max_tokens`` tokens in
    all before any is embedded."""
    if cancelled.is_set():  # the client left while this job was queued
        raise ClientGoneError("the client went away; its embedding was cancelled")
    total = model.count_tokens(texts)
    if total > max_tokens:
        raise InvalidParameterError(
            f"input totals {total} tokens; this agent embeds at most {max_tokens} tokens per"
            " request (setting max_embedding_tokens): split them over several requests",
            "input",
        )
    vectors: list[list[float]] = []
    tokens = 0
    for start in range(0, len(texts), EMBEDDING_BATCH):
        if cancelled.is_set():
            raise ClientGoneError("the client went away; its embedding was cancelled")
        batch = model.embed(texts[start : start + EMBEDDING_BATCH])
        vectors += batch.vectors
        tokens += batch.prompt_tokens
    return Embeddings(vectors, tokens)


async def start_generation(
    registry: ModelRegistry,
    observer: GenerationObserver | None,
    request: Request,
    model: str,
    stream: bool,
    produce: Callable[[TextGenerator], Iterator[TextPiece]],
    *,
    chat: bool,
) -> StartedGeneration:
    """Run one generation on the model's thread; it stops (between tokens, or before
    it starts if still queued) as soon as the client goes away, streamed or not."""
    if observer is not None:
        produce = observer.wrap(produce, chat=chat)
    lease = registry.lease_generator(model)
    if not stream:
        cancelled = threading.Event()

        def whole_text(m: TextGenerator) -> GeneratedText:
            return join_until_cancelled(lambda: produce(m), cancelled)

        whole = lease.run(whole_text)
        lease.release_when_done(whole)
        result = await unless_client_leaves(
            request, asyncio.wrap_future(whole), cancelled.set, "its generation was cancelled"
        )
        return None, result, None
    pieces = PieceStream(asyncio.get_running_loop())
    lease.release_when_done(lease.run(lambda m: pieces.pump(lambda: produce(m))))
    try:  # errors before the first token become 4xx here
        first = await unless_client_leaves(
            request, pieces.next(), pieces.cancel, "its generation was cancelled"
        )
    except BaseException:
        pieces.cancel()
        raise
    return pieces, None, first


async def run_embedding(
    registry: ModelRegistry,
    settings: AgentSettings,
    request: Request,
    model: str,
    texts: Sequence[str],
    *,
    on_start: Callable[[], None] | None = None,
) -> Embeddings:
    """Embed ``texts`` with embedding model ``model`` within the per-request caps (checked
    before any work is queued), stopping between batches if the client leaves.
    ``on_start`` is called on the model's thread when the model is ready for this job."""
    check_embedding_inputs(texts, settings)
    lease = registry.lease_embedder(model)
    cancelled = threading.Event()
    max_tokens = settings.max_embedding_tokens

    def job(m: Embedder) -> Embeddings:
        if on_start is not None:
            on_start()
        return embed_in_batches(m, texts, cancelled, max_tokens)

    future = lease.run(job)
    lease.release_when_done(future)
    return await unless_client_leaves(
        request, asyncio.wrap_future(future), cancelled.set, "its embedding was cancelled"
    )
