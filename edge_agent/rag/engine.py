"""The RAG engine: ingest (load, normalize, dedupe, chunk, embed, store) and ask (hybrid
retrieval, prompt, generation, citations, abstention). Models come in through Protocols.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from edge_agent.errors import BadRequestError, StoreError
from edge_agent.rag.chunking import chunk_document, with_context
from edge_agent.rag.dedupe import content_sha256, minhash_signature
from edge_agent.rag.fusion import reciprocal_rank_fusion
from edge_agent.rag.grounding import (
    Citation,
    Evidence,
    EvidencePolicy,
    Sentence,
    Source,
    answer_gap,
    assess_evidence,
    build_messages,
    candidate_sentences,
    cite,
    extractive_answer,
    model_declined,
    quotable_spans,
    verify_citation,
)
from edge_agent.rag.index import (
    EmbeddingIdentity,
    FilterValue,
    RagIndex,
    SentenceVectors,
    StoredChunk,
    Vector,
)
from edge_agent.rag.loaders import load_document
from edge_agent.rag.rerank import (
    Candidate,
    RerankWeights,
    TokenVectors,
    late_interaction,
    rerank,
)
from edge_agent.rag.text import normalize_text, question_terms, term_coverage, token_spans

__all__ = [
    "Answer",
    "ChatModel",
    "EmbeddingModel",
    "IngestOutcome",
    "RagEngine",
    "RetrievalSettings",
    "TokenEmbeddingModel",
]

IngestStatus = Literal["added", "replaced", "unchanged", "duplicate", "near_duplicate"]
RetrievalMode = Literal["bm25", "dense", "hybrid", "rerank", "late"]
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = ("bm25", "dense", "hybrid", "rerank", "late")


class EmbeddingModel(Protocol):
    """Sentence embeddings from the release's embedding artifact."""

    @property
    def identity(self) -> EmbeddingIdentity: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class TokenEmbeddingModel(Protocol):
    """An embedding model that can also return per-token vectors (the ``late`` mode)."""

    def embed_tokens(self, texts: Sequence[str]) -> list[TokenVectors]: ...


class ChatModel(Protocol):
    """A chat model that completes a list of ``{"role", "content"}`` messages."""

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        cancelled: threading.Event | None = None,
    ) -> str:
        """The reply; stop generating soon after ``cancelled`` is set (its caller left)."""
        ...


@dataclass(frozen=True)
class RetrievalSettings:
    lexical_candidates: int = 40
    vector_candidates: int = 40
    bit_candidates: int = 400  # Hamming-distance candidates re-ranked with exact floats
    rrf_k: int = 60
    max_query_terms: int = 32
    max_query_tokens: int = 200  # the question is cut to this before embedding
    near_duplicate_jaccard: float = 0.85
    embed_batch: int = 16
    # "bm25" and "dense" are the single retrievers (for comparison); "hybrid" fuses them by
    # reciprocal rank; "rerank" re-scores the first ``rerank_candidates`` fused chunks;
    # "late" does the same with ``late_weights``, which add the MaxSim of token vectors
    # computed at query time (an embedder without ``embed_tokens`` reranks without it).
    mode: RetrievalMode = "rerank"
    rerank_candidates: int = 20
    rerank_weights: RerankWeights = field(default_factory=RerankWeights)
    late_weights: RerankWeights = field(default_factory=lambda: RerankWeights(late=1.0))


@dataclass(frozen=True)
class IngestOutcome:
    document: str
    status: IngestStatus
    chunks: int = 0
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    abstained: bool
    reason: str
    citations: list[Citation] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


_SENTENCE_CACHE_SIZE = 4096
_TOKEN_CACHE_SIZE = 1024  # chunks' token vectors, float16: ~60 KB each for ~80 tokens


def _clip_tokens(text: str, max_tokens: int) -> str:
    spans = token_spans(text)
    return text if len(spans) <= max_tokens else text[: spans[max_tokens - 1][1]]


