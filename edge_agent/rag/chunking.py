"""Chunking; each chunk keeps its span in the normalized document.

Two methods. ``window``: token windows with overlap, cut at a paragraph or sentence end.
``structured`` (the default): the document's own blocks (paragraphs, a man page's option
entries, list items, code blocks, docstrings: runs of lines between blank lines) packed
into units of at most ``max_tokens`` without crossing a heading; a block too large for one
unit is split by ``window``. Every structured chunk carries its ``context``, the heading
it sits under, which is embedded and indexed with it but is not part of its span.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge_agent.rag.text import token_spans

__all__ = [
    "Chunk",
    "ChunkingMethod",
    "ChunkingPolicy",
    "chunk_document",
    "chunk_text",
    "with_context",
]

ChunkingMethod = Literal["structured", "window"]

_SENTENCE_END = frozenset(".!?。！？")


@dataclass(frozen=True)
class ChunkingPolicy:
    """Chunk size and overlap, in tokens, and the method. Stored in the index so re-ingests
    chunk alike.
    """

    max_tokens: int = 120
    overlap_tokens: int = 24
    method: ChunkingMethod = "structured"

    def __post_init__(self) -> None:
        if self.max_tokens < 8 or not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ValueError("need max_tokens >= 8 and 0 <= overlap_tokens < max_tokens / 2")
        if self.method not in ("structured", "window"):
            raise ValueError(f"unknown chunking method {self.method!r}")


@dataclass(frozen=True)
class Chunk:
    """``text == document[start:end]`` of the normalized document."""

    ordinal: int
    start: int
    end: int
    text: str
    context: str = ""  # the heading the chunk sits under (not part of the span)


def _cut(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Best end (exclusive token index) in (lo, hi]: after a paragraph or sentence end."""
    best_sentence = 0
    for t in range(hi - 1, lo - 1, -1):
        end = spans[t][1]
        if t + 1 < len(spans) and "\n\n" in text[end : spans[t + 1][0]]:
            return t + 1
        if not best_sentence and text[spans[t][0] : end] in _SENTENCE_END:
            best_sentence = t + 1
    return best_sentence or hi


def chunk_text(
    text: str,
    policy: ChunkingPolicy = ChunkingPolicy(),
    spans_of: Callable[[str], list[tuple[int, int]]] = token_spans,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``policy.max_tokens`` tokens.

    Chunks end at a paragraph or sentence boundary when one falls in the second half of
    the window, and each chunk after the first repeats the last ``overlap_tokens`` tokens
    of the one before it.
    """
    spans = spans_of(text)
    chunks: list[Chunk] = []
    i = 0
    while i < len(spans):
        hi = min(i + policy.max_tokens, len(spans))
        j = hi if hi == len(spans) else _cut(text, spans, i + policy.max_tokens // 2, hi)
        start, end = spans[i][0], spans[j - 1][1]
        chunks.append(Chunk(len(chunks), start, end, text[start:end]))
        if j == len(spans):
            break
        i = max(j - policy.overlap_tokens, i + 1)
    return chunks


_HEADING_MAX_WORDS = 8
_TERM_MAX_WORDS = 6
# A heading is a short line of words: "OPTIONS", "Multiline values", "Details - overview".
_HEADING = re.compile(r"[A-Z][A-Za-z .'&/-]{2,}[A-Za-z]")
# A man page's section name heads the block it opens: "DESCRIPTION", "SEE ALSO".
_SECTION = re.compile(r"[A-Z][A-Z -]{2,}[A-Z]")
_SENTENCE_PUNCT = frozenset(".,;:!?")
BlockKind = Literal["heading", "entry", "text"]


@dataclass(frozen=True)
class _Block:
    start: int
    end: int
    tokens: int
    kind: BlockKind


def _blocks(text: str) -> list[_Block]:
    """Runs of lines between blank lines. A line without a letter or digit (a box-drawing
    rule, a docstring's lone ``|``) separates blocks too.
    """
    blocks: list[_Block] = []
    start = end = -1
    pos = 0
    for line in text.split("\n"):
        line_end = pos + len(line)
        if any(ch.isalnum() for ch in line):
            if start < 0:
                start = pos
            end = line_end
        elif start >= 0:
            blocks += _block(text, start, end)
            start = -1
        pos = line_end + 1
    if start >= 0:
        blocks += _block(text, start, end)
    return blocks


def _block(text: str, start: int, end: int) -> list[_Block]:
    """A heading (one short line of words), an entry (a short term line, such as an
    option's name or a signature, over its description) or plain text; a man page's
    section name is split off the block it opens, as a heading.
    """
    body = text[start:end]
    first, _, rest = body.partition("\n")
    if rest and _SECTION.fullmatch(first):
        cut = start + len(first)
        heading = _Block(start, cut, len(token_spans(first)), "heading")
        return [heading, *_block(text, cut + 1, end)]
    kind: BlockKind = "text"
    if not rest and len(first.split()) <= _HEADING_MAX_WORDS and _HEADING.fullmatch(first):
        kind = "heading"
    elif rest and len(first.split()) <= _TERM_MAX_WORDS and first[-1] not in _SENTENCE_PUNCT:
        kind = "entry"
    return [_Block(start, end, len(token_spans(body)), kind)]


def chunk_document(text: str, policy: ChunkingPolicy = ChunkingPolicy()) -> list[Chunk]:
    """Chunks of a normalized document by ``policy.method`` (see the module docstring).

    Headings open the unit under them and become the ``context`` of every later unit up to
    the next heading; an entry (an option, a signature with its docstring) is a unit of its
    own; plain blocks are packed up to ``policy.max_tokens``.
    """
    if policy.method == "window":
        return chunk_text(text, policy)
    units: list[tuple[int, int, str]] = []  # start, end, context
    heading = ""
    lo = hi = -1
    used = 0

    def flush() -> None:
        nonlocal lo, used
        if lo >= 0:
            units.append((lo, hi, heading))
        lo, used = -1, 0

    for b in _blocks(text):
        if b.kind == "heading":
            flush()
            heading = text[b.start : b.end]
            lo, hi, used = b.start, b.end, b.tokens  # a heading opens the unit under it
            continue
        opened_by_heading = lo >= 0 and text[lo:hi] == heading
        if b.kind == "entry" and not opened_by_heading:
            flush()
        if b.tokens + (used if lo >= 0 else 0) > policy.max_tokens:
            flush()
            if b.tokens > policy.max_tokens:
                for piece in chunk_text(text[b.start : b.end], policy):
                    units.append((b.start + piece.start, b.start + piece.end, heading))
                continue
        if lo < 0:
            lo = b.start
        hi, used = b.end, used + b.tokens
        if b.kind == "entry":
            flush()
    flush()
    chunks: list[Chunk] = []
    for start, end, context in units:
        body = text[start:end]
        own = body.split("\n", 1)[0] == context
        chunks.append(Chunk(len(chunks), start, end, body, "" if own else context))
    return chunks


def with_context(chunk: Chunk, title: str) -> str:
    """The text that is embedded and indexed for ``chunk``: its title and heading, then it."""
    head = " - ".join(p for p in (title, chunk.context) if p)
    return f"{head}\n{chunk.text}" if head else chunk.text
