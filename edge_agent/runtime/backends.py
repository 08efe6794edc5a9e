"""What a model backend offers the registry: one small interface per artifact kind.

Values here are runtime-neutral: the llama.cpp adapter produces them, the local API turns
them into OpenAI wire messages, and nothing here imports a runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edge_agent.release import InstalledArtifact

FinishReason = Literal["stop", "length"]
ChatRole = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A function call an assistant made: ``arguments`` is a JSON object as text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation: its text, and for an assistant the tool calls it
    made, for a ``tool`` message the id of the call it answers."""

    role: ChatRole
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. ``max_tokens=None`` means: until the context is full."""

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    grammar: str | None = None
    """A GBNF grammar every generated token must keep to (structured output, tool calls)."""
    logprobs: int | None = None
    """None: no log probabilities. n >= 0: each generated token's log probability and the
    n most likely alternatives at that position (OpenAI ``top_logprobs``)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()
    token_bytes: bytes = b""
    """The token's own bytes (a token may hold part of a UTF-8 character)."""
    offset: int = 0
    """Where the token's text starts in the generated text, in characters."""


@dataclass(frozen=True)
class TextPiece:
    """A fragment of generated text. The last piece of a generation has ``finish_reason``
    and the token counts; earlier ones have neither. ``logprobs`` holds the tokens of this
    piece when the request asked for them."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GeneratedText:
    """A whole generation (the pieces joined)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


def until_cancelled(pieces: Iterator[TextPiece], cancelled: threading.Event) -> Iterator[TextPiece]:
    """Forward ``pieces`` until ``cancelled`` is set, then close the generation (runs on the
    model's thread; llama.cpp stops after the token it is on)."""
    try:
        for piece in pieces:
            yield piece
            if cancelled.is_set():
                return
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def join_until_cancelled(
    produce: Callable[[], Iterator[TextPiece]], cancelled: threading.Event
) -> GeneratedText:
    """``join_pieces`` of a generation that stops after the token on which ``cancelled`` is
    set, and does not start when it is set already (whoever asked left while it queued)."""
    if cancelled.is_set():
        return GeneratedText("", "stop", 0, 0)
    return join_pieces(until_cancelled(produce(), cancelled))


def join_pieces(pieces: Iterable[TextPiece]) -> GeneratedText:
    """Collect a stream of pieces into one result."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    for piece in pieces:
        parts.append(piece.text)
        logprobs.extend(piece.logprobs)
        if piece.finish_reason is not None:
            return GeneratedText(
                "".join(parts),
                piece.finish_reason,
                piece.prompt_tokens,
                piece.completion_tokens,
                tuple(logprobs),
            )
    return GeneratedText("".join(parts), "stop", 0, 0, tuple(logprobs))


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True)
class ModelOptions:
    """Load options for one model: agent settings, overridden per model by release config."""

    n_ctx: int
    n_threads: int
    n_batch: int = 512
    chat_format: str | None = None
    chat_template: str | None = None
    pooling: Literal["model", "mean", "cls", "last", "none"] = "model"
    normalize: bool = True
    n_threads_batch: int | None = None  # prompt processing and embeddings; None: n_threads
    n_parallel: int = 1  # llm: generations at once (KV sequences, each of n_ctx tokens)
    prompt_cache_mb: int = 0  # llm: RAM kept for the KV state of recent prompts
    prompt_lookup_draft: int = 0  # llm: longest prompt-lookup draft checked; 0: none

    @property
    def batch_threads(self) -> int:
        """Threads for prompt processing and embeddings (llama.cpp's n_threads_batch)."""
        return self.n_threads if self.n_threads_batch is None else self.n_threads_batch


class LoadedModel(Protocol):
    """Anything the registry can hold: it must free its native memory on ``close``."""

    def close(self) -> None: ...


class TextGenerator(LoadedModel, Protocol):
    """Backend of kind ``llm``. Not thread-safe: the registry calls it from one thread."""

    @property
    def context_length(self) -> int: ...

    def chat(
        self,
        turns: Sequence[ChatTurn],
        sampling: Sampling,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Iterator[TextPiece]:
        """Generate a reply. ``tools`` (OpenAI tool definitions) are rendered into the
        prompt by the model's chat template; a model whose template cannot take them
        raises BadRequestError. Raises ContextOverflowError before generating if the
        formatted conversation does not fit the context."""
        ...

    def complete(self, prompt: str, sampling: Sampling) -> Iterator[TextPiece]:
        """Continue ``prompt``. Raises ContextOverflowError like ``chat``."""
        ...


class Embedder(LoadedModel, Protocol):
    """Backend of kind ``embedding``: one pooled vector per text."""

    @property
    def dimensions(self) -> int: ...

    def count_tokens(self, texts: Sequence[str]) -> int:
        """How many tokens embedding ``texts`` would take (cheap: no model evaluation)."""
        ...

    def embed(self, texts: Sequence[str]) -> Embeddings: ...


ModelLoader = Callable[[InstalledArtifact, ModelOptions], LoadedModel]
"""Loads one artifact with its options; called on the model's own thread."""