class RagEngine:
    """Ingest and question answering over one :class:`RagIndex`."""

    def __init__(
        self,
        index: RagIndex,
        embedder: EmbeddingModel,
        chat: ChatModel | None = None,
        *,
        settings: RetrievalSettings | None = None,
        evidence: EvidencePolicy | None = None,
    ) -> None:
        ident = embedder.identity
        if (ident.sha256, ident.dimension) != (index.identity.sha256, index.identity.dimension):
            raise StoreError(
                f"{index.path} was built with embedding model {index.identity.sha256[:12]} but "
                f"the engine was given {ident.sha256[:12]}; an index is only valid with its "
                "own embedding model"
            )
        self.index = index
        self.embedder = embedder
        self.chat = chat
        self.settings = settings or RetrievalSettings()
        self.evidence = evidence or EvidencePolicy()
        self._write_lock = threading.Lock()
        self._sentence_vectors: OrderedDict[str, Vector] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._token_vectors: OrderedDict[str, TokenVectors] = OrderedDict()

    # --- embedding ----------------------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> Vector:
        dim = self.index.identity.dimension
        out = np.zeros((len(texts), dim), dtype=np.float32)
        step = self.settings.embed_batch
        for i in range(0, len(texts), step):
            got = np.asarray(self.embedder.embed(list(texts[i : i + step])), dtype=np.float32)
            if got.shape != (len(texts[i : i + step]), dim) or not np.isfinite(got).all():
                raise StoreError(
                    f"the embedding model returned {got.shape} values for "
                    f"{len(texts[i : i + step])} texts of {dim}-d (or NaN); nothing was stored"
                )
            out[i : i + step] = got
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: Vector = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return unit

    def _embed_cached(self, texts: Sequence[str]) -> Vector:
        """Embeddings of short texts (quoted sentences) through a bounded LRU cache."""
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._sentence_vectors))
        fresh = self._embed(missing) if missing else None
        with self._cache_lock:
            for i, text in enumerate(missing):
                assert fresh is not None
                self._sentence_vectors[text] = fresh[i]
            for text in texts:
                self._sentence_vectors.move_to_end(text)
            while len(self._sentence_vectors) > _SENTENCE_CACHE_SIZE:
                self._sentence_vectors.popitem(last=False)
            return np.stack([self._sentence_vectors[t] for t in texts])

    def _tokens_cached(
        self, model: TokenEmbeddingModel, texts: Sequence[str]
    ) -> list[TokenVectors]:
        """Token vectors of chunk texts through a bounded LRU cache (float16 rows)."""
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._token_vectors))
        step = self.settings.embed_batch
        fresh = [
            tv
            for i in range(0, len(missing), step)
            for tv in model.embed_tokens(missing[i : i + step])
        ]
        with self._cache_lock:
            for text, tv in zip(missing, fresh, strict=True):
                self._token_vectors[text] = TokenVectors(tv.words, tv.vectors.astype(np.float16))
            for text in texts:
                self._token_vectors.move_to_end(text)
            got = [self._token_vectors[t] for t in texts]
            while len(self._token_vectors) > _TOKEN_CACHE_SIZE:
                self._token_vectors.popitem(last=False)
        return [TokenVectors(tv.words, tv.vectors.astype(np.float32)) for tv in got]

    # --- ingest -------------------------------------------------------------------------

    def ingest_text(
        self,
        key: str,
        text: str,
        *,
        title: str | None = None,
        media_type: str = "text/plain",
        metadata: Mapping[str, FilterValue] | None = None,
    ) -> IngestOutcome:
        """Add or replace document ``key``. Unchanged text and duplicates are skipped."""
        if not key or len(key) > 512:
            raise BadRequestError("a document id must be 1-512 characters")
        normalized = normalize_text(text)
        if not normalized:
            raise BadRequestError(f"{key} contains no text after normalization")
        digest = content_sha256(normalized)
        with self._write_lock:
            existing = self.index.document(key)
            if (
                existing is not None
                and existing.content_sha256 == digest
                and dict(existing.metadata) == dict(metadata or {})
            ):
                return IngestOutcome(key, "unchanged", existing.chunk_count)
            twin = self.index.key_with_content(digest, other_than=key)
            if twin is not None:
                return IngestOutcome(key, "duplicate", duplicate_of=twin)
            signature = minhash_signature(normalized)
            keys, signatures = self.index.minhash_signatures(other_than=key)
            if keys:
                similarity = (signatures == signature[None, :]).mean(axis=1)
                best = int(np.argmax(similarity))
                if similarity[best] >= self.settings.near_duplicate_jaccard:
                    return IngestOutcome(key, "near_duplicate", duplicate_of=keys[best])
            title = title or key
            chunks = chunk_document(normalized, self.index.policy)
            embedded = [with_context(c, title) for c in chunks]
            spans = [quotable_spans(c.text) for c in chunks]
            sentence_texts = [
                c.text[a:b] for c, cs in zip(chunks, spans, strict=True) for a, b in cs
            ]
            known = self.index.chunk_embeddings(key) if existing is not None else {}
            missing = list(dict.fromkeys(t for t in embedded + sentence_texts if t not in known))
            fresh = dict(zip(missing, self._embed(missing), strict=True)) if missing else {}
            known.update(fresh)
            vectors = np.stack([known[t] for t in embedded])
            dim = self.index.identity.dimension
            sentences = [
                SentenceVectors(
                    cs,
                    np.stack([known[c.text[a:b]] for a, b in cs])
                    if cs
                    else np.zeros((0, dim), dtype=np.float32),
                )
                for c, cs in zip(chunks, spans, strict=True)
            ]
            self.index.put_document(
                key=key,
                title=title,
                media_type=media_type,
                text=normalized,
                content_sha256=digest,
                metadata=metadata or {},
                minhash=signature,
                chunks=chunks,
                embeddings=vectors,
                sentences=sentences,
            )
        return IngestOutcome(key, "replaced" if existing else "added", len(chunks))

    def ingest_bytes(
        self,
        key: str,
        data: bytes,
        *,
        name: str,
        media_type: str | None = None,
        metadata: Mapping[str, FilterValue] | None = None,
    ) -> IngestOutcome:
        """Parse an uploaded file (text, Markdown, HTML, PDF) and ingest it as ``key``."""
        loaded = load_document(data, name=name, media_type=media_type)
        return self.ingest_text(
            key, loaded.text, title=loaded.title, media_type=loaded.media_type, metadata=metadata
        )

    def ingest_paths(
        self,
        paths: Sequence[Path],
        *,
        root: Path | None = None,
        progress: Callable[[int, int, str, IngestOutcome | Exception], None] | None = None,
    ) -> list[IngestOutcome | Exception]:
        """Ingest files one transaction each; a bad file is reported and skipped."""
        results: list[IngestOutcome | Exception] = []
        for i, path in enumerate(paths, start=1):
            key = path.relative_to(root).as_posix() if root else path.name
            result: IngestOutcome | Exception
            try:
                result = self.ingest_bytes(key, path.read_bytes(), name=path.name)
            except (BadRequestError, OSError) as e:
                result = e
            results.append(result)
            if progress is not None:
                progress(i, len(paths), key, result)
        return results

    # --- retrieval ----------------------------------------------------------------------

    def retrieve(
        self, question: str, *, k: int = 5, filters: Mapping[str, FilterValue] | None = None
    ) -> list[Source]:
        """BM25 (FTS5) and vector KNN, fused by reciprocal rank, then (modes ``rerank``,
        the default, and ``late``) the second stage over the first candidates; the single
        retrievers in modes ``bm25`` and ``dense``."""
        if not question.strip():
            raise BadRequestError("the question is empty")
        if not 1 <= k <= 50:
            raise BadRequestError("k must be between 1 and 50")
        s = self.settings
        query_vector = self._embed_cached(
            [_clip_tokens(normalize_text(question), s.max_query_tokens)]
        )[0]
        terms = question_terms(question)[: s.max_query_terms]
        lexical = self.index.lexical_search(terms, s.lexical_candidates, filters=filters)
        vector = self.index.vector_search(
            query_vector, s.vector_candidates, candidates=s.bit_candidates, filters=filters
        )
        similarity = dict(vector)
        vector_ids = [i for i, _ in vector]
        if s.mode in ("rerank", "late"):
            pool = self._rank("hybrid", lexical, vector_ids, max(k, s.rerank_candidates))
            stored = self.index.chunks(pool)
            weights = s.late_weights if s.mode == "late" else s.rerank_weights
            ids = self._rerank(question, query_vector, terms, stored, pool, similarity, weights)
            ids = ids[:k]
        else:
            ids = self._rank(s.mode, lexical, vector_ids, k)
            stored = self.index.chunks(ids)
        missing = [i for i in ids if i not in similarity]
        similarity.update(self.index.similarities(query_vector, missing))
        lexical_set = set(lexical)
        return [
            Source(
                number=n,
                document=stored[i].document,
                title=stored[i].title,
                chunk_id=i,
                start=stored[i].start,
                end=stored[i].end,
                text=stored[i].text,
                similarity=similarity.get(i, 0.0),
                lexical_match=i in lexical_set,
            )
            for n, i in enumerate((i for i in ids if i in stored), start=1)
        ]

    def _rank(
        self, mode: RetrievalMode, lexical: list[int], vector: list[int], k: int
    ) -> list[int]:
        if mode == "bm25":
            return lexical[:k]
        if mode == "dense":
            return vector[:k]
        fused = reciprocal_rank_fusion([lexical, vector], k=self.settings.rrf_k)
        return [i for i, _ in fused[:k]]

    def _rerank(
        self,
        question: str,
        query: Vector,
        terms: Sequence[str],
        stored: Mapping[int, StoredChunk],
        ids: list[int],
        similarity: dict[int, float],
        weights: RerankWeights,
    ) -> list[int]:
        """Re-score the fused candidates ``ids`` (:mod:`.rerank`)."""
        similarity.update(self.index.similarities(query, [i for i in ids if i not in similarity]))
        sentences = self.index.sentence_vectors(ids) if weights.sentence else {}
        present = [i for i in ids if i in stored]
        texts = [with_context(stored[i].as_chunk(), stored[i].title) for i in present]
        late = [0.0] * len(present)
        model = self.embedder
        if weights.late and present and isinstance(model, TokenEmbeddingModel):
            clipped = _clip_tokens(normalize_text(question), self.settings.max_query_tokens)
            (asked,) = model.embed_tokens([clipped])
            late = late_interaction(asked, terms, self._tokens_cached(model, texts))
        candidates = []
        for n, (i, text) in enumerate(zip(present, texts, strict=True)):
            sv = sentences.get(i)
            best = (
                float((sv.vectors @ query).max())
                if sv is not None and len(sv.spans)
                else similarity[i]
            )
            coverage = term_coverage(terms, text)
            candidates.append(Candidate(i, similarity[i], best, coverage, late[n]))
        return rerank(candidates, weights)

    # --- answers ------------------------------------------------------------------------

    def sentence_matrix(self, sentences: Sequence[Sentence]) -> Vector:
        """Embeddings of candidate sentences: those computed at ingest are read from the
        index; any other (an index written before, a sentence split differently) is
        embedded now, through a bounded cache.
        """
        stored = self.index.sentence_vectors(sorted({s.source.chunk_id for s in sentences}))
        rows: dict[tuple[int, int, int], Vector] = {}
        for chunk_id, sv in stored.items():
            for (a, b), v in zip(sv.spans, sv.vectors, strict=True):
                rows[(chunk_id, a, b)] = v
        keys = [(s.source.chunk_id, s.start, s.end) for s in sentences]
        missing = [s.text for s, key in zip(sentences, keys, strict=True) if key not in rows]
        fresh = iter(self._embed_cached(missing)) if missing else iter(())
        return np.stack([rows[key] if key in rows else next(fresh) for key in keys])

    def relevance(
        self, sentences: Sequence[Sentence]
    ) -> Callable[[str, Sequence[Sentence]], list[float]]:
        """Cosine between a claim and candidate sentences (sentences embedded at ingest)."""
        vectors = self.sentence_matrix(sentences) if sentences else None
        row = {id(s): i for i, s in enumerate(sentences)}
        clip = self.settings.max_query_tokens

        def relevance(claim: str, subset: Sequence[Sentence]) -> list[float]:
            if vectors is None or not subset:
                return [0.0] * len(subset)
            q = self._embed_cached([_clip_tokens(normalize_text(claim), clip)])[0]
            return [float(vectors[row[id(s)]] @ q) for s in subset]

        return relevance

    def verified(self, citations: Sequence[Citation]) -> list[Citation]:
        """Only the citations whose quote is exactly their span of the stored document."""
        texts: dict[str, str | None] = {}
        good = []
        for c in citations:
            if c.document not in texts:
                texts[c.document] = self.index.document_text(c.document)
            text = texts[c.document]
            if text is not None and verify_citation(c, text):
                good.append(c)
        return good

    def assess(self, question: str, sources: Sequence[Source]) -> Evidence:
        """The abstention rule: whether ``sources`` are strong enough to answer ``question``."""
        terms = question_terms(question)[: self.settings.max_query_terms]
        return assess_evidence(
            question, sources, self.evidence, unknown_terms=self.index.unknown_terms(terms)
        )

    def answer(
        self,
        question: str,
        *,
        k: int = 5,
        filters: Mapping[str, FilterValue] | None = None,
        max_tokens: int = 256,
        generate: bool = True,
        cancelled: threading.Event | None = None,
    ) -> Answer:
        """Answer from the index with citations, or abstain and say why.

        Without a chat model (or with ``generate=False``) the answer is extractive: the
        best-matching source sentences, quoted. ``cancelled`` (set when whoever asked has
        gone) stops a generated answer after the token it is on.
        """
        sources = self.retrieve(question, k=k, filters=filters)
        evidence = self.assess(question, sources)
        if not evidence.sufficient:
            return Answer(
                question, f"I don't know: {evidence.reason}.", True, evidence.reason, [], sources
            )
        sentences = candidate_sentences(sources)
        relevance = self.relevance(sentences)
        if self.chat is not None and generate:
            prompt = build_messages(_clip_tokens(question, self.settings.max_query_tokens), sources)
            text = self.chat.complete(prompt, max_tokens=max_tokens, cancelled=cancelled)
            if model_declined(text):
                reason = "the model found no answer in the retrieved sources"
                return Answer(question, text.strip(), True, reason, [], sources)
            citations = self.verified(cite(text, sentences, relevance, question=question))
        else:
            text, citations = extractive_answer(question, sentences, relevance)
            citations = self.verified(citations)
        if not citations:
            reason = "the answer could not be tied to any retrieved passage"
            return Answer(question, f"I don't know: {reason}.", True, reason, [], sources)
        titles = {s.number: s.title for s in sources}
        gap = answer_gap(question, [(c.quote, titles.get(c.source, "")) for c in citations])
        if gap is not None:
            return Answer(question, f"I don't know: {gap}.", True, gap, [], sources)
        return Answer(question, text.strip(), False, evidence.reason, citations, sources)

    def augment_chat_messages(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        k: int = 5,
        filters: Mapping[str, FilterValue] | None = None,
    ) -> tuple[list[dict[str, str]], list[Source]]:
        """Messages with retrieved sources added for the last user turn (see ``rag.api``)."""
        question = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"),
            "",
        )
        if not question.strip():
            raise BadRequestError("retrieval needs a user message with text")
        sources = self.retrieve(question, k=k, filters=filters)
        grounded = build_messages(question, sources)
        history = [dict(m) for m in messages]
        last_user = max(i for i, m in enumerate(history) if m.get("role") == "user")
        history[last_user] = grounded[1]
        system = [m for m in history if m.get("role") == "system"]
        rest = [m for m in history if m.get("role") != "system"]
        merged_system = grounded[0]["content"] + "".join(
            "\n\n" + str(m.get("content", "")) for m in system
        )
        return [{"role": "system", "content": merged_system}, *rest], sources
