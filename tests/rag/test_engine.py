"""The engine with the real MiniLM embeddings: ingest, dedupe, retrieval, answers, abstention."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from edge_agent.errors import BadRequestError, StoreError
from edge_agent.rag import EmbeddingIdentity, RagEngine, RagIndex

from .test_text_chunking import MANY_SCRIPTS

if TYPE_CHECKING:
    from edge_agent.rag.llama import LlamaEmbedder

pytestmark = pytest.mark.slow


def test_the_answer_cites_the_exact_passage(handbook: RagEngine) -> None:
    question = "What temperature range must pharmaceutical shipments stay in?"
    answer = handbook.answer(question, generate=False)
    assert not answer.abstained
    [citation] = [c for c in answer.citations if c.document == "cold-chain-thresholds.md"]
    assert "between 2 and 8 degrees Celsius" in citation.quote
    assert f"[{citation.source}]" in answer.answer
    text = handbook.index.document_text("cold-chain-thresholds.md")
    assert text is not None and text[citation.start : citation.end] == citation.quote


def test_an_off_topic_question_is_abstained_on_with_a_reason(handbook: RagEngine) -> None:
    answer = handbook.answer("How do I bake sourdough bread?")
    assert answer.abstained and answer.citations == []
    assert "sourdough" in answer.reason
    assert answer.answer.startswith("I don't know")


def test_hybrid_retrieval_finds_exact_terms_and_paraphrases(handbook: RagEngine) -> None:
    by_term = handbook.retrieve("CR2032", k=3)
    assert by_term[0].document == "pika-sensor-tags.md" and by_term[0].lexical_match
    by_meaning = handbook.retrieve("my parcel of vaccines got warm, is that a problem", k=3)
    found = {s.document: s for s in by_meaning}
    assert "cold-chain-thresholds.md" in found
    assert not found["cold-chain-thresholds.md"].lexical_match  # found by vectors alone


def test_metadata_filters_limit_retrieval(handbook: RagEngine) -> None:
    handbook.ingest_text(
        "porto-rules.txt",
        "Porto depot rule: forklifts must sound their horn at every cold room door.",
        metadata={"depot": "porto"},
    )
    sources = handbook.retrieve("forklift horn", k=5, filters={"depot": "porto"})
    assert [s.document for s in sources] == ["porto-rules.txt"]
    assert handbook.retrieve("forklift horn", k=5, filters={"depot": "aarhus"}) == []


def test_reingest_unchanged_skips_and_changed_replaces_only_that_document(
    handbook: RagEngine,
) -> None:
    index = handbook.index
    other_before = index.chunk_embeddings("depots.md")
    text = index.document_text("night-mode.txt")
    assert text is not None
    assert handbook.ingest_text("night-mode.txt", text).status == "unchanged"
    changed = text.replace("22:00", "23:00")
    outcome = handbook.ingest_text("night-mode.txt", changed, title="Night mode")
    assert outcome.status == "replaced" and outcome.chunks >= 1
    assert "23:00" in (index.document_text("night-mode.txt") or "")
    assert index.chunk_embeddings("depots.md").keys() == other_before.keys()
    assert index.counts()["documents"] == 23


def test_exact_and_near_duplicates_are_not_stored_twice(handbook: RagEngine) -> None:
    text = handbook.index.document_text("shock-alerts.md")
    assert text is not None
    exact = handbook.ingest_text("copy-of-shock.md", text)
    near = handbook.ingest_text("shock-v2.md", text.replace("8 g", "8 g.") + " Thanks.")
    assert (exact.status, exact.duplicate_of) == ("duplicate", "shock-alerts.md")
    assert (near.status, near.duplicate_of) == ("near_duplicate", "shock-alerts.md")
    assert handbook.index.document("copy-of-shock.md") is None


def test_text_in_many_scripts_is_ingested_and_found(handbook: RagEngine) -> None:
    outcome = handbook.ingest_text("scripts.txt", MANY_SCRIPTS)
    assert outcome.status == "added"
    sources = handbook.retrieve("Датчик измеряет температуру", k=10)
    assert "scripts.txt" in {s.document for s in sources}
    text = handbook.index.document_text("scripts.txt")
    assert text is not None
    for s in sources:
        if s.document == "scripts.txt":
            assert text[s.start : s.end] == s.text


def test_a_ten_thousand_word_question_is_answered_without_error(handbook: RagEngine) -> None:
    question = " ".join(["battery"] + ["lasts"] * 9_999)
    answer = handbook.answer(question, generate=False)
    assert answer.sources and answer.sources[0].document in {
        "pika-sensor-tags.md",
        "bluetooth-troubleshooting.md",
    }


def test_bad_questions_are_bad_requests(handbook: RagEngine) -> None:
    with pytest.raises(BadRequestError):
        handbook.retrieve("   ")
    with pytest.raises(BadRequestError):
        handbook.retrieve("battery", k=0)


class BrokenEmbedder:
    """An embedding model that returns NaN: the index must come out unchanged."""

    def __init__(self, identity: EmbeddingIdentity) -> None:
        self.identity = identity

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float("nan")] * self.identity.dimension for _ in texts]


def test_a_failing_embedding_model_never_damages_the_index(handbook: RagEngine) -> None:
    broken = RagEngine(handbook.index, BrokenEmbedder(handbook.index.identity))
    before = handbook.index.counts()
    with pytest.raises(StoreError, match="NaN"):
        broken.ingest_text("new.txt", "A perfectly fine document about tags.")
    with pytest.raises(StoreError):
        broken.ingest_text("night-mode.txt", "Night mode was removed.")
    assert handbook.index.counts() == before
    assert "22:00" in (handbook.index.document_text("night-mode.txt") or "")


def test_an_engine_refuses_an_index_built_with_another_model(
    handbook_index: Path, embedder: object
) -> None:
    other = BrokenEmbedder(EmbeddingIdentity("other", "0" * 64, 384))
    with (
        RagIndex.open(handbook_index, readonly=True) as index,
        pytest.raises(StoreError, match="only valid with its own embedding model"),
    ):
        RagEngine(index, other)


def test_query_vectors_are_unit_length(handbook: RagEngine) -> None:
    vector = handbook._embed(["battery"])[0]
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_answering_embeds_only_the_question(handbook: RagEngine) -> None:
    """Candidate sentences are embedded at ingest: a query costs one embedding call, for the
    question, not one per quoted sentence.
    """
    calls: list[list[str]] = []
    model = handbook.embedder

    class Counting:
        identity = model.identity

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            calls.append(list(texts))
            return model.embed(texts)

    engine = RagEngine(handbook.index, Counting())
    question = "How long does the Pika tag battery last?"
    answer = engine.answer(question, generate=False)
    assert not answer.abstained and "18 months" in " ".join(c.quote for c in answer.citations)
    assert calls == [[question]]


def test_the_reranker_orders_the_fused_candidates_by_its_score(handbook: RagEngine) -> None:
    import dataclasses

    from edge_agent.rag import RetrievalSettings

    question = "How long does the Pika tag battery last?"
    hybrid = RagEngine(
        handbook.index, handbook.embedder, settings=RetrievalSettings(mode="hybrid")
    ).retrieve(question, k=20)
    reranked = handbook.retrieve(question, k=20)
    assert {s.chunk_id for s in reranked} == {s.chunk_id for s in hybrid}
    assert reranked[0].document == "pika-sensor-tags.md"
    lexical_only = dataclasses.replace(
        handbook.settings,
        rerank_weights=dataclasses.replace(
            handbook.settings.rerank_weights, chunk=0.0, sentence=0.0, terms=1.0
        ),
    )
    by_terms = RagEngine(handbook.index, handbook.embedder, settings=lexical_only).retrieve(
        question, k=20
    )
    assert [s.chunk_id for s in by_terms] != [s.chunk_id for s in reranked]


def test_token_vectors_pool_to_the_sentence_embedding_and_name_their_words(
    embedder: LlamaEmbedder,
) -> None:
    question = "How do I make grep ignore case?"
    other = "Log files are rotated count times before being removed."
    [alone] = embedder.embed_tokens([question])
    assert alone.words[0] == alone.words[-1] == ""  # [CLS] and [SEP]
    assert alone.words.count("grep") == 2  # "gr" + "ep"
    assert {"ignore", "case"} <= set(alone.words)
    pooled = alone.vectors.mean(axis=0)
    sentence = np.asarray(embedder.embed([question])[0])
    assert float(pooled @ sentence / np.linalg.norm(pooled)) == pytest.approx(1.0, abs=1e-4)
    _, second = embedder.embed_tokens([other, question])  # a text's vectors do not
    assert np.allclose(second.vectors, alone.vectors, atol=1e-4)  # depend on its batch


def test_the_late_mode_reranks_the_same_candidates_with_token_vectors(
    handbook: RagEngine,
) -> None:
    import dataclasses

    from edge_agent.rag import RetrievalSettings
    from edge_agent.rag.chunking import with_context
    from edge_agent.rag.engine import TokenEmbeddingModel
    from edge_agent.rag.rerank import RerankWeights, late_interaction
    from edge_agent.rag.text import question_terms

    question = "How long does the Pika tag battery last?"
    rerank = handbook.retrieve(question, k=20)
    late_only = RetrievalSettings(mode="late", late_weights=RerankWeights(0.0, 0.0, 0.0, 1.0))
    late = RagEngine(handbook.index, handbook.embedder, settings=late_only)
    by_tokens = late.retrieve(question, k=20)
    assert {s.chunk_id for s in by_tokens} == {s.chunk_id for s in rerank}
    assert by_tokens[0].document == "pika-sensor-tags.md"
    assert [s.chunk_id for s in by_tokens] != [s.chunk_id for s in rerank]
    # the order is the MaxSim of the question's content tokens over each candidate's text
    hybrid = RagEngine(
        handbook.index, handbook.embedder, settings=RetrievalSettings(mode="hybrid")
    ).retrieve(question, k=20)
    stored = handbook.index.chunks([s.chunk_id for s in hybrid])
    texts = [with_context(stored[s.chunk_id].as_chunk(), s.title) for s in hybrid]
    model = handbook.embedder
    assert isinstance(model, TokenEmbeddingModel)
    maxsim = late_interaction(
        model.embed_tokens([question])[0], question_terms(question), model.embed_tokens(texts)
    )
    expected = [hybrid[j].chunk_id for j in sorted(range(len(hybrid)), key=lambda j: -maxsim[j])]
    assert [s.chunk_id for s in by_tokens][:5] == expected[:5]

    class PooledOnly:  # an embedder without per-token output: the late feature is left out
        identity = handbook.embedder.identity
        embed = handbook.embedder.embed

    fallback = RagEngine(
        handbook.index, PooledOnly(), settings=dataclasses.replace(late_only, mode="late")
    )
    assert [s.chunk_id for s in fallback.retrieve(question, k=20)] == [
        s.chunk_id
        for s in RagEngine(
            handbook.index,
            handbook.embedder,
            settings=RetrievalSettings(rerank_weights=RerankWeights(0.0, 0.0, 0.0)),
        ).retrieve(question, k=20)
    ]
