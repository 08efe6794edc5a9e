"""Chat completions that opt into retrieval (``"rag": {...}`` in the request).

Before generation the messages are grounded in the active RAG index (numbered sources in
the prompt); when the engine's abstention rule (``RagEngine.assess``) finds the evidence
too weak, the model is not called at all. After generation the answer gets span-grounded
citations, and the engine's answer-shape rule (``grounding.answer_gap``) checks that the
cited sentences can answer what was asked (a price for "how much does ... cost", ...).
Retrieval and citation block on the embedding model and SQLite: callers run
:meth:`GroundedChat.prepare` and :meth:`GroundedChat.attribution` off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import cast

from edge_agent.api.wire import ChatMessageIn, Grounding
from edge_agent.errors import NoModelError
from edge_agent.rag.api import (
    CitationOut,
    RagChatOptions,
    SourceOut,
    augment_chat_messages,
    cite_chat_answer,
)
from edge_agent.rag.engine import RagEngine
from edge_agent.rag.grounding import Evidence, Source, answer_gap, model_declined
from edge_agent.runtime import ChatTurn, TextPiece
from edge_agent.runtime.backends import ChatRole

__all__ = ["ChatGrounding", "GroundedChat"]

ChatGrounding = Callable[[], RagEngine]
"""Returns the RAG engine of the active release; raises ``NoModelError`` when there is none."""

MODEL_DECLINED = "the model said the retrieved sources do not contain the answer"
UNTIED = "the answer could not be tied to any retrieved passage"


def _dont_know(reason: str) -> str:
    return f"I don't know: {reason}."


class GroundedChat:
    """One chat request grounded in the RAG index: the question, the turns to generate
    from, the sources they show, and the evidence verdict; it records the streamed answer
    to cite it."""

    def __init__(
        self,
        engine: RagEngine,
        question: str,
        turns: Sequence[ChatTurn],
        sources: Sequence[Source],
        evidence: Evidence,
    ) -> None:
        self.engine = engine
        self.question = question
        self.turns = list(turns)
        self.sources = list(sources)
        self.evidence = evidence
        self._answer: list[str] = []

    @classmethod
    def prepare(
        cls,
        engines: ChatGrounding,
        messages: Sequence[ChatMessageIn],
        options: RagChatOptions,
    ) -> GroundedChat:
        """Retrieve for the last user message and build the grounded turns (blocking)."""
        try:
            engine = engines()
        except NoModelError as e:
            raise NoModelError(f"retrieval is not available on this device: {e}") from e
        plain = [{"role": m.role, "content": m.text()} for m in messages]
        grounded, sources = augment_chat_messages(engine, plain, options)
        question = next(m["content"] for m in reversed(plain) if m["role"] == "user")
        turns = [ChatTurn(cast(ChatRole, m["role"]), m["content"]) for m in grounded]
        return cls(engine, question, turns, sources, engine.assess(question, sources))

    @property
    def abstains(self) -> bool:
        """Whether to answer "I don't know" without calling the model."""
        return not self.evidence.sufficient

    def abstention(self) -> TextPiece:
        """The whole answer when the evidence is too weak (no tokens were generated)."""
        return TextPiece(_dont_know(self.evidence.reason), "stop")

    def recording(self, pieces: Iterator[TextPiece]) -> Iterator[TextPiece]:
        """Pass ``pieces`` through, keeping their text for :meth:`attribution`."""
        try:
            for piece in pieces:
                self._answer.append(piece.text)
                yield piece
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    def attribution(self, answer: str | None = None) -> Grounding:
        """Citations of ``answer`` (default: the recorded one) and the abstention verdict.

        As in ``RagEngine.answer``, an answer is not ``supported`` (and counts as
        ``abstained``, with the reason and no citations) when none of it can be tied to a
        retrieved sentence, or when its citations do not fit the question (``answer_gap``:
        no cited sentence holds the kind of value asked for or mentions what was asked about).
        """
        sources = [SourceOut.of(s) for s in self.sources]
        if self.abstains:
            return Grounding(
                citations=[],
                sources=sources,
                abstained=True,
                supported=True,
                reason=self.evidence.reason,
            )
        text = "".join(self._answer) if answer is None else answer
        if model_declined(text):
            return Grounding(
                citations=[], sources=sources, abstained=True, supported=True, reason=MODEL_DECLINED
            )
        citations = cite_chat_answer(self.engine, text, self.sources, self.question)
        titles = {s.number: s.title for s in self.sources}
        quotes = [(c.quote, titles.get(c.source, "")) for c in citations]
        gap = answer_gap(self.question, quotes) if citations else UNTIED
        if gap is not None:
            return Grounding(
                citations=[], sources=sources, abstained=True, supported=False, reason=gap
            )
        return Grounding(
            citations=[CitationOut.of(c, self.sources) for c in citations],
            sources=sources,
            abstained=False,
            supported=True,
            reason=self.evidence.reason,
        )

    @staticmethod
    def delivered(answer: str, grounding: Grounding) -> str:
        """The text to return for a whole (not streamed) ``answer``: the model's, or an
        abstention naming the reason when its citations do not support what was asked."""
        return answer if grounding.supported else _dont_know(grounding.reason)
