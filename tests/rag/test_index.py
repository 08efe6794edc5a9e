"""The SQLite index (real apsw + sqlite-vec): identity, search, replacement, and damage.

Vectors here are synthetic; the engine tests use the real embedding model.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import BadRequestError, StoreError
from edge_agent.rag.chunking import chunk_text
from edge_agent.rag.dedupe import content_sha256, minhash_signature
from edge_agent.rag.index import EmbeddingIdentity, RagIndex, read_identity

DIM = 64
MODEL = EmbeddingIdentity("test-embedder", "a" * 64, DIM)
OTHER_MODEL = EmbeddingIdentity("other-embedder", "b" * 64, DIM)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def put(
    index: RagIndex, key: str, text: str, vectors: np.ndarray | None = None, **meta: str
) -> None:
    chunks = chunk_text(text, index.policy)
    if vectors is None:
        vectors = unit_rows(np.random.default_rng(len(text)), len(chunks))
    index.put_document(
        key=key,
        title=key,
        media_type="text/plain",
        text=text,
        content_sha256=content_sha256(text),
        metadata=meta,
        minhash=minhash_signature(text),
        chunks=chunks,
        embeddings=vectors,
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    path = tmp_path / "index.sqlite"
    with RagIndex.create(path, MODEL) as index:
        put(index, "alpha.txt", "Alpha gateways buffer readings for fourteen days.", depot="porto")
        put(
            index,
            "beta.txt",
            "Beta tags report every thirty seconds over Bluetooth.",
            depot="gdansk",
        )
    return path


def test_the_index_records_its_embedding_model(index_path: Path) -> None:
    assert read_identity(index_path) == MODEL


def test_opening_with_another_embedding_model_is_refused(index_path: Path) -> None:
    with pytest.raises(StoreError, match="only valid with its own embedding model"):
        RagIndex.open(index_path, OTHER_MODEL)


def test_creating_over_an_existing_file_is_refused(index_path: Path) -> None:
    with pytest.raises(StoreError, match="already exists"):
        RagIndex.create(index_path, MODEL)


def test_lexical_search_ranks_by_bm25_and_stems(index_path: Path) -> None:
    with RagIndex.open(index_path, MODEL) as index:
        ids = index.lexical_search(["buffered", "reading"], 5)
        assert [index.chunks(ids)[i].document for i in ids] == ["alpha.txt"]
        assert index.unknown_terms(["tag", "sourdough"]) == ["sourdough"]


def test_metadata_filters_restrict_both_searches(index_path: Path) -> None:
    with RagIndex.open(index_path, MODEL) as index:
        q = unit_rows(np.random.default_rng(1), 1)[0]
        hits = index.vector_search(q, 10, filters={"depot": "gdansk"})
        assert {index.chunks([i])[i].document for i, _ in hits} == {"beta.txt"}
        assert index.lexical_search(["readings"], 5, filters={"depot": "gdansk"}) == []
        assert index.vector_search(q, 10, filters={"depot": "nowhere"}) == []
        with pytest.raises(BadRequestError, match="filter key"):
            index.vector_search(q, 10, filters={"bad'key": "x"})


def test_reingesting_a_document_replaces_only_its_chunks(index_path: Path) -> None:
    with RagIndex.open(index_path, MODEL) as index:
        before = index.lexical_search(["bluetooth"], 5)
        put(index, "alpha.txt", "Alpha gateways now buffer readings for thirty days.")
        assert index.lexical_search(["bluetooth"], 5) == before  # beta untouched
        assert index.lexical_search(["fourteen"], 5) == []
        assert index.lexical_search(["thirty"], 5) != []
        assert index.counts() == {"documents": 2, "chunks": 2}


def test_bit_candidates_with_float_rerank_match_exact_search(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    centers = unit_rows(rng, 20)
    with RagIndex.create(tmp_path / "big.sqlite", MODEL) as index:
        for d in range(40):
            text = " ".join(f"w{d}x{i}." for i in range(1500))
            n = len(chunk_text(text, index.policy))
            vecs = centers[rng.integers(0, 20, n)] + 0.06 * rng.standard_normal((n, DIM))
            vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
            put(index, f"d{d}", text, vecs)
        assert index.counts()["chunks"] > 1000
        recalls = []
        queries = centers[rng.integers(0, 20, 30)] + 0.06 * rng.standard_normal((30, DIM))
        for q in queries.astype(np.float32):
            exact = {i for i, _ in index.exact_vector_search(q, 10)}
            fast = {i for i, _ in index.vector_search(q, 10, candidates=200)}
            recalls.append(len(exact & fast) / 10)
        assert np.mean(recalls) >= 0.98


def test_a_rejected_write_leaves_the_index_unchanged(index_path: Path) -> None:
    before = sha(index_path)
    with RagIndex.open(index_path, MODEL) as index:
        text = "Gamma replaces nothing."
        bad = np.full((1, DIM), np.nan, dtype=np.float32)
        with pytest.raises(StoreError, match="NaN"):
            put(index, "alpha.txt", text, bad)
        with pytest.raises(StoreError, match="embeddings"):
            put(index, "alpha.txt", text, unit_rows(np.random.default_rng(0), 3))
        assert index.lexical_search(["fourteen"], 5) != []
    assert sha(index_path) == before


def test_a_read_only_index_refuses_writes_with_a_clear_error(index_path: Path) -> None:
    with RagIndex.open(index_path, MODEL, readonly=True) as index:
        with pytest.raises(StoreError, match="read-only"):
            index.delete_document("alpha.txt")
        assert index.counts()["documents"] == 2


def test_a_file_that_is_not_sqlite_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        RagIndex.open(path)


def test_a_missing_index_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="build or ingest"):
        RagIndex.open(tmp_path / "none.sqlite")


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    import apsw

    path = tmp_path / "other.sqlite"
    con = apsw.Connection(str(path))
    con.execute("CREATE TABLE t(x)")
    con.close()
    with pytest.raises(StoreError, match="not an Outpost RAG index"):
        RagIndex.open(path)


def test_a_truncated_index_is_reported_as_corrupt(index_path: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "truncated.sqlite"
    data = index_path.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with (
        pytest.raises(StoreError, match=r"corrupt|not a readable|rebuild"),
        RagIndex.open(damaged) as index,
    ):
        index.counts()


def test_overwritten_pages_are_reported_as_corrupt(index_path: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "scribbled.sqlite"
    shutil.copy(index_path, damaged)
    data = bytearray(damaged.read_bytes())
    page = 4096
    for p in range(1, len(data) // page):
        data[p * page : p * page + 64] = b"\xa5" * 64
    damaged.write_bytes(bytes(data))
    with pytest.raises(StoreError), RagIndex.open(damaged) as index:
        index.counts()
    assert read_identity(index_path) == MODEL  # the original is untouched


def test_an_index_of_another_schema_version_is_refused_with_the_rebuild_command(
    index_path: Path,
) -> None:
    """Schema 1 indexes (window chunks, no sentence vectors) cannot be read by this agent."""
    import apsw

    db = apsw.Connection(str(index_path))
    db.execute("PRAGMA user_version=1")
    db.close()
    with pytest.raises(StoreError, match=r"schema 1.*python -m edge_agent.rag build-index"):
        RagIndex.open(index_path)


def test_sentence_vectors_are_stored_with_their_chunk_and_removed_with_it(
    tmp_path: Path,
) -> None:
    from edge_agent.rag.index import SentenceVectors

    path = tmp_path / "s.sqlite"
    text = "Alpha gateways buffer readings. They keep fourteen days of them in flash memory."
    rng = np.random.default_rng(3)
    with RagIndex.create(path, MODEL) as index:
        chunks = chunk_text(text, index.policy)
        spans = [(0, 31), (32, len(text))]
        vectors = unit_rows(rng, 2)
        index.put_document(
            key="a.txt",
            title="a",
            media_type="text/plain",
            text=text,
            content_sha256=content_sha256(text),
            metadata={},
            minhash=minhash_signature(text),
            chunks=chunks,
            embeddings=unit_rows(rng, 1),
            sentences=[SentenceVectors(spans, vectors)],
        )
        [(chunk_id, got)] = index.sentence_vectors(list(index.chunks([1, 2, 3]))).items()
        assert got.spans == spans and np.allclose(got.vectors, vectors)
        with pytest.raises(StoreError, match="sentence embeddings"):
            put_bad = SentenceVectors(spans, unit_rows(rng, 1))
            index.put_document(
                key="b.txt",
                title="b",
                media_type="text/plain",
                text=text + " b",
                content_sha256=content_sha256(text + " b"),
                metadata={},
                minhash=minhash_signature(text + " b"),
                chunks=chunks,
                embeddings=unit_rows(rng, 1),
                sentences=[put_bad],
            )
        index.delete_document("a.txt")
        assert index.sentence_vectors([chunk_id]) == {}
