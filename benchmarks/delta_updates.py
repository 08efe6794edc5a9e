"""Delta updates versus full downloads: bytes on the wire and install time, same run.

Cases (base -> new):

- ``rag-{1,10,50}pct-updated-in-place`` and ``-rebuilt``: a RAG index (the real SQLite
  format, built by ``RagIndex``/``RagEngine.ingest_text``) over text nobody here wrote -
  the Python standard library's own modules, one document each - with 1%, 10% or 50% of
  its documents edited (a line inserted in the middle of each, as a doc fix would): once
  with the changed documents re-ingested into a copy of the previous index, once rebuilt
  from nothing.
  Vectors come from a deterministic hash embedder (same size and entropy as MiniLM's
  float32 output): this benchmark counts bytes, not retrieval quality.
- ``efficientnet-lite0-head``: the EfficientNet-Lite0 FP32 ONNX model with only its
  classifier head (the last Gemm's weight and bias: 1280 x 1000 + 1000 floats) retrained
  (re-drawn), every other tensor unchanged.
- ``gguf-requantized``: SmolLM2-135M Q4_1 versus the same model re-quantized to Q4_0
  (expected: no gain; every tensor's bytes change).

For each: the control plane's CPU time to prepare the new artifact (chunk + hash + encode
its manifest: thread CPU seconds), then on a device store holding the base, over loopback
HTTP with Range (a local server that counts the bytes it sends): a full download
(``ArtifactDownloader(delta=False)``), a first delta (the base's chunk list computed on the
device), and a delta with the base's chunk list cached in ``state.db``. Each timed step
ends with the blob admitted (whole-artifact sha256 checked). Writes
``benchmarks/results/delta_updates.json``.

    .venv/bin/python benchmarks/delta_updates.py [--runs 3] [--docs 400] [--skip-models]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx
import numpy as np

from control_plane.artifacts.chunks import prepare_chunks
from edge_agent.rag import EmbeddingIdentity, RagEngine, RagIndex
from edge_agent.rag.chunking import ChunkingPolicy
from edge_agent.release import InstalledArtifact
from edge_agent.store import ReleaseStore
from edge_agent.updates.delta import DeltaDownloader
from edge_agent.updates.downloader import ArtifactDownloader
from protocol import TargetRef
from protocol.chunking import CHUNKS_CUSTOM_KEY

RESULT = ROOT / "benchmarks" / "results" / "delta_updates.json"
DIM = 384


class HashEmbedder:
    """Deterministic pseudo-embeddings: unit float32 vectors seeded by each text's sha256."""

    identity = EmbeddingIdentity("hash-embedder", "0" * 64, DIM)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append((v / np.linalg.norm(v)).tolist())
        return out


