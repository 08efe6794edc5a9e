"""New versions of real artifacts, as a release manager would publish them: a classifier
with a retrained head, a RAG index rebuilt after a few documents changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def retrained_head(source: Path, target: Path, seed: int = 0) -> Path:
    """A copy of an ONNX classifier whose last Gemm/MatMul weights and bias are re-drawn
    (FP32 tensors, or the INT8 tensors behind a QDQ model's DequantizeLinear); every other
    tensor keeps its bytes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    head = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    rng = np.random.default_rng(seed)
    changed = 0
    for name in head.input[1:]:
        node = producers.get(name)
        if name not in inits and node is not None and node.op_type == "DequantizeLinear":
            name = node.input[0]  # the quantized tensor itself
        if name not in inits:
            continue
        old = numpy_helper.to_array(inits[name])
        if np.issubdtype(old.dtype, np.integer):
            info = np.iinfo(old.dtype)
            step = rng.integers(-3, 4, old.shape)
            new = np.clip(old.astype(np.int64) + step, info.min, info.max).astype(old.dtype)
        else:
            noise = rng.standard_normal(old.shape) * float(old.std() or 1.0) * 0.1
            new = (old + noise).astype(old.dtype)
        inits[name].CopyFrom(numpy_helper.from_array(new, inits[name].name))
        changed += 1
    if not changed:
        raise ValueError(f"{source}: found no classifier head tensor to retrain")
    onnx.save(model, str(target))
    return target


def rebuilt_index(
    embedding_model: Path, docs: Path, out: Path, edits: Mapping[str, str] | None = None
) -> Path:
    """``python -m edge_agent.rag build-index`` over a copy of ``docs`` in which each file
    named in ``edits`` got that text appended (a fresh build, as a release pipeline runs)."""
    work = out.with_suffix(".docs")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(docs, work)
    for name, text in (edits or {}).items():
        with (work / name).open("a", encoding="utf-8") as f:
            f.write("\n\n" + text + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.rag",
            "--embedding-model",
            str(embedding_model),
            "build-index",
            str(work),
            "--out",
            str(out),
            "--force",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out


def updated_index(embedding_model: Path, base: Path, out: Path, edited: Mapping[str, str]) -> Path:
    """A copy of the index ``base`` with each file named in ``edited`` (name -> its new
    text) re-ingested by ``python -m edge_agent.rag ingest``: the index updated in place,
    as a pipeline that keeps the previous release's index does (delta-friendly: only the
    pages of the changed documents change)."""
    shutil.copyfile(base, out)
    folder = out.with_suffix(".edited")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, text in edited.items():
        (folder / name).write_text(text, encoding="utf-8")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.rag",
            "--embedding-model",
            str(embedding_model),
            "ingest",
            *(str(folder / name) for name in edited),
            "--index",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out
