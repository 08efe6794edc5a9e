"""The RAG index: one SQLite file (apsw + sqlite-vec) with documents, chunks, FTS5 and vec0.

Layout: ``documents`` (normalized text, metadata, MinHash), ``chunks`` (span, text, the
heading it sits under and the exact float32 embedding of title, heading and text),
``sentences`` (the quotable sentences of each chunk with their embeddings, computed at
ingest so that answering a question embeds only the question), ``chunks_fts`` (FTS5,
BM25, over title, heading and text) and ``chunks_bits`` (sqlite-vec ``vec0`` with the
sign-quantized embedding). ``meta`` records the schema version, the chunking policy and
the embedding model's sha256 and dimension: an index is only valid with the embedding
model it was built with, and opening it with another one is refused. An index of another
schema version is refused with the command that rebuilds it.

Vector search is the fast path: Hamming distance over the bit vectors (held in memory,
reloaded when another connection commits) picks candidates, which are re-ranked by exact
cosine on their float vectors.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BadRequestError, StoreError
from edge_agent.rag.chunking import Chunk, ChunkingPolicy, with_context

__all__ = [
    "DocumentRecord",
    "EmbeddingIdentity",
    "FilterValue",
    "RagIndex",
    "SentenceVectors",
    "StoredChunk",
    "read_identity",
]

SCHEMA_VERSION = 2  # 2: structured chunks with their heading, sentence embeddings
REBUILD = "python -m edge_agent.rag build-index DOCS_DIR --out FILE"
_APPLICATION_ID = 0x4F505247  # "OPRG"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_FILTER_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FilterValue = str | int | float | bool
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbeddingIdentity:
    """Which embedding model an index belongs to (the model file's sha256 and output size)."""

    name: str
    sha256: str
    dimension: int


@dataclass(frozen=True)
class DocumentRecord:
    key: str
    title: str
    media_type: str
    content_sha256: str
    metadata: Mapping[str, Any]
    chunk_count: int


@dataclass(frozen=True)
class StoredChunk:
    id: int
    document: str
    title: str
    ordinal: int
    start: int
    end: int
    text: str
    context: str = ""

    def as_chunk(self) -> Chunk:
        return Chunk(self.ordinal, self.start, self.end, self.text, self.context)


@dataclass(frozen=True)
class SentenceVectors:
    """The quotable sentences of one chunk: spans into the chunk's text, one row each."""

    spans: list[tuple[int, int]]
    vectors: npt.NDArray[np.float32]


@dataclass(frozen=True)
class _BitCache:
    data_version: int
    ids: npt.NDArray[np.int64]
    columns: npt.NDArray[np.uint64]  # (dimension / 64, chunks): one row per 64-bit word


def _apsw() -> Any:
    try:
        import apsw
        import sqlite_vec
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise StoreError("the RAG index needs the 'rag' extra (apsw, sqlite-vec)") from e
    return apsw, sqlite_vec


_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents(
  id INTEGER PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  title TEXT NOT NULL,
  media_type TEXT NOT NULL,
  content_sha256 TEXT NOT NULL,
  text TEXT NOT NULL,
  metadata TEXT NOT NULL,
  minhash BLOB NOT NULL,
  ingested_at REAL NOT NULL
);
CREATE INDEX documents_content ON documents(content_sha256);
CREATE TABLE chunks(
  id INTEGER PRIMARY KEY,
  document_id INTEGER NOT NULL REFERENCES documents(id),
  ordinal INTEGER NOT NULL,
  start INTEGER NOT NULL,
  end INTEGER NOT NULL,
  text TEXT NOT NULL,
  context TEXT NOT NULL,
  embedding BLOB NOT NULL
);
CREATE INDEX chunks_document ON chunks(document_id);
CREATE TABLE sentences(
  chunk_id INTEGER NOT NULL REFERENCES chunks(id),
  start INTEGER NOT NULL,
  end INTEGER NOT NULL,
  embedding BLOB NOT NULL
);
CREATE INDEX sentences_chunk ON sentences(chunk_id);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
  text, content='', contentless_delete=1, tokenize='porter unicode61 remove_diacritics 2'
);
"""


class RagIndex:
    """One index file. Use :meth:`create` or :meth:`open`; every write is one transaction."""

    def __init__(self, connection: Any, path: Path, *, readonly: bool) -> None:
        self._db = connection
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._cache: _BitCache | None = None
        # term -> number of chunks it occurs in (capped), valid for one data_version
        self._df: tuple[int, dict[tuple[str, int], int]] = (-1, {})
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        try:
            self.identity = EmbeddingIdentity(
                name=meta["embedding_name"],
                sha256=meta["embedding_sha256"],
                dimension=int(meta["embedding_dimension"]),
            )
            self.policy = ChunkingPolicy(
                max_tokens=int(meta["chunk_max_tokens"]),
                overlap_tokens=int(meta["chunk_overlap_tokens"]),
                method=meta["chunk_method"],
            )
        except (KeyError, ValueError) as e:
            raise StoreError(f"{path}: index metadata is incomplete ({e}); rebuild it") from e

    # --- opening ------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path, flags: int | None) -> Any:
        apsw, sqlite_vec = _apsw()
        try:
            db = apsw.Connection(str(path), flags=flags) if flags else apsw.Connection(str(path))
            db.enable_load_extension(True)
            db.load_extension(sqlite_vec.loadable_path())
            db.enable_load_extension(False)
            db.execute("PRAGMA foreign_keys=ON")
            return db
        except apsw.Error as e:
            raise StoreError(f"{path}: cannot open the RAG index: {e}") from e

    @classmethod
    def create(
        cls, path: Path, identity: EmbeddingIdentity, policy: ChunkingPolicy | None = None
    ) -> RagIndex:
        """A new, empty index file at ``path`` (which must not exist yet)."""
        policy = policy or ChunkingPolicy()
        if path.exists():
            raise StoreError(f"{path} already exists; open it or choose another path")
        if identity.dimension <= 0 or identity.dimension % 64:
            raise StoreError(f"embedding dimension {identity.dimension} is not a multiple of 64")
        db = cls._connect(path, None)
        apsw, _ = _apsw()
        try:
            with db:
                db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute(_SCHEMA)
                bits = f"bit[{identity.dimension}]"
                db.execute(f"CREATE VIRTUAL TABLE chunks_bits USING vec0(embedding {bits})")
                db.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("embedding_name", identity.name),
                        ("embedding_sha256", identity.sha256),
                        ("embedding_dimension", str(identity.dimension)),
                        ("chunk_max_tokens", str(policy.max_tokens)),
                        ("chunk_overlap_tokens", str(policy.overlap_tokens)),
                        ("chunk_method", policy.method),
                    ],
                )
        except apsw.Error as e:
            db.close()
            path.unlink(missing_ok=True)
            raise StoreError(f"{path}: cannot create the RAG index: {e}") from e
        return cls(db, path, readonly=False)

    @classmethod
    def open(
        cls,
        path: Path,
        expected: EmbeddingIdentity | None = None,
        *,
        readonly: bool = False,
        check: bool = True,
    ) -> RagIndex:
        """Open an existing index; refuse a file that is corrupt, foreign or built with
        another embedding model than ``expected``.
        """
        _check_header(path)
        apsw, _ = _apsw()
        flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
        db = cls._connect(path, flags)
        try:
            if check:
                problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise StoreError(
                        f"{path} is corrupted ({problems[0]}); reinstall the release or "
                        "rebuild the index with `python -m edge_agent.rag build-index`"
                    )
            (app_id,) = db.execute("PRAGMA application_id").fetchone()
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if app_id != _APPLICATION_ID:
                raise StoreError(f"{path} is an SQLite file but not an Outpost RAG index")
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{path} has index schema {version}, this agent reads {SCHEMA_VERSION}; "
                    f"rebuild the index from its documents with `{REBUILD}` (or install a "
                    "release whose index was built by this version)"
                )
            index = cls(db, path, readonly=readonly)
        except apsw.Error as e:
            db.close()
            raise StoreError(f"{path} is not a readable RAG index ({e}); rebuild it") from e
        except StoreError:
            db.close()
            raise
        if expected is not None and (
            expected.sha256 != index.identity.sha256
            or expected.dimension != index.identity.dimension
        ):
            index.close()
            raise StoreError(
                f"{path} was built with embedding model {index.identity.name} "
                f"(sha256 {index.identity.sha256[:12]}, {index.identity.dimension}-d) but the "
                f"active one is {expected.name} (sha256 {expected.sha256[:12]}, "
                f"{expected.dimension}-d); an index is only valid with its own embedding model"
            )
        return index

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RagIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _sql_errors(self, action: str) -> Iterator[None]:
        apsw, _ = _apsw()
        try:
            yield
        except apsw.CorruptError as e:
            raise StoreError(f"{self.path} is corrupted ({e}) while {action}; rebuild it") from e
        except apsw.ReadOnlyError as e:
            raise StoreError(f"{self.path} is read-only; cannot {action}") from e
        except apsw.FullError as e:
            raise StoreError(f"disk full while {action}; nothing was changed") from e
        except apsw.Error as e:
            raise StoreError(f"{self.path}: {action} failed: {e}") from e

    # --- documents ----------------------------------------------------------------------

    def document(self, key: str) -> DocumentRecord | None:
        with self._lock, self._sql_errors("reading a document"):
            row = self._db.execute(
                "SELECT d.key, d.title, d.media_type, d.content_sha256, d.metadata, "
                "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id) "
                "FROM documents d WHERE d.key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return DocumentRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])

    def documents(self) -> list[DocumentRecord]:
        with self._lock, self._sql_errors("listing documents"):
            keys = [r[0] for r in self._db.execute("SELECT key FROM documents ORDER BY key")]
        return [d for k in keys if (d := self.document(k)) is not None]

    def document_text(self, key: str) -> str | None:
        with self._lock, self._sql_errors("reading a document"):
            row = self._db.execute("SELECT text FROM documents WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def key_with_content(self, content_sha256: str, *, other_than: str) -> str | None:
        with self._lock, self._sql_errors("looking up duplicates"):
            row = self._db.execute(
                "SELECT key FROM documents WHERE content_sha256 = ? AND key != ? LIMIT 1",
                (content_sha256, other_than),
            ).fetchone()
        return None if row is None else str(row[0])

    def minhash_signatures(self, *, other_than: str) -> tuple[list[str], npt.NDArray[np.uint64]]:
        with self._lock, self._sql_errors("reading MinHash signatures"):
            rows = self._db.execute(
                "SELECT key, minhash FROM documents WHERE key != ?", (other_than,)
            ).fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.uint64)
        sigs = np.stack([np.frombuffer(r[1], dtype=np.uint64) for r in rows])
        return [str(r[0]) for r in rows], sigs

    def chunk_embeddings(self, key: str) -> dict[str, Vector]:
        """Embedded text (title, heading, chunk) -> embedding of a document's current
        chunks and of their sentences (to skip re-embedding them on a re-ingest).
        """
        with self._lock, self._sql_errors("reading chunks"):
            rows = self._db.execute(
                "SELECT c.id, d.title, c.context, c.text, c.embedding FROM chunks c "
                "JOIN documents d ON d.id = c.document_id WHERE d.key = ?",
                (key,),
            ).fetchall()
            known = {
                with_context(Chunk(0, 0, 0, str(t), str(ctx)), str(title)): np.frombuffer(
                    e, dtype=np.float32
                )
                for _, title, ctx, t, e in rows
            }
            texts = {int(r[0]): str(r[3]) for r in rows}
            for chunk_id, start, end, e in self._db.execute(
                "SELECT s.chunk_id, s.start, s.end, s.embedding FROM sentences s JOIN chunks c "
                "ON c.id = s.chunk_id JOIN documents d ON d.id = c.document_id WHERE d.key = ?",
                (key,),
            ).fetchall():
                known[texts[int(chunk_id)][start:end]] = np.frombuffer(e, dtype=np.float32)
        return known

    def put_document(
        self,
        *,
        key: str,
        title: str,
        media_type: str,
        text: str,
        content_sha256: str,
        metadata: Mapping[str, FilterValue],
        minhash: npt.NDArray[np.uint64],
        chunks: Sequence[Chunk],
        embeddings: Vector,
        sentences: Sequence[SentenceVectors] | None = None,
        now: float | None = None,
    ) -> None:
        """Insert or replace one document and all its chunks in a single transaction.

        ``sentences`` holds, per chunk, its quotable sentences and their embeddings.
        """
        if embeddings.shape != (len(chunks), self.identity.dimension):
            raise StoreError(
                f"got {embeddings.shape} embeddings for {len(chunks)} chunks of "
                f"{self.identity.dimension}-d; nothing was changed"
            )
        sentences = sentences if sentences is not None else []
        if sentences and len(sentences) != len(chunks):
            raise StoreError(f"got sentences for {len(sentences)} of {len(chunks)} chunks")
        for sv in sentences:
            if sv.vectors.shape != (len(sv.spans), self.identity.dimension):
                raise StoreError(
                    f"got {sv.vectors.shape} sentence embeddings for {len(sv.spans)} "
                    "sentences; nothing was changed"
                )
        if not np.isfinite(embeddings).all() or not all(
            np.isfinite(sv.vectors).all() for sv in sentences
        ):
            raise StoreError("the embedding model returned NaN or infinite values")
        for c in chunks:
            if text[c.start : c.end] != c.text:
                raise StoreError(f"chunk {c.ordinal} of {key} does not match its span")
        meta_json = json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False)
        with self._lock, self._sql_errors(f"storing {key}"), self._db:
            self._delete(key)
            self._db.execute(
                "INSERT INTO documents(key, title, media_type, content_sha256, text, metadata, "
                "minhash, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    title,
                    media_type,
                    content_sha256,
                    text,
                    meta_json,
                    minhash.astype(np.uint64).tobytes(),
                    time.time() if now is None else now,
                ),
            )
            doc_id = self._db.last_insert_rowid()
            for n, (c, vec) in enumerate(zip(chunks, embeddings, strict=True)):
                blob = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
                self._db.execute(
                    "INSERT INTO chunks(document_id, ordinal, start, end, text, context, "
                    "embedding) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, c.ordinal, c.start, c.end, c.text, c.context, blob),
                )
                chunk_id = self._db.last_insert_rowid()
                self._db.execute(
                    "INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)",
                    (chunk_id, with_context(c, title)),
                )
                if sentences:
                    self._db.executemany(
                        "INSERT INTO sentences(chunk_id, start, end, embedding) "
                        "VALUES (?, ?, ?, ?)",
                        [
                            (chunk_id, a, b, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                            for (a, b), v in zip(
                                sentences[n].spans, sentences[n].vectors, strict=True
                            )
                        ],
                    )
                self._db.execute(
                    "INSERT INTO chunks_bits(rowid, embedding) VALUES (?, vec_quantize_binary(?))",
                    (chunk_id, blob),
                )
        self._cache = None
        self._df = (-1, {})

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group many writes into one transaction (each still its own savepoint): for
        bulk builds into a file that is renamed into place only when complete.
        """
        with self._lock, self._sql_errors("writing a batch"), self._db:
            yield

    def delete_document(self, key: str) -> bool:
        with self._lock, self._sql_errors(f"deleting {key}"), self._db:
            found = self._delete(key)
        self._cache = None
        self._df = (-1, {})
        return found

    def _delete(self, key: str) -> bool:
        row = self._db.execute("SELECT id FROM documents WHERE key = ?", (key,)).fetchone()
        if row is None:
            return False
        ids = [r[0] for r in self._db.execute("SELECT id FROM chunks WHERE document_id = ?", row)]
        for chunk_id in ids:
            self._db.execute("DELETE FROM chunks_fts WHERE rowid = ?", (chunk_id,))
            self._db.execute("DELETE FROM chunks_bits WHERE rowid = ?", (chunk_id,))
            self._db.execute("DELETE FROM sentences WHERE chunk_id = ?", (chunk_id,))
        self._db.execute("DELETE FROM chunks WHERE document_id = ?", row)
        self._db.execute("DELETE FROM documents WHERE id = ?", row)
        return True

    def counts(self) -> dict[str, int]:
        with self._lock, self._sql_errors("counting"):
            (docs,) = self._db.execute("SELECT count(*) FROM documents").fetchone()
            (chunks,) = self._db.execute("SELECT count(*) FROM chunks").fetchone()
        return {"documents": int(docs), "chunks": int(chunks)}

    # --- search -------------------------------------------------------------------------

    def _filter_sql(self, filters: Mapping[str, FilterValue] | None) -> tuple[str, list[Any]]:
        if not filters:
            return "", []
        clauses, params = [], []
        for key, value in sorted(filters.items()):
            if not _FILTER_KEY.match(key):
                raise BadRequestError(
                    f"filter key {key!r} is invalid: use 1-64 letters, digits, '_', '.', '-'"
                )
            if not isinstance(value, str | int | float | bool):
                raise BadRequestError(f"filter {key!r} must be a string, number or boolean")
            if key == "document":
                clauses.append("d.key = ?")
                params.append(value)
            else:
                clauses.append(f"json_extract(d.metadata, '$.\"{key}\"') = ?")
                params.append(int(value) if isinstance(value, bool) else value)
        return " AND " + " AND ".join(clauses), params

    def _bit_cache(self) -> _BitCache:
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        cache = self._cache
        if cache is not None and cache.data_version == version:
            return cache
        rows = self._db.execute("SELECT rowid, embedding FROM chunks_bits").fetchall()
        words = self.identity.dimension // 64
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        bits = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint64).reshape(-1, words)
        # word-major, so the Hamming scan runs over contiguous rows (13x faster at 100k
        # chunks than popcounting the chunk-major matrix and summing across its rows)
        self._cache = _BitCache(version, ids, np.ascontiguousarray(bits.T))
        return self._cache

    def _allowed(self, filters: Mapping[str, FilterValue] | None) -> npt.NDArray[np.int64] | None:
        if not filters:
            return None
        where, params = self._filter_sql(filters)
        rows = self._db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE 1" + where,
            params,
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def _float_vectors(self, ids: Sequence[int]) -> tuple[list[int], Vector]:
        if not ids:
            return [], np.zeros((0, self.identity.dimension), dtype=np.float32)
        id_list = ",".join(str(int(i)) for i in ids)
        rows = self._db.execute(
            f"SELECT id, embedding FROM chunks WHERE id IN ({id_list})"
        ).fetchall()
        got = [int(r[0]) for r in rows]
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return got, matrix.reshape(len(rows), self.identity.dimension)

    def vector_search(
        self,
        query: Vector,
        k: int,
        *,
        candidates: int = 400,
        filters: Mapping[str, FilterValue] | None = None,
    ) -> list[tuple[int, float]]:
        """Top-``k`` chunks by cosine: Hamming-distance candidates, exact float re-rank."""
        q = _unit(query, self.identity.dimension)
        with self._lock, self._sql_errors("searching vectors"):
            cache = self._bit_cache()
            if len(cache.ids) == 0:
                return []
            qbits = np.packbits(q > 0, bitorder="little").view(np.uint64)
            distance = np.zeros(len(cache.ids), dtype=np.int32)
            for word, column in zip(qbits, cache.columns, strict=True):
                distance += np.bitwise_count(column ^ word)
            allowed = self._allowed(filters)
            if allowed is not None:
                distance[~np.isin(cache.ids, allowed)] = np.iinfo(np.int32).max
                pool = min(len(allowed), len(distance))
            else:
                pool = len(distance)
            if pool == 0:
                return []
            take = min(candidates, pool)
            picked = np.argpartition(distance, take - 1)[:take] if take < pool else None
            if picked is None:
                picked = np.flatnonzero(distance < np.iinfo(np.int32).max)
            ids, matrix = self._float_vectors(cache.ids[picked].tolist())
        scores = matrix @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in order]

    def exact_vector_search(self, query: Vector, k: int) -> list[tuple[int, float]]:
        """Top-``k`` by exact cosine over every stored float vector (the recall reference)."""
        q = _unit(query, self.identity.dimension)
        with self._lock, self._sql_errors("searching vectors"):
            rows = self._db.execute("SELECT id, embedding FROM chunks").fetchall()
        if not rows:
            return []
        ids = [int(r[0]) for r in rows]
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        scores = matrix.reshape(len(rows), -1) @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in order]

    def lexical_search(
        self,
        terms: Sequence[str],
        k: int,
        *,
        filters: Mapping[str, FilterValue] | None = None,
        max_postings: int = 2_000,
    ) -> list[int]:
        """Top-``k`` chunk ids by BM25 over any of ``terms`` (already split into words).

        Terms found in more than ``max_postings`` chunks (and more than a tenth of the
        index) are left out: their BM25 weight is small, and scanning their postings is
        what makes full-text search slow on a large index (at 100k chunks, a cap of
        10,000 gave hybrid queries a p95 of 27 ms; 2,000 gives 12 ms). Indexes under
        10,000 chunks are unaffected (their cap is 1,000).
        """
        words = [t for t in terms if t and '"' not in t]
        with self._lock, self._sql_errors("searching text"):
            cache = self._bit_cache()
            total = len(cache.ids)
            cap = min(max_postings, max(1000, total // 10))
            if self._df[0] != cache.data_version:
                self._df = (cache.data_version, {})
            counts = self._df[1]
            kept = []
            for t in words:
                df = counts.get((t, cap))
                if df is None:
                    (df,) = self._db.execute(
                        "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts "
                        "MATCH ? LIMIT ?)",
                        (f'"{t}"', cap + 1),
                    ).fetchone()
                    if len(counts) < 100_000:
                        counts[(t, cap)] = int(df)
                if 0 < df <= cap:
                    kept.append(t)
            if not kept:
                return []
            match = " OR ".join(f'"{t}"' for t in kept)
            where, params = self._filter_sql(filters)
            sql = (
                "SELECT f.rowid FROM chunks_fts f"
                + (" JOIN chunks c ON c.id = f.rowid JOIN documents d ON d.id = c.document_id")
                * bool(where)
                + " WHERE chunks_fts MATCH ?"
                + where
                + " ORDER BY bm25(chunks_fts) LIMIT ?"
            )
            return [int(r[0]) for r in self._db.execute(sql, [match, *params, k])]

    def unknown_terms(self, terms: Sequence[str]) -> list[str]:
        """The terms that occur in no chunk at all (compared after FTS5's stemming)."""
        missing = []
        with self._lock, self._sql_errors("searching text"):
            for t in terms:
                if t and '"' not in t:
                    hit = self._db.execute(
                        "SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT 1", (f'"{t}"',)
                    ).fetchone()
                    if hit is None:
                        missing.append(t)
        return missing

    def similarities(self, query: Vector, ids: Sequence[int]) -> dict[int, float]:
        q = _unit(query, self.identity.dimension)
        with self._lock, self._sql_errors("reading vectors"):
            got, matrix = self._float_vectors(ids)
        return dict(zip(got, (matrix @ q).tolist(), strict=True))

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        id_list = ",".join(str(int(i)) for i in ids)
        with self._lock, self._sql_errors("reading chunks"):
            rows = self._db.execute(
                "SELECT c.id, d.key, d.title, c.ordinal, c.start, c.end, c.text, c.context "
                f"FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({id_list})"
            ).fetchall()
        return {int(r[0]): StoredChunk(*r) for r in rows}

    def sentence_vectors(self, ids: Sequence[int]) -> dict[int, SentenceVectors]:
        """The stored sentence spans and embeddings of the chunks ``ids``."""
        if not ids:
            return {}
        id_list = ",".join(str(int(i)) for i in ids)
        with self._lock, self._sql_errors("reading sentences"):
            rows = self._db.execute(
                "SELECT chunk_id, start, end, embedding FROM sentences "
                f"WHERE chunk_id IN ({id_list}) ORDER BY chunk_id, start"
            ).fetchall()
        grouped: dict[int, list[tuple[int, int, bytes]]] = {}
        for chunk_id, start, end, blob in rows:
            grouped.setdefault(int(chunk_id), []).append((int(start), int(end), blob))
        dim = self.identity.dimension
        return {
            chunk_id: SentenceVectors(
                [(a, b) for a, b, _ in got],
                np.frombuffer(b"".join(e for _, _, e in got), dtype=np.float32).reshape(-1, dim),
            )
            for chunk_id, got in grouped.items()
        }


def _unit(vector: Vector | Sequence[float], dimension: int) -> Vector:
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    if q.shape != (dimension,) or not np.isfinite(q).all():
        raise StoreError(f"query vector must be {dimension} finite numbers, got {q.shape}")
    norm = float(np.linalg.norm(q))
    return q / norm if norm > 0 else q


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError as e:
        raise StoreError(f"no RAG index at {path}; build or ingest one first") from e
    except OSError as e:
        raise StoreError(f"cannot read the RAG index {path}: {e}") from e
    if header != _SQLITE_MAGIC:
        raise StoreError(
            f"{path} is not an SQLite database (corrupted or a wrong file); reinstall the "
            "release or rebuild the index with `python -m edge_agent.rag build-index`"
        )


def read_identity(path: Path) -> EmbeddingIdentity:
    """The embedding model an index file was built with (opens it read-only)."""
    with RagIndex.open(path, readonly=True) as index:
        return index.identity
