"""Normalization, token counting and chunking: spans always point into the normalized text."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.rag.chunking import ChunkingPolicy, chunk_text
from edge_agent.rag.text import content_terms, normalize_text, question_terms, token_spans

MANY_SCRIPTS = (
    "Das Gerät startet neu. Le capteur mesure la température. "
    "Датчик измеряет температуру. 传感器每三十秒报告一次。 センサーは温度を測ります。 "
    "센서는 온도를 측정합니다. المستشعر يقيس درجة الحرارة. החיישן מודד טמפרטורה. "
    "सेंसर तापमान मापता है। เซ็นเซอร์วัดอุณหภูมิ Ο αισθητήρας μετρά θερμοκρασία. 🌡️✅"
)


def test_normalize_composes_unicode_and_collapses_whitespace() -> None:
    decomposed = unicodedata.normalize("NFD", "Zürich  and\tKraków\r\n\r\n\r\n\nnext\x00line ")
    assert normalize_text(decomposed) == "Zürich and Kraków\n\nnext line"


def test_normalize_drops_control_and_format_characters() -> None:
    assert normalize_text("a\u200bb\x07c\ufeff") == "a b c"


def test_cjk_counts_one_token_per_character_and_long_words_are_cut() -> None:
    assert len(token_spans("传感器")) == 3
    assert len(token_spans("x" * 35)) == 4


def test_question_terms_drop_stopwords_and_interrogatives() -> None:
    assert question_terms("How long is the warranty of a Kestrel K2?") == [
        "warranty",
        "kestrel",
        "k2",
    ]
    assert content_terms("The the THE") == []


def test_chunks_respect_the_token_budget_and_overlap() -> None:
    text = normalize_text(" ".join(f"word{i}" for i in range(500)))
    policy = ChunkingPolicy(max_tokens=100, overlap_tokens=20)
    chunks = chunk_text(text, policy)
    assert all(len(token_spans(c.text)) <= 100 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        overlap = text[b.start : a.end]
        assert len(token_spans(overlap)) == 20
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_chunks_end_at_a_sentence_boundary_when_one_is_near() -> None:
    sentence = "The gateway buffers readings for fourteen days. "
    text = normalize_text(sentence * 30)
    chunks = chunk_text(text, ChunkingPolicy(max_tokens=40, overlap_tokens=5))
    assert all(c.text.endswith(".") for c in chunks)


def test_chunks_prefer_paragraph_breaks() -> None:
    text = normalize_text("alpha beta gamma delta epsilon zeta eta theta.\n\n" * 10)
    chunks = chunk_text(text, ChunkingPolicy(max_tokens=30, overlap_tokens=0))
    assert all(text[c.end : c.end + 2] in ("\n\n", "") for c in chunks)


def test_text_in_many_scripts_chunks_with_exact_spans() -> None:
    text = normalize_text(MANY_SCRIPTS * 3)
    chunks = chunk_text(text, ChunkingPolicy(max_tokens=16, overlap_tokens=4))
    assert len(chunks) > 3
    for c in chunks:
        assert text[c.start : c.end] == c.text


def test_an_empty_text_has_no_chunks() -> None:
    assert chunk_text("") == []


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (20, 10), (20, -1)])
def test_an_invalid_policy_is_refused(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        ChunkingPolicy(max_tokens=max_tokens, overlap_tokens=overlap)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=0, max_size=600), st.integers(8, 40))
def test_any_text_chunks_into_spans_that_cover_every_token(raw: str, max_tokens: int) -> None:
    text = normalize_text(raw)
    chunks = chunk_text(text, ChunkingPolicy(max_tokens=max_tokens, overlap_tokens=max_tokens // 4))
    covered = set()
    for c in chunks:
        assert text[c.start : c.end] == c.text
        covered |= {s for s in token_spans(text) if c.start <= s[0] and s[1] <= c.end}
    assert covered == set(token_spans(text))
