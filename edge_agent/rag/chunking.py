"""Token-aware chunking with overlap; each chunk keeps its span in the normalized document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.rag.text import token_spans

__all__ = ["Chunk", "ChunkingPolicy", "chunk_text"]

_SENTENCE_END = frozenset(".!?。！？")


@dataclass(frozen=True)
class ChunkingPolicy:
    """Chunk size and overlap, in tokens. Stored in the index so re-ingests chunk alike."""

    max_tokens: int = 120
    overlap_tokens: int = 24

    def __post_init__(self) -> None:
        if self.max_tokens < 8 or not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ValueError("need max_tokens >= 8 and 0 <= overlap_tokens < max_tokens / 2")


@dataclass(frozen=True)
class Chunk:
    """``text == document[start:end]`` of the normalized document."""

    ordinal: int
    start: int
    end: int
    text: str


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
