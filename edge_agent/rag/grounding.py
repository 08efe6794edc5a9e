"""Prompts with numbered sources, span-grounded citations, and the abstention rule."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from edge_agent.rag.text import content_terms, question_terms, stem, term_coverage

__all__ = [
    "AnswerShape",
    "Citation",
    "Evidence",
    "EvidencePolicy",
    "Relevance",
    "Sentence",
    "Source",
    "answer_gap",
    "answer_shape",
    "assess_evidence",
    "build_messages",
    "candidate_sentences",
    "cite",
    "extractive_answer",
    "model_declined",
    "quotable_spans",
    "shape_gap",
    "verify_citation",
]

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n\s*\n")
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
    """Thresholds of the abstention rule (cosine similarities of MiniLM-L6-v2 vectors).

    ``min_term_coverage`` was calibrated on the tuning split of the real-document eval
    (``evals/realdocs``, docs/rag.md): 0.3 abstains on 3 of its 37 answerable questions
    instead of 8 at 0.5, and on as many of the 10 unanswerable ones (3).
    """

    min_similarity: float = 0.30
    confident_similarity: float = 0.55
    paraphrase_similarity: float = 0.75
    max_unknown_share: float = 0.5
    min_term_coverage: float = 0.3


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
    question: str,
    sources: Sequence[Source],
    policy: EvidencePolicy = EvidencePolicy(),
    *,
    unknown_terms: Sequence[str] = (),
) -> Evidence:
    """Whether the retrieved sources are strong enough to answer from, and why not.

    ``unknown_terms`` are the question's words that occur nowhere in the index: a question
    mostly about things the documents never mention is abstained on unless a passage is a
    near-paraphrase of it.
    """
    if not sources:
        return Evidence(False, "no passage in the index matches the question")
    best = max(sources, key=lambda s: s.similarity)
    terms = question_terms(question)
    unknown_share = len(unknown_terms) / len(terms) if terms else 0.0
    if unknown_share >= policy.max_unknown_share and best.similarity < policy.paraphrase_similarity:
        listed = ", ".join(repr(t) for t in unknown_terms[:5])
        return Evidence(
            False,
            f"the documents never mention {listed} (best passage similarity {best.similarity:.2f})",
        )
    if best.similarity >= policy.confident_similarity:
        return Evidence(True, f"best passage similarity {best.similarity:.2f}")
    if best.similarity < policy.min_similarity:
        return Evidence(
            False,
            f"best passage similarity {best.similarity:.2f} is below "
            f"{policy.min_similarity:.2f}: the documents do not seem to cover this",
        )
    if not terms:
        return Evidence(True, f"best passage similarity {best.similarity:.2f}")
    top = sorted(sources, key=lambda s: -s.similarity)[:3]
    found = set()
    for s in top:
        words = {stem(w) for w in content_terms(s.text)}
        found |= {t for t in terms if stem(t) in words}
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
    bounds = [0, *(i for m in _SENTENCE_BREAK.finditer(text) for i in m.span()), len(text)]
    for start, end in zip(bounds[::2], bounds[1::2], strict=True):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


@dataclass(frozen=True)
class Sentence:
    """One sentence of a source; ``start``/``end`` are offsets into ``source.text``."""

    source: Source
    start: int
    end: int

    @property
    def text(self) -> str:
        return self.source.text[self.start : self.end]

    def citation(self) -> Citation:
        return Citation(
            source=self.source.number,
            document=self.source.document,
            chunk_id=self.source.chunk_id,
            start=self.source.start + self.start,
            end=self.source.start + self.end,
            quote=self.text,
        )


LEXICAL_WEIGHT = 0.1
ANSWER_FIT_MARGIN = 0.40
Relevance = Callable[[str, Sequence[Sentence]], Sequence[float]]


def quotable_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences of a chunk's text that can be quoted: headings and fragments
    are left out (ten words or fewer without a full stop). Their embeddings are computed
    when the chunk is indexed.
    """
    out = []
    for start, end in _sentences(text):
        sentence = text[start:end]
        if len(sentence.split()) <= 10 and not sentence.endswith((".", "!", "?", "。", "！", "？")):
            continue
        out.append((start, end))
    return out


def candidate_sentences(sources: Sequence[Source]) -> list[Sentence]:
    """The quotable sentences of the sources (:func:`quotable_spans`); overlapping chunks
    yield each once.
    """
    seen: set[tuple[str, int]] = set()
    out = []
    for source in sources:
        for start, end in quotable_spans(source.text):
            key = (source.document, source.start + start)
            if key not in seen:
                seen.add(key)
                out.append(Sentence(source, start, end))
    return out


def _ranked(
    claim: str, sentences: Sequence[Sentence], relevance: Relevance
) -> list[tuple[float, Sentence]]:
    terms = content_terms(claim)
    scores = relevance(claim, sentences)
    ranked = [
        (float(sim) + LEXICAL_WEIGHT * term_coverage(terms, s.text), s)
        for sim, s in zip(scores, sentences, strict=True)
    ]
    return sorted(ranked, key=lambda x: -x[0])


