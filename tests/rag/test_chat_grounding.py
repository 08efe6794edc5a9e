"""An OpenAI-style chat request that opts into retrieval, answered by the real SmolLM2."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from edge_agent.rag import RagEngine
from edge_agent.rag.api import RagChatOptions, augment_chat_messages, cite_chat_answer

if TYPE_CHECKING:
    from edge_agent.rag.llama import LlamaChat

pytestmark = pytest.mark.slow


def test_chat_messages_get_numbered_sources_and_the_answer_gets_citations(
    handbook: RagEngine, chat: LlamaChat
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are the Tidewater handbook assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! Ask me about the handbook."},
        {"role": "user", "content": [{"type": "text", "text": "How often do Pika tags report?"}]},
    ]
    grounded, sources = augment_chat_messages(handbook, messages, RagChatOptions(k=3))
    assert grounded[0]["role"] == "system"
    assert "Tidewater handbook assistant" in grounded[0]["content"]
    assert [m["role"] for m in grounded] == ["system", "user", "assistant", "user"]
    assert "[1]" in grounded[-1]["content"] and "Question: How often" in grounded[-1]["content"]
    assert sources[0].document == "pika-sensor-tags.md"

    answer = chat.complete(grounded, max_tokens=60)
    assert answer.strip()
    citations = cite_chat_answer(handbook, answer, sources)
    assert citations, answer
    assert "pika-sensor-tags.md" in {c.document for c in citations}
    for c in citations:
        source_text = handbook.index.document_text(c.document)
        assert source_text is not None and source_text[c.start : c.end] == c.quote


def test_a_generated_answer_through_the_engine_is_grounded(
    handbook: RagEngine, chat: LlamaChat
) -> None:
    """The handbook states the battery life: the engine answers (greedy) and cites it."""
    handbook.chat = chat
    answer = handbook.answer("How long does the Pika tag battery last?", k=3, max_tokens=60)
    assert answer.abstained is False, answer.reason
    assert answer.citations, answer.answer
    assert "pika-sensor-tags.md" in {c.document for c in answer.citations}
    assert all(handbook.verified([c]) for c in answer.citations)


def test_a_question_the_handbook_does_not_answer_is_abstained_on(
    handbook: RagEngine, chat: LlamaChat
) -> None:
    handbook.chat = chat
    answer = handbook.answer("Who won the football world cup in 1998?", k=3, max_tokens=60)
    assert answer.abstained is True and answer.citations == []
    assert answer.reason and answer.answer.startswith("I don't know")


def test_a_cancelled_completion_stops_after_the_token_it_is_on(chat: LlamaChat) -> None:
    count = [{"role": "user", "content": "List the numbers from 1 to 1000 separated by commas."}]
    whole = chat.complete(count, max_tokens=40)
    gone = threading.Event()
    gone.set()  # whoever asked has already left
    stopped = chat.complete(count, max_tokens=40, cancelled=gone)
    assert len(whole.split(",")) > 10, whole
    assert len(stopped) <= 4 and whole.startswith(stopped), stopped
