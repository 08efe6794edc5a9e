"""An OpenAI-style chat request that opts into retrieval, answered by the real SmolLM2."""

from __future__ import annotations

import pytest

from edge_agent.rag import RagEngine
from edge_agent.rag.api import RagChatOptions, augment_chat_messages, cite_chat_answer

pytestmark = pytest.mark.slow


def test_chat_messages_get_numbered_sources_and_the_answer_gets_citations(
    handbook: RagEngine, chat: object
) -> None:
    messages = [
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

    answer = chat.complete(grounded, max_tokens=60)  # type: ignore[attr-defined]
    assert answer.strip()
    citations = cite_chat_answer(handbook, answer, sources)
    text = handbook.index.document_text("pika-sensor-tags.md")
    assert text is not None
    for c in citations:
        source_text = handbook.index.document_text(c.document)
        assert source_text is not None and source_text[c.start : c.end] == c.quote


def test_generated_answers_through_the_engine_are_grounded_or_abstained(
    handbook: RagEngine, chat: object
) -> None:
    handbook.chat = chat  # type: ignore[assignment]
    answer = handbook.answer("How long does the Pika tag battery last?", k=3, max_tokens=60)
    if answer.abstained:
        assert answer.reason
    else:
        assert answer.citations
        assert all(handbook.verified([c]) for c in answer.citations)