def extractive_answer(
    question: str,
    sentences: Sequence[Sentence],
    relevance: Relevance,
    max_sentences: int = 2,
    min_score: float = 0.35,
    fit_margin: float = ANSWER_FIT_MARGIN,
) -> tuple[str, list[Citation]]:
    """An answer made of the source sentences that best match the question, each cited.

    Used when no chat model is available, and as a deterministic baseline in evaluations.
    The first sentence is the best-scoring one that fits the question's
    :class:`AnswerShape` (a number for "how many", ...) among those within ``fit_margin``
    of the top score, or the top one when none fits. A second sentence (fitting too, if
    the first did) is added only when it scores close to the first.
    """
    ranked = _ranked(question, sentences, relevance)
    if not ranked or ranked[0][0] < min_score:
        return "", []
    shape = answer_shape(question)
    fitting = [
        (score, s)
        for score, s in ranked
        if score >= ranked[0][0] - fit_margin and shape_gap(shape, s.text, s.source.title) is None
    ]
    pool = fitting or ranked
    picked = [s for score, s in pool[:max_sentences] if score >= pool[0][0] - 0.05]
    text = " ".join(f"{s.text} [{s.source.number}]" for s in picked)
    return text, [s.citation() for s in picked]


def _best_fit(
    ranked: Sequence[tuple[float, Sentence]], shape: AnswerShape | None, margin: float
) -> Sentence | None:
    """The best-scoring sentence that fits ``shape`` among those within ``margin`` of the
    top score (the top one when no shape is given), or None.
    """
    if not ranked:
        return None
    if shape is None:
        return ranked[0][1]
    top = ranked[0][0]
    return next(
        (
            s
            for score, s in ranked
            if score >= top - margin and shape_gap(shape, s.text, s.source.title) is None
        ),
        None,
    )


def cite(
    answer: str,
    sentences: Sequence[Sentence],
    relevance: Relevance,
    min_score: float = 0.35,
    *,
    question: str | None = None,
    fit_margin: float = ANSWER_FIT_MARGIN,
) -> list[Citation]:
    """Citations for a generated answer: for each ``[n]`` it uses, the sentence of source n
    that best supports the words before the marker. An answer without valid markers cites
    the one sentence that supports it best, if any supports it well enough.

    Given the ``question``, each claim cites the best sentence that fits the question's
    :class:`AnswerShape` among those within ``fit_margin`` of the best (as extractive
    answers do), so that a correct answer is not withheld because a neighbouring sentence
    of the same source scored a little higher; when no marked claim finds one, the sentence
    of any source that supports the whole answer best and fits is cited instead.
    """
    shape = answer_shape(question) if question is not None else None
    numbers = {s.source.number for s in sentences}
    claims: dict[int, str] = {}
    previous = 0
    for m in _MARKER.finditer(answer):
        n = int(m.group(1))
        if n in numbers:
            claims[n] = (claims.get(n, "") + " " + answer[previous : m.start()]).strip()
        previous = m.end()
    # Sentences that support the answer to this question: ranked against both, so that a
    # sentence which merely echoes the answer's words does not outrank the one it came from.
    support = answer if question is None else f"{question} {answer}"
    overall = _ranked(support, sentences, relevance) if not claims or shape else []
    if not claims:
        best = _best_fit(overall, shape, fit_margin) if shape else None
        if best is None and overall:
            best = overall[0][1]
        return [best.citation()] if best and overall[0][0] >= min_score else []
    citations, fitted = [], False
    for n, claim in claims.items():
        own = [s for s in sentences if s.source.number == n]
        ranked = _ranked(claim or answer, own, relevance)
        best = _best_fit(ranked, shape, fit_margin)
        fitted |= best is not None
        if best is None and ranked:
            best = ranked[0][1]
        if best is not None:
            citations.append(best.citation())
    if shape is not None and not fitted:
        anywhere = _best_fit(overall, shape, fit_margin)
        if anywhere is not None and overall[0][0] >= min_score:
            return [anywhere.citation()]
    return citations


def model_declined(answer: str) -> bool:
    """Whether the model said the sources do not contain the answer."""
    return not answer.strip() or bool(_DECLINE.search(answer))


def verify_citation(citation: Citation, document_text: str) -> bool:
    """A citation is valid only if its quote is exactly the cited span of the document."""
    return (
        0 <= citation.start < citation.end <= len(document_text)
        and document_text[citation.start : citation.end] == citation.quote
    )


# --- does the quoted sentence answer the kind of question asked? ----------------------

AnswerKind = Literal["quantity", "price", "phone", "email", "web address"]