def stdlib_documents(count: int) -> list[tuple[str, str]]:
    """(key, text) of the first ``count`` standard-library modules with enough text."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(lib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= 2000:
            docs.append((path.name, text[:20_000]))
        if len(docs) == count:
            break
    return docs


def edit(text: str, seed: int) -> str:
    mid = len(text) // 2
    cut = text.rfind("\n", 0, mid) + 1
    note = f"# Revised in this release (change {seed}): the behaviour described above applies.\n"
    return text[:cut] + note + text[cut:]


def build_index(path: Path, docs: Sequence[tuple[str, str]]) -> None:
    with RagIndex.create(path, HashEmbedder.identity, ChunkingPolicy()) as index, index.batch():
        engine = RagEngine(index, HashEmbedder())  # type: ignore[arg-type]
        for key, text in docs:
            engine.ingest_text(key, text, title=key)


def rag_cases(work: Path, count: int) -> list[tuple[str, Path, Path]]:
    """Per share of documents edited: the previous index updated in place (the changed
    documents re-ingested into a copy of it), and the index rebuilt from nothing."""
    docs = stdlib_documents(count)
    base = work / "rag-base.sqlite"
    build_index(base, docs)
    cases = []
    for pct in (1, 10, 50):
        rng = random.Random(pct)
        changed = set(rng.sample(range(len(docs)), max(1, len(docs) * pct // 100)))
        new_docs = [(k, edit(t, i) if i in changed else t) for i, (k, t) in enumerate(docs)]
        updated = work / f"rag-{pct}pct-updated.sqlite"
        shutil.copyfile(base, updated)
        with RagIndex.open(updated, HashEmbedder.identity) as index:
            engine = RagEngine(index, HashEmbedder())  # type: ignore[arg-type]
            for i in sorted(changed):
                engine.ingest_text(new_docs[i][0], new_docs[i][1], title=new_docs[i][0])
        cases.append((f"rag-{pct}pct-updated-in-place", base, updated))
        rebuilt = work / f"rag-{pct}pct-rebuilt.sqlite"
        build_index(rebuilt, new_docs)
        cases.append((f"rag-{pct}pct-rebuilt", base, rebuilt))
    return cases


def head_retrained(source: Path, target: Path) -> Path:
    """A copy of an ONNX classifier whose last Gemm (weight, bias) is re-drawn."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    gemm = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    for name in gemm.input[1:]:
        if name in inits:
            old = numpy_helper.to_array(inits[name])
            new = (old + rng.standard_normal(old.shape).astype(old.dtype) * old.std()).astype(
                old.dtype
            )
            inits[name].CopyFrom(numpy_helper.from_array(new, name))
    onnx.save(model, str(target))
    return target


def model_cases(work: Path) -> list[tuple[str, Path, Path]]:
    from converters.sources import cache_root, smollm2_gguf

    cases = []
    effnet = cache_root() / "efficientnet-lite0" / "efficientnet-lite0-fp32.onnx"
    if effnet.is_file():
        cases.append(
            ("efficientnet-lite0-head", effnet, head_retrained(effnet, work / "effnet-head.onnx"))
        )
    else:
        print(f"skipping EfficientNet-Lite0: {effnet} is missing (python -m converters prepare)")
    gguf = smollm2_gguf()
    requant = work / "smollm2-q4_0.gguf"
    if _requantize(gguf, requant):
        cases.append(("gguf-requantized", gguf, requant))
    return cases


def _requantize(source: Path, target: Path) -> bool:
    """Q4_1 -> Q4_0 through llama.cpp's own quantizer (llama-cpp-python's binding)."""
    code = (
        "import ctypes, llama_cpp, sys\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0\n"
        "p.allow_requantize = True\n"
        "p.nthread = 2\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),"
        " ctypes.byref(p)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(source), str(target)], capture_output=True, text=True
    )
    if done.returncode != 0 or not target.is_file():
        print(f"skipping the re-quantized GGUF: {done.stderr[-500:]}")
        return False
    return True


