"""RAG retrieval at 10k / 100k (/ 1M) chunks of 384-d vectors, beside its peers, same run.

For each size, on the same random-but-clustered unit vectors (clusters of ~100, cosine to
the cluster centre ~0.78) and synthetic chunk texts (Zipf-distributed words):

- ``ours_vector``: ``RagIndex.vector_search`` - Hamming distance over sign bits held in
  memory, top 400 candidates re-ranked by exact float cosine read from SQLite;
- ``ours_hybrid``: ``RagEngine.retrieve`` in ``hybrid`` mode - FTS5 BM25 + the vector
  path + RRF + chunk fetch (the query vector is precomputed, so no model time is included);
- ``ours_hybrid_rerank``: the same in the shipped ``rerank`` mode - hybrid, then the
  second stage (``edge_agent.rag.rerank``) over the first 20 fused candidates;
- ``numpy_bruteforce``: ``X @ q`` + ``argpartition`` over an in-memory float32 matrix;
- ``faiss_flat_ip``: FAISS ``IndexFlatIP`` (exact), one query at a time;
- ``sqlite_vec_float``: sqlite-vec ``vec0`` float KNN (exact brute force in SQL).

Recall@10 is against exact search. Ingest chunks/s is for the storage path (documents,
chunks, FTS5, vec0 in one transaction per document); ``model_ingest`` adds the real
MiniLM GGUF embedding of chunk-sized texts. Writes ``benchmarks/results/rag_retrieval.json``.

    .venv/bin/python benchmarks/rag_retrieval.py [--sizes 10000 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.rag import EmbeddingIdentity, RagEngine, RagIndex, RetrievalSettings
from edge_agent.rag.chunking import Chunk
from edge_agent.rag.dedupe import content_sha256, minhash_signature
from edge_agent.rag.engine import RetrievalMode

ROOT = Path(__file__).resolve().parents[1]

DIM = 384
K = 10
CHUNKS_PER_DOC = 10
WORDS_PER_CHUNK = 40
VOCAB = 20_000
RESULT = ROOT / "benchmarks" / "results" / "rag_retrieval.json"


def clustered(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * (0.8 / np.sqrt(DIM))
    x = centers[rng.integers(0, len(centers), n)] + noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class PrecomputedEmbedder:
    """Returns the benchmark's query vectors, so timings exclude model inference."""

    def __init__(self, identity: EmbeddingIdentity, vectors: dict[str, np.ndarray]) -> None:
        self.identity = identity
        self._vectors = vectors

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._vectors[t].tolist() for t in texts]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(samples_ms, 50)), 3),
        "p95_ms": round(float(np.percentile(samples_ms, 95)), 3),
    }


def timed(fn: Callable[[int], list[int]], n: int) -> tuple[list[float], list[list[int]]]:
    times, results = [], []
    for i in range(n):
        t = time.perf_counter()
        results.append(fn(i))
        times.append((time.perf_counter() - t) * 1000)
    return times, results


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return round(
        float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)])), 4
    )


def _asker(engine: RagEngine, questions: list[str]) -> Callable[[int], list[int]]:
    return lambda i: [s.chunk_id for s in engine.retrieve(questions[i], k=K)]


