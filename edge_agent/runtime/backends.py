"""What a model backend offers the registry: one small interface per artifact kind.

Values here are runtime-neutral: the llama.cpp adapter produces them, the local API turns
them into OpenAI wire messages, and nothing here imports a runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from edge_agent.release import InstalledArtifact

FinishReason = Literal["stop", "length"]
ChatRole = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation, text only."""

    role: ChatRole
    content: str


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


def join_pieces(pieces: Iterable[TextPiece]) -> GeneratedText:
    """Collect a stream of pieces into one result."""
    parts: list[str] = []
    for piece in pieces:
        parts.append(piece.text)
        if piece.finish_reason is not None:
            return GeneratedText(
                "".join(parts), piece.finish_reason, piece.prompt_tokens, piece.completion_tokens
            )
    return GeneratedText("".join(parts), "stop", 0, 0)


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


class LoadedModel(Protocol):
    """Anything the registry can hold: it must free its native memory on ``close``."""

    def close(self) -> None: ...


class TextGenerator(LoadedModel, Protocol):
    """Backend of kind ``llm``. Not thread-safe: the registry calls it from one thread."""

    @property
    def context_length(self) -> int: ...

    def chat(self, turns: Sequence[ChatTurn], sampling: Sampling) -> Iterator[TextPiece]:
        """Generate a reply. Raises ContextOverflowError before generating if the
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