_NUMBER = re.compile(
    r"\b\d|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|"
    r"million|billion|dozen|half|once|twice)\b",
    re.IGNORECASE,
)
_VALUE_PATTERNS: dict[AnswerKind, re.Pattern[str]] = {
    "quantity": _NUMBER,
    "price": re.compile(
        r"[$€£¥]\s?\d|\d\s?(?:[$€£¥]|(?:eur|euros?|usd|dollars?|pounds?|cents?)\b)"
        r"|\b(?:eur|usd|gbp)\s?\d",
        re.IGNORECASE,
    ),
    "phone": re.compile(r"\+?\d(?:[\s\-/.()]*\d){6,}"),
    "email": re.compile(r"[\w.+-]+@[\w-]+\.\w"),
    "web address": re.compile(r"https?://|\bwww\.|\b[\w-]+\.(?:com|org|net|io|eu)\b"),
}
_KIND_CUES: tuple[tuple[AnswerKind, re.Pattern[str]], ...] = (
    ("phone", re.compile(r"\b(?:tele)?phone\b|\bhotline\b", re.IGNORECASE)),
    ("email", re.compile(r"\be-?mail\b", re.IGNORECASE)),
    ("web address", re.compile(r"\b(?:url|website|web (?:site|address|page))\b", re.IGNORECASE)),
    ("price", re.compile(r"\b(?:price[sd]?|pricing|costs?|fees?)\b", re.IGNORECASE)),
    (
        "quantity",
        re.compile(
            r"\bhow (?:many|much|long|often|far|fast|old|big|large|heavy|high|quickly|soon)\b",
            re.IGNORECASE,
        ),
    ),
)
_KIND_NAMES: dict[AnswerKind, str] = {
    "quantity": "a number",
    "price": "a price",
    "phone": "a phone number",
    "email": "an email address",
    "web address": "a web address",
}
# Words that only name the kind of value: the value itself stands for them.
_KIND_WORDS: dict[AnswerKind, frozenset[str]] = {
    "quantity": frozenset({"number", "amount"}),
    "price": frozenset({"price", "prices", "pricing", "cost", "costs", "fee", "fees"}),
    "phone": frozenset({"phone", "telephone", "hotline", "number"}),
    "email": frozenset({"email", "mail", "address"}),
    "web address": frozenset({"url", "website", "web", "site", "address", "page"}),
}
_WORDS = re.compile(r"\w+")
_FOCUS_LEAD = frozenset({"is", "are", "was", "were", "the", "a", "an", "does", "do", "did"})
_FOCUS_END = frozenset({"must", "may", "might", "shall"})
_FOCUS_VOID = frozenset({"kind", "type", "sort", "happen", "happens", "happened"})
_FOCUS_WORDS = 3


@dataclass(frozen=True)
class AnswerShape:
    """What a question asks for: the kind of value it wants, if it names one (a number for
    "how many", a phone number for "phone"), and the focus: up to three words after
    "what", "which" or "how <word>" (past "is", "the", "does", ...) that name the thing
    asked about ("price" in "What is the price of a K2?", "warranty" in "How long is the
    warranty?").
    """

    kind: AnswerKind | None
    focus: tuple[str, ...]


def answer_shape(question: str) -> AnswerShape:
    """The :class:`AnswerShape` of a question (English cue words; other questions have none)."""
    kind = next((k for k, cue in _KIND_CUES if cue.search(question)), None)
    words = _WORDS.findall(question.casefold())
    focus: list[str] = []
    for i, word in enumerate(words):
        if word not in ("what", "which", "how"):
            continue
        j = i + (2 if word == "how" else 1)  # "how many", "how long", ...
        while j < len(words) and words[j] in _FOCUS_LEAD:
            j += 1
        while j < len(words) and len(focus) < _FOCUS_WORDS:
            w = words[j]
            if w in _FOCUS_END or not content_terms(w) or w in _FOCUS_VOID:
                break
            focus.append(w)
            j += 1
        break
    return AnswerShape(kind, tuple(focus))


def _mentions(word: str, vocabulary: set[str]) -> bool:
    """Same stem, or one stem of at least four letters begins the other word."""
    root = stem(word)
    return any(
        root == v or (len(root) >= 4 and v.startswith(root)) or (len(v) >= 4 and word.startswith(v))
        for v in vocabulary
    )


def shape_gap(shape: AnswerShape, sentence: str, title: str = "") -> str | None:
    """Why ``sentence`` (from a document titled ``title``) cannot answer a question of this
    shape, or None when it can: it must hold the kind of value asked for, and mention at
    least half of the focus words (in the sentence or the title), not counting the words
    that only name the kind of value ("phone number" is satisfied by the number itself).
    """
    if shape.kind is not None and not _VALUE_PATTERNS[shape.kind].search(sentence):
        return f"no retrieved sentence states {_KIND_NAMES[shape.kind]}"
    focus = [w for w in shape.focus if shape.kind is None or w not in _KIND_WORDS[shape.kind]]
    if focus:
        vocabulary = {stem(w) for w in content_terms(f"{sentence} {title}")}
        if 2 * sum(_mentions(w, vocabulary) for w in focus) < len(focus):
            named = " ".join(focus)
            return f"the best-matching sentences do not mention {named!r}"
    return None


def answer_gap(question: str, quotes: Sequence[tuple[str, str]]) -> str | None:
    """Why none of the cited ``(sentence, document title)`` pairs can answer ``question``
    (see :func:`shape_gap`), or None when at least one can.
    """
    shape = answer_shape(question)
    gaps = [shape_gap(shape, quote, title) for quote, title in quotes]
    if not gaps or None in gaps:
        return None
    return gaps[0]
