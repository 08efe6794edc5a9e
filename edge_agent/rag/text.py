"""Text normalization and the word tokens every other part of RAG counts in."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = [
    "content_terms",
    "normalize_text",
    "question_terms",
    "stem",
    "term_coverage",
    "token_spans",
]

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# CJK, kana and hangul count one token per character (as BERT's tokenizer does); other
# words are cut into pieces of at most 10 characters so a long run never counts as one.
_TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|\w{1,10}|[^\w\s]"
)
_WORD = re.compile(r"\w+")
_STOPWORD_TEXT = """a about above after again all also am an and any are as at be because been
before being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers him his how i if in into is it its itself
just me more most my no nor not now of off on once only or other our ours out over own same
she should so some such than that the their theirs them then there these they this those
through to too under until up very was we were what when where which while who whom why
will with would you your yours"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_INTERROGATIVE = re.compile(r"\bhow (?:long|many|much|often|far|old)\b", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """NFC, one newline convention, no control characters, collapsed spaces and blank lines.

    Every character offset RAG stores (chunk spans, citation spans) refers to this form.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co") else " "
        for ch in text
    )
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def token_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens chunk sizes are measured in."""
    return [m.span() for m in _TOKEN.finditer(text)]


def content_terms(text: str) -> list[str]:
    """Case-folded words without stopwords, in first-seen order, each once."""
    seen: dict[str, None] = {}
    for m in _WORD.finditer(text.casefold()):
        word = m.group()
        if word not in _STOPWORDS and (len(word) > 1 or not word.isascii()):
            seen.setdefault(word, None)
    return list(seen)


def stem(word: str) -> str:
    """A light English suffix stripper, enough to match "paired" with "pair"."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def question_terms(question: str) -> list[str]:
    """The content terms of a question, without interrogatives such as "how long"."""
    return content_terms(_INTERROGATIVE.sub(" ", question))


def term_coverage(terms: Sequence[str], text: str) -> float:
    """Share of ``terms`` (question words) whose stem occurs among ``text``'s words."""
    wanted = {stem(t) for t in terms}
    if not wanted:
        return 0.0
    words = {stem(w) for w in content_terms(text)}
    return len(wanted & words) / len(wanted)