class CountingServer:
    """Serves files with Range support and counts the body bytes it sends."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.sent = 0
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                data = server.files.get(self.path.removeprefix("/t/"))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end, status = 0, len(data), 200
                asked = self.headers.get("Range")
                if asked and asked.startswith("bytes="):
                    a, _, b = asked.removeprefix("bytes=").partition("-")
                    start, end, status = int(a), (int(b) + 1 if b else len(data)), 206
                body = data[start:end]
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                server.sent += len(body)
                server.requests += 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/t"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Bases(DeltaDownloader):
    """The delta downloader with the base given (no installed release around it)."""

    base: InstalledArtifact

    def bases(self, target: TargetRef) -> list[InstalledArtifact]:
        return [self.base]


def _store_with(state: Path, base: Path) -> tuple[ReleaseStore, InstalledArtifact]:
    shutil.rmtree(state, ignore_errors=True)
    store = ReleaseStore.open(state)
    sha = hashlib.sha256(base.read_bytes()).hexdigest()
    shutil.copyfile(base, store.partial_path(sha))
    store.admit_partial(sha, base.stat().st_size)
    artifact = InstalledArtifact(
        name="base",
        kind="config",
        format="json",
        sha256=sha,
        length=base.stat().st_size,
        path=store.blob_path(sha),
    )
    return store, artifact


def run_case(name: str, base: Path, new: Path, work: Path, runs: int) -> dict[str, Any]:
    prepared = prepare_chunks(new)
    data = new.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    target = TargetRef.model_validate(
        {
            "name": name,
            "path": f"{sha}/{new.name}",
            "sha256": sha,
            "length": len(data),
            "kind": "config",
            "format": "json",
        }
    )
    custom = {CHUNKS_CUSTOM_KEY: prepared.custom(target.path)}
    server = CountingServer(
        {target.path: data, prepared.custom(target.path)["path"]: prepared.content}
    )
    cp_cpu: list[float] = []
    timings: dict[str, list[float]] = {"full": [], "delta_first": [], "delta_cached": []}
    sent: dict[str, int] = {}
    try:
        for _ in range(runs):
            cp_cpu.append(prepare_chunks(new).cpu_seconds)
            for mode in ("full", "delta_first", "delta_cached"):
                store, artifact = _store_with(work / "state", base)
                http = httpx.Client(timeout=120)
                downloader = ArtifactDownloader(
                    http, targets_url=server.url, store=store, delta=mode != "full"
                )
                if downloader._delta is not None:
                    delta = _Bases(
                        http,
                        targets_url=server.url,
                        store=store,
                        stop=threading.Event(),
                        checkpoint=lambda step: None,
                    )
                    delta.base = artifact
                    downloader._delta = delta
                    if mode == "delta_cached":
                        delta.local_chunks(artifact, prepared_params(prepared))
                before = server.sent
                started = time.perf_counter()
                blob = downloader.fetch(target, custom if mode != "full" else None)
                timings[mode].append(time.perf_counter() - started)
                sent[mode] = server.sent - before
                assert blob.read_bytes() == data, "the rebuilt artifact differs"
                why = downloader.last_delta.get(name)
                if mode != "full" and isinstance(why, str):
                    print(f"  {name}: delta fell back to a full download: {why}")
                http.close()
                store.close()
    finally:
        server.close()
    full = sent["full"]
    return {
        "case": name,
        "base_bytes": base.stat().st_size,
        "new_bytes": len(data),
        "manifest_bytes": len(prepared.content),
        "chunks": prepared.chunk_count,
        "cp_prepare_cpu_s_p50": statistics.median(cp_cpu),
        "full_download_bytes": full,
        "delta_download_bytes": sent["delta_cached"],
        "delta_fraction_of_full": sent["delta_cached"] / full,
        "install_s_p50": {mode: statistics.median(t) for mode, t in timings.items()},
        "install_s_max": {mode: max(t) for mode, t in timings.items()},
        "delta_to_full_time_ratio_p50": statistics.median(timings["delta_cached"])
        / statistics.median(timings["full"]),
    }


def prepared_params(prepared: Any) -> Any:
    from protocol.chunking import decode_manifest

    return decode_manifest(prepared.content).params


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs", type=int, default=400, help="documents in the RAG index")
    parser.add_argument("--skip-models", action="store_true", help="only the RAG cases")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="delta-bench-") as tmp:
        work = Path(tmp)
        cases = rag_cases(work, args.docs)
        if not args.skip_models:
            cases += model_cases(work)
        for name, base, new in cases:
            result = run_case(name, base, new, work, args.runs)
            results.append(result)
            print(
                f"{name}: {result['new_bytes'] / 1e6:.1f} MB; delta downloads"
                f" {result['delta_download_bytes'] / 1e6:.2f} MB"
                f" ({100 * result['delta_fraction_of_full']:.1f}% of full);"
                f" install p50 full {result['install_s_p50']['full']:.2f} s,"
                f" delta {result['install_s_p50']['delta_cached']:.2f} s"
                f" (first, chunking the base: {result['install_s_p50']['delta_first']:.2f} s);"
                f" control-plane prepare {result['cp_prepare_cpu_s_p50']:.2f} s CPU"
            )
    body = {
        "benchmark": "delta_updates",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "runs": args.runs,
        "rag_documents": args.docs,
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
