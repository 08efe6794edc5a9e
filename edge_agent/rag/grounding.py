"""Prompts with numbered sources, span-grounded citations, and the abstention rule."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.rag.text import content_terms

__all__ = [
    "Citation",
    "Evidence",
    "EvidencePolicy",
    "Source",
    "assess_evidence",
    "build_messages",
    "cite",
    "extractive_answer",
    "model_declined",
    "verify_citation",
]

_SENTENCE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+|\n|$)")
_MARKER = re.compile(r"\[(\d{1,3})\]")
_DECLINE = re.compile(
    r"\b(?:i (?:do not|don't|cannot|can't) (?:know|find|answer)|not (?:in|covered by|"
    r"mentioned in|found in) the (?:sources|context|documents)|no (?:relevant )?information)\b",
    re.IGNORECASE,
)

SYSTEM_PROMPT = (
    "Answer the question using only the numbered sources. Cite the sources you use with "
    "their numbers in square brackets, like [1]. If the sources do not contain the answer, "
    "say: I don't know."
)


@dataclass(frozen=True)
class Source:
    """A retrieved chunk shown to the model as ``[number]``."""

    number: int
    document: str
    title: str
    chunk_id: int
    start: int  # span of the chunk in the normalized document
    end: int
    text: str
    similarity: float  # cosine between question and chunk embedding
    lexical_match: bool  # found by BM25 too


@dataclass(frozen=True)
class Citation:
    """A quoted span of a source document: ``document_text[start:end] == quote``."""

    source: int
    document: str
    chunk_id: int
    start: int
    end: int
    quote: str


@dataclass(frozen=True)
class EvidencePolicy:
    """Thresholds of the abstention rule (cosine similarities of MiniLM-L6-v2 vectors)."""

    min_similarity: float = 0.30
    confident_similarity: float = 0.55
    min_term_coverage: float = 0.5


@dataclass(frozen=True)
class Evidence:
    sufficient: bool
    reason: str


def build_messages(
    question: str, sources: Sequence[Source], system_prompt: str = SYSTEM_PROMPT
) -> list[dict[str, str]]:
    """Chat messages: instructions, then the numbered sources and the question."""
    blocks = [f"[{s.number}] ({s.title})\n{s.text}" for s in sources]
    user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def assess_evidence(
    question: str, sources: Sequence[Source], policy: EvidencePolicy = EvidencePolicy()
) -> Evidence:
    """Whether the retrieved sources are strong enough to answer from, and why not."""
    if not sources:
        return Evidence(False, "no passage in the index matches the question")
    best = max(sources, key=lambda s: s.similarity)
    if best.similarity >= policy.confident_similarity:
        return Evidence(True, f"best passage similarity {best.similarity:.2f}")
    if best.similarity < policy.min_similarity:
        return Evidence(
            False,
            f"best passage similarity {best.similarity:.2f} is below "
            f"{policy.min_similarity:.2f}: the documents do not seem to cover this",
        )
    terms = content_terms(question)
    if not terms:
        return Evidence(True, f"best passage similarity {best.similarity:.2f}")
    top = sorted(sources, key=lambda s: -s.similarity)[:3]
    found = set()
    for s in top:
        words = set(content_terms(s.text))
        found |= {t for t in terms if t in words}
    coverage = len(found) / len(terms)
    if coverage < policy.min_term_coverage:
        return Evidence(
            False,
            f"weak evidence: similarity {best.similarity:.2f} and only {coverage:.0%} of the "
            "question's terms appear in the best passages",
        )
    return Evidence(True, f"similarity {best.similarity:.2f}, term coverage {coverage:.0%}")


def _sentences(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _SENTENCE.finditer(text):
        start, end = m.span()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def _best_sentence(source: Source, terms: Sequence[str]) -> tuple[int, int, float]:
    wanted = set(terms)
    best = (0, len(source.text), -1.0)
    for start, end in _sentences(source.text):
        words = content_terms(source.text[start:end])
        score = sum(1 for w in words if w in wanted) / (1 + 0.02 * len(words))
        if score > best[2]:
            best = (start, end, score)
    return best


def _citation(source: Source, start: int, end: int) -> Citation:
    return Citation(
        source=source.number,
        document=source.document,
        chunk_id=source.chunk_id,
        start=source.start + start,
        end=source.start + end,
        quote=source.text[start:end],
    )


def cite(answer: str, question: str, sources: Sequence[Source]) -> list[Citation]:
    """Citations for an answer: for each ``[n]`` it uses, the sentence of source n that best
    supports it. An answer without valid markers cites the one source that supports it best.
    """
    by_number = {s.number: s for s in sources}
    numbers = [int(n) for n in _MARKER.findall(answer) if int(n) in by_number]
    terms = content_terms(answer) + content_terms(question)
    if not numbers:
        scored = [(_best_sentence(s, terms), s) for s in sources]
        scored = [x for x in scored if x[0][2] > 0]
        if not scored:
            return []
        (start, end, _), source = max(scored, key=lambda x: x[0][2])
        return [_citation(source, start, end)]
    citations = []
    for n in dict.fromkeys(numbers):
        start, end, _ = _best_sentence(by_number[n], terms)
        citations.append(_citation(by_number[n], start, end))
    return citations


def extractive_answer(question: str, sources: Sequence[Source], max_sentences: int = 2) -> str:
    """An answer made of the source sentences that best match the question, with markers.

    Used when no chat model is available, and as a deterministic baseline in evaluations.
    """
    terms = content_terms(question)
    scored = []
    for s in sources:
        start, end, score = _best_sentence(s, terms)
        scored.append((score * (0.5 + s.similarity), s, start, end))
    scored.sort(key=lambda x: -x[0])
    parts = [f"{s.text[a:b]} [{s.number}]" for _, s, a, b in scored[:max_sentences]]
    return " ".join(parts)


def model_declined(answer: str) -> bool:
    """Whether the model said the sources do not contain the answer."""
    return not answer.strip() or bool(_DECLINE.search(answer))


def verify_citation(citation: Citation, document_text: str) -> bool:
    """A citation is valid only if its quote is exactly the cited span of the document."""
    return (
        0 <= citation.start < citation.end <= len(document_text)
        and document_text[citation.start : citation.end] == citation.quote
    )
