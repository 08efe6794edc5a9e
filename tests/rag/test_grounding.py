"""Prompts, citations and the abstention rule (pure functions over values)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.rag.grounding import (
    Citation,
    EvidencePolicy,
    Sentence,
    Source,
    assess_evidence,
    build_messages,
    candidate_sentences,
    cite,
    extractive_answer,
    model_declined,
    verify_citation,
)

DOCUMENT = (
    "Pika sensor tags\n\nA Pika tag runs on a CR2032 coin cell. With the default reporting "
    "interval the battery lasts about 18 months. Tags are paired by tapping the NFC pad."
)


def source(number: int = 1, similarity: float = 0.6, start: int = 18) -> Source:
    return Source(
        number=number,
        document="pika.md",
        title="Pika sensor tags",
        chunk_id=10 + number,
        start=start,
        end=len(DOCUMENT),
        text=DOCUMENT[start:],
        similarity=similarity,
        lexical_match=True,
    )


def word_overlap(claim: str, sentences: Sequence[Sentence]) -> list[float]:
    """A stand-in relevance: share of the claim's words found in the sentence."""
    words = set(claim.lower().split())
    return [len(words & set(s.text.lower().split())) / max(len(words), 1) for s in sentences]


def test_prompt_numbers_every_source_and_asks_for_citations() -> None:
    messages = build_messages("How long does the battery last?", [source(1), source(2)])
    assert messages[0]["role"] == "system" and "[1]" in messages[0]["content"]
    assert "[1] (Pika sensor tags)" in messages[1]["content"]
    assert "[2] (Pika sensor tags)" in messages[1]["content"]
    assert messages[1]["content"].endswith("Question: How long does the battery last?")


def test_headings_are_not_quotable_sentences() -> None:
    full = Source(1, "pika.md", "t", 1, 0, len(DOCUMENT), DOCUMENT, 0.6, True)
    texts = [s.text for s in candidate_sentences([full])]
    assert "Pika sensor tags" not in texts
    assert "A Pika tag runs on a CR2032 coin cell." in texts


def test_overlapping_chunks_yield_each_sentence_once() -> None:
    first = Source(1, "pika.md", "t", 1, 0, len(DOCUMENT), DOCUMENT, 0.6, True)
    assert len(candidate_sentences([first, source(2)])) == len(candidate_sentences([first]))


def test_a_citation_points_at_the_exact_span_of_the_document() -> None:
    answer = "The battery lasts about 18 months [1]."
    citations = cite(answer, candidate_sentences([source()]), word_overlap)
    assert len(citations) == 1
    c = citations[0]
    assert c.quote == "With the default reporting interval the battery lasts about 18 months."
    assert DOCUMENT[c.start : c.end] == c.quote
    assert verify_citation(c, DOCUMENT)


def test_markers_for_unknown_sources_are_ignored() -> None:
    citations = cite("It lasts 18 months [7].", candidate_sentences([source()]), word_overlap)
    assert [c.source for c in citations] == [1]  # falls back to the best-supported sentence


def test_an_answer_no_sentence_supports_gets_no_citation() -> None:
    assert cite("Bananas are yellow.", candidate_sentences([source()]), word_overlap) == []


def test_extractive_answer_quotes_and_cites_the_best_sentence() -> None:
    text, citations = extractive_answer(
        "how are tags paired with the NFC pad", candidate_sentences([source()]), word_overlap
    )
    assert text == "Tags are paired by tapping the NFC pad. [1]"
    assert citations[0].quote == "Tags are paired by tapping the NFC pad."


def test_a_quote_that_differs_from_the_document_fails_verification() -> None:
    good = cite("18 months [1]", candidate_sentences([source()]), word_overlap)[0]
    forged = Citation(good.source, good.document, good.chunk_id, good.start, good.end, "24 months")
    shifted = Citation(
        good.source, good.document, good.chunk_id, good.start + 1, good.end + 1, good.quote
    )
    outside = Citation(good.source, good.document, good.chunk_id, 0, 10_000, good.quote)
    assert not verify_citation(forged, DOCUMENT)
    assert not verify_citation(shifted, DOCUMENT)
    assert not verify_citation(outside, DOCUMENT)


def test_no_sources_means_abstain() -> None:
    evidence = assess_evidence("anything", [])
    assert not evidence.sufficient and "no passage" in evidence.reason


def test_low_similarity_means_abstain_and_says_why() -> None:
    evidence = assess_evidence("battery life of tags", [source(similarity=0.1)])
    assert not evidence.sufficient and "0.10" in evidence.reason


def test_a_question_about_things_never_mentioned_is_abstained_on() -> None:
    evidence = assess_evidence(
        "price of sourdough bread", [source(similarity=0.5)], unknown_terms=["price", "sourdough"]
    )
    assert not evidence.sufficient and "'sourdough'" in evidence.reason


def test_middling_similarity_needs_the_question_terms_in_the_passages() -> None:
    policy = EvidencePolicy()
    covered = assess_evidence("tag battery coin cell", [source(similarity=0.4)], policy)
    uncovered = assess_evidence("truck tyre pressure gauge", [source(similarity=0.4)], policy)
    assert covered.sufficient
    assert not uncovered.sufficient and "terms" in uncovered.reason


def test_high_similarity_is_enough() -> None:
    assert assess_evidence("battery", [source(similarity=0.9)]).sufficient


def test_declining_answers_are_recognised() -> None:
    assert model_declined("I don't know.")
    assert model_declined("That is not in the sources.")
    assert model_declined("   ")
    assert not model_declined("The battery lasts 18 months [1].")
