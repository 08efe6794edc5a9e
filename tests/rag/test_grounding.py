"""Prompts, citations and the abstention rule (pure functions over values)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.rag.grounding import (
    AnswerShape,
    Citation,
    EvidencePolicy,
    Sentence,
    Source,
    answer_gap,
    answer_shape,
    assess_evidence,
    build_messages,
    candidate_sentences,
    cite,
    extractive_answer,
    model_declined,
    shape_gap,
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


def test_a_question_names_the_kind_of_value_it_wants() -> None:
    assert answer_shape("How many tags can a gateway serve?") == AnswerShape("quantity", ("tags",))
    assert answer_shape("What is the price of a Kestrel K2?") == AnswerShape("price", ("price",))
    assert answer_shape("How much does a coin cell cost?").kind == "price"
    assert answer_shape("What is the phone number of support?").kind == "phone"
    assert answer_shape("What is the email address of the depot?").kind == "email"
    assert answer_shape("How long is the warranty?") == AnswerShape("quantity", ("warranty",))
    assert answer_shape("What happens if a tag is lost?") == AnswerShape(None, ())
    assert answer_shape("Where should the gateway be mounted?") == AnswerShape(None, ())


def test_a_sentence_without_a_number_cannot_answer_how_many() -> None:
    shape = answer_shape("How many tags does a gateway serve?")
    assert shape_gap(shape, "A gateway serves up to 64 tags.") is None
    assert shape_gap(shape, "A gateway serves sixty-four tags.") is None
    assert shape_gap(shape, "The gateway serves the tags in its truck.") == (
        "no retrieved sentence states a number"
    )


def test_a_price_needs_a_currency_amount_not_just_a_number() -> None:
    shape = answer_shape("What is the price of a Kestrel K2 gateway?")
    assert shape_gap(shape, "The K2 price is 450 EUR.") is None
    assert shape_gap(shape, "The K2 price is €450.") is None
    gap = shape_gap(shape, "The Kestrel K2 draws 6 watts and has 4 GB of RAM.")
    assert gap == "no retrieved sentence states a price"


def test_a_phone_number_needs_digits_that_look_like_one() -> None:
    shape = answer_shape("What is the phone number of the 24-hour fleet support line?")
    assert shape_gap(shape, "Call the fleet support line on +31 10 555 0199.") is None
    assert shape_gap(shape, "Call the 24-hour fleet support line.") == (
        "no retrieved sentence states a phone number"
    )


def test_the_sentence_or_its_title_must_mention_most_of_the_focus() -> None:
    shape = answer_shape("Which mobile network operator provides the uplink?")
    assert shape.focus == ("mobile", "network", "operator")
    gap = shape_gap(shape, "It works without a network connection.")
    assert gap is not None and "'mobile network operator'" in gap
    assert shape_gap(shape, "The mobile network operator is Example Telecom.") is None
    led = answer_shape("What does a blinking red LED mean?")
    assert shape_gap(led, "Blinking red: the storage is almost full.", "Status LED codes") is None


def test_focus_words_match_across_inflections() -> None:
    shape = answer_shape("What input voltage does the K2 accept?")
    assert shape_gap(shape, "The K2 accepts 9 to 36 volts DC.") is None  # volts ~ voltage
    weekly = answer_shape("What is the weekly privacy budget?")
    assert shape_gap(weekly, "The privacy budget is epsilon 1.0 per week.") is None


def test_an_answer_is_withheld_when_no_cited_sentence_fits_the_question() -> None:
    question = "What is the price of a Pika tag?"
    assert answer_gap(question, [("A Pika tag runs on a CR2032 coin cell.", "Pika")]) == (
        "no retrieved sentence states a price"
    )
    fits = [("A Pika tag runs on a coin cell.", "Pika"), ("The tag price is 12 EUR.", "")]
    assert answer_gap(question, fits) is None
    assert answer_gap("How do I pair a tag?", [("Tap it on the NFC pad.", "")]) is None


def test_extractive_answer_prefers_a_close_sentence_that_fits_the_question() -> None:
    def favour_coin_cell(claim: str, sentences: Sequence[Sentence]) -> list[float]:
        return [0.9 if "coin cell" in s.text else 0.6 for s in sentences]

    sentences = candidate_sentences([source()])
    _, citations = extractive_answer("How long does the battery last?", sentences, favour_coin_cell)
    assert [c.quote for c in citations] == [
        "With the default reporting interval the battery lasts about 18 months."
    ]
    _, far = extractive_answer(
        "How long does the battery last?", sentences, favour_coin_cell, fit_margin=0.1
    )
    assert [c.quote for c in far] == ["A Pika tag runs on a CR2032 coin cell."]
