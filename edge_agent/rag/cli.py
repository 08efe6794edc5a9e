"""``python -m edge_agent.rag``: ingest files, build an index centrally, ask a question.

python -m edge_agent.rag ingest PATH... --index FILE
python -m edge_agent.rag build-index DOCS_DIR --out FILE
python -m edge_agent.rag query "question" --index FILE [--chat-model GGUF]
python -m edge_agent.rag info --index FILE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import AgentError
from edge_agent.rag.chunking import ChunkingPolicy
from edge_agent.rag.engine import IngestOutcome, RagEngine
from edge_agent.rag.index import RagIndex
from edge_agent.rag.llama import LlamaChat, LlamaEmbedder
from edge_agent.rag.loaders import MEDIA_TYPES


def _embedder(path: Path | None) -> LlamaEmbedder:
    if path is None:
        try:
            from converters.minilm_gguf import cached_gguf
        except ImportError as e:
            raise SystemExit("pass --embedding-model PATH (a sentence-embedding GGUF)") from e
        path = cached_gguf()
    return LlamaEmbedder(path)


def _files(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, root) pairs: directories are walked for the supported extensions."""
    out = []
    for p in paths:
        if p.is_dir():
            out += [(f, p) for f in sorted(p.rglob("*")) if f.suffix.lower() in MEDIA_TYPES]
        else:
            out.append((p, p.parent))
    return out


def _progress(done: int, total: int, key: str, result: IngestOutcome | Exception) -> None:
    if isinstance(result, Exception):
        line = f"error: {result}"
    else:
        line = result.status + (f" ({result.chunks} chunks)" if result.chunks else "")
        if result.duplicate_of:
            line += f" of {result.duplicate_of}"
    print(f"[{done}/{total}] {key}: {line}", flush=True)


def _ingest(engine: RagEngine, files: list[tuple[Path, Path]]) -> int:
    started = time.perf_counter()
    failures = 0
    for i, (f, root) in enumerate(files, start=1):
        for result in engine.ingest_paths([f], root=root):
            failures += isinstance(result, Exception)
            _progress(i, len(files), f.relative_to(root).as_posix(), result)
    counts = engine.index.counts()
    seconds = time.perf_counter() - started
    print(
        f"{counts['documents']} documents, {counts['chunks']} chunks in {engine.index.path} "
        f"({seconds:.1f} s, {failures} failed)"
    )
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.rag", description=__doc__)
    parser.add_argument("--embedding-model", type=Path, help="sentence-embedding GGUF")
    sub = parser.add_subparsers(dest="command", required=True)
    p_ingest = sub.add_parser("ingest", help="add or update files in an index (made if missing)")
    p_ingest.add_argument("paths", nargs="+", type=Path)
    p_ingest.add_argument("--index", type=Path, required=True)
    p_build = sub.add_parser("build-index", help="build a fresh index from a document folder")
    p_build.add_argument("docs", type=Path)
    p_build.add_argument("--out", type=Path, required=True)
    p_build.add_argument("--max-tokens", type=int, default=ChunkingPolicy().max_tokens)
    p_build.add_argument("--overlap-tokens", type=int, default=ChunkingPolicy().overlap_tokens)
    p_build.add_argument(
        "--chunking",
        choices=("structured", "window"),
        default=ChunkingPolicy().method,
        help="structured: the documents' own blocks and headings (default); window: "
        "fixed token windows with overlap",
    )
    p_build.add_argument("--force", action="store_true", help="replace an existing --out")
    p_query = sub.add_parser("query", help="answer a question with citations")
    p_query.add_argument("question")
    p_query.add_argument("--index", type=Path, required=True)
    p_query.add_argument("-k", type=int, default=5)
    p_query.add_argument("--chat-model", type=Path, help="chat GGUF (default: extractive)")
    p_info = sub.add_parser("info", help="show an index's embedding model and size")
    p_info.add_argument("--index", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        with RagIndex.open(args.index, readonly=True) as index:
            ident = index.identity
            print(
                json.dumps(
                    {
                        "embedding_model": ident.name,
                        "sha256": ident.sha256,
                        "dimension": ident.dimension,
                        **index.counts(),
                    }
                )
            )
        return 0
    embedder = _embedder(args.embedding_model)
    if args.command == "ingest":
        index = (
            RagIndex.open(args.index, embedder.identity)
            if args.index.exists()
            else RagIndex.create(args.index, embedder.identity)
        )
        with index:
            return _ingest(RagEngine(index, embedder), _files(args.paths))
    if args.command == "build-index":
        if not args.docs.is_dir():
            raise SystemExit(f"{args.docs} is not a directory")
        if args.out.exists() and not args.force:
            raise SystemExit(f"{args.out} exists; pass --force to replace it")
        partial = args.out.with_name(args.out.name + ".partial")
        partial.unlink(missing_ok=True)
        policy = ChunkingPolicy(args.max_tokens, args.overlap_tokens, args.chunking)
        try:
            with RagIndex.create(partial, embedder.identity, policy) as index, index.batch():
                status = _ingest(RagEngine(index, embedder), _files([args.docs]))
            if status:
                print(f"not writing {args.out}: some documents failed", file=sys.stderr)
            else:
                os.replace(partial, args.out)  # the old index stays intact until here
                print(f"built {args.out} (embedding model sha256 {embedder.identity.sha256})")
        finally:
            partial.unlink(missing_ok=True)
        return status
    chat = LlamaChat(args.chat_model) if args.chat_model else None
    with RagIndex.open(args.index, embedder.identity, readonly=True) as index:
        answer = RagEngine(index, embedder, chat).answer(args.question, k=args.k)
    print(
        json.dumps(
            {
                "answer": answer.answer,
                "abstained": answer.abstained,
                "reason": answer.reason,
                "citations": [c.__dict__ for c in answer.citations],
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0