def run_size(n: int, n_queries: int, workdir: Path, with_sqlite_vec: bool) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    centers = rng.standard_normal((max(n // 100, 10), DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = clustered(rng, n, centers)
    queries = clustered(rng, n_queries, centers)
    ranks = np.arange(1, VOCAB + 1)
    p = 1 / ranks
    p /= p.sum()
    words = rng.choice(VOCAB, size=(n, WORDS_PER_CHUNK), p=p)

    identity = EmbeddingIdentity("synthetic-384", "f" * 64, DIM)
    path = workdir / f"rag-{n}.sqlite"
    path.unlink(missing_ok=True)
    index = RagIndex.create(path, identity)
    started = time.perf_counter()
    batch = index.batch()
    batch.__enter__()  # one transaction, as `build-index` does
    for d in range(0, n, CHUNKS_PER_DOC):
        texts = [
            " ".join(f"w{w}" for w in words[i]) + "." for i in range(d, min(d + CHUNKS_PER_DOC, n))
        ]
        doc = "\n\n".join(texts)
        chunks, pos = [], 0
        for j, t in enumerate(texts):
            chunks.append(Chunk(j, pos, pos + len(t), t))
            pos += len(t) + 2
        index.put_document(
            key=f"doc-{d}",
            title=f"doc {d}",
            media_type="text/plain",
            text=doc,
            content_sha256=content_sha256(doc),
            metadata={"shard": d % 7},
            minhash=minhash_signature(doc),
            chunks=chunks,
            embeddings=x[d : d + len(texts)],
        )
    batch.__exit__(None, None, None)
    ingest_s = time.perf_counter() - started
    chunk_ids = np.array(
        [r[0] for r in index._db.execute("SELECT id FROM chunks ORDER BY id")], dtype=np.int64
    )

    exact = []
    for q in queries:
        s = x @ q
        top = np.argpartition(-s, K)[:K]
        exact.append(chunk_ids[top[np.argsort(-s[top])]].tolist())

    out: dict[str, Any] = {
        "chunks": n,
        "ingest_chunks_per_s": round(n / ingest_s, 1),
        "index_mb": round(path.stat().st_size / 1e6, 1),
        "methods": {},
    }
    index.vector_search(queries[0], K)  # load the bit cache (startup cost, reported apart)
    t = time.perf_counter()
    index._cache = None
    index.vector_search(queries[0], K)
    out["bit_cache_load_ms"] = round((time.perf_counter() - t) * 1000, 1)

    ms, found = timed(lambda i: [c for c, _ in index.vector_search(queries[i], K)], n_queries)
    out["methods"]["ours_vector"] = {**percentiles(ms), "recall@10": recall(found, exact)}

    question = {
        f"q{i} w{words[i][0]} w{words[i][1]} w{words[i][2]}": queries[i] for i in range(n_queries)
    }
    texts = list(question)
    modes: list[tuple[str, RetrievalMode]] = [
        ("ours_hybrid", "hybrid"),
        ("ours_hybrid_rerank", "rerank"),
    ]
    for name, mode in modes:
        engine = RagEngine(
            index, PrecomputedEmbedder(identity, question), settings=RetrievalSettings(mode=mode)
        )
        ms, found = timed(_asker(engine, texts), n_queries)
        out["methods"][name] = percentiles(ms)

    xs = np.ascontiguousarray(x)

    def numpy_search(i: int) -> list[int]:
        s = xs @ queries[i]
        top = np.argpartition(-s, K)[:K]
        return chunk_ids[top[np.argsort(-s[top])]].tolist()

    ms, found = timed(numpy_search, n_queries)
    out["methods"]["numpy_bruteforce"] = {**percentiles(ms), "recall@10": recall(found, exact)}

    try:
        import faiss

        flat = faiss.IndexFlatIP(DIM)
        flat.add(xs)
        ms, found = timed(
            lambda i: chunk_ids[flat.search(queries[i : i + 1], K)[1][0]].tolist(), n_queries
        )
        out["methods"]["faiss_flat_ip"] = {**percentiles(ms), "recall@10": recall(found, exact)}
    except ImportError:
        out["methods"]["faiss_flat_ip"] = {"skipped": "faiss-cpu is not installed"}

    if with_sqlite_vec:
        import apsw
        import sqlite_vec

        db = apsw.Connection(str(workdir / f"vec-{n}.sqlite"))
        db.enable_load_extension(True)
        db.load_extension(sqlite_vec.loadable_path())
        db.execute("DROP TABLE IF EXISTS v")
        db.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIM}])")
        with db:
            db.executemany(
                "INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                ((int(chunk_ids[i]), xs[i].tobytes()) for i in range(n)),
            )
        nq = min(n_queries, 50)
        ms, found = timed(
            lambda i: [
                r[0]
                for r in db.execute(
                    "SELECT rowid FROM v WHERE embedding MATCH ? AND k = ?",
                    (queries[i].tobytes(), K),
                )
            ],
            nq,
        )
        out["methods"]["sqlite_vec_float"] = {
            **percentiles(ms),
            "recall@10": recall(found, exact[:nq]),
            "queries": nq,
        }
        db.close()
        (workdir / f"vec-{n}.sqlite").unlink()

    ours = out["methods"]["ours_vector"]["p50_ms"]
    out["ratios_p50_vs_ours_vector"] = {
        name: round(m["p50_ms"] / ours, 2)
        for name, m in out["methods"].items()
        if "p50_ms" in m and name != "ours_vector"
    }
    index.close()
    path.unlink()
    return out


def model_ingest(n_chunks: int = 128) -> dict[str, Any]:
    """Chunks/s through the real MiniLM GGUF (llama.cpp) plus the storage path."""
    try:
        from converters.minilm_gguf import cached_gguf
        from edge_agent.rag.llama import LlamaEmbedder
    except ImportError as e:
        return {"skipped": str(e)}
    embedder = LlamaEmbedder(cached_gguf())
    rng = np.random.default_rng(1)
    words = [
        "gateway",
        "sensor",
        "battery",
        "depot",
        "truck",
        "cold",
        "room",
        "update",
        "release",
        "signal",
        "reading",
        "alarm",
        "driver",
        "shift",
        "route",
        "pallet",
    ]
    docs = [" ".join(rng.choice(words, 90)) + "." for _ in range(n_chunks)]
    with tempfile.TemporaryDirectory() as tmp:
        index = RagIndex.create(Path(tmp) / "m.sqlite", embedder.identity)
        engine = RagEngine(index, embedder)
        engine.ingest_text("warmup", "warm up the model.")
        t = time.perf_counter()
        chunks = sum(engine.ingest_text(f"d{i}", d).chunks for i, d in enumerate(docs))
        seconds = time.perf_counter() - t
        index.close()
    embedder.close()
    return {"chunks": chunks, "words_per_chunk": 90, "chunks_per_s": round(chunks / seconds, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-sqlite-vec", action="store_true", help="skip sqlite-vec float KNN")
    parser.add_argument("--no-model", action="store_true", help="skip the MiniLM ingest run")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "benchmark": "rag_retrieval",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
        },
        "dimension": DIM,
        "k": K,
        "queries": args.queries,
        "sizes": [],
    }
    if not args.no_model:
        # First: FAISS's OpenMP threads keep spinning after a search and would starve it.
        report["model_ingest"] = model_ingest()
        print(json.dumps(report["model_ingest"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            print(f"size {n} ...", flush=True)
            result = run_size(n, args.queries, Path(tmp), not args.no_sqlite_vec and n <= 200_000)
            print(json.dumps(result, indent=2), flush=True)
            report["sizes"].append(result)
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
