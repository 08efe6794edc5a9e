"""all-mpnet-base-v2 as int8 ONNX: is it fast enough at query time, and are its vectors kept?

    python -m evals.realdocs.mpnet_onnx [--out FILE] [--threads N]

The torch port's forward pass (:class:`evals.realdocs.mpnet.MPNetEncoder`: token ids and
attention mask in, unit-length mean-pooled 768-d vectors out) is exported once with
``torch.onnx.export`` (the TorchScript exporter, dynamic batch and length) into the model
folder of the cache, beside ``model.safetensors``; dynamic int8 copies are made from it
with ``onnxruntime.quantization.quantize_dynamic`` (``VARIANTS``: int8 and uint8 weights
as it quantizes by default, and int8 per channel with some or all FFN output projections
left in fp32). Tokenization and batching are the port's own: :class:`OnnxMPNet` only
replaces its forward pass.

On tuning texts only (pack 3's questions, all ``"split": "tune"``, and ``PASSAGES``
8-line windows of its documents), the report gives the cosine of each ONNX model's vectors
with the torch port's (min, p5, mean) and, per question, the overlap@5 of its nearest
passages under each model against under torch. Then every question is embedded alone,
with the torch port, each ONNX model and MiniLM as the agent ships it (llama.cpp,
:class:`edge_agent.rag.llama.LlamaEmbedder`), interleaved question by question with the
same thread count, ``ROUNDS`` times: p50/p95 in ms of each question's fastest round and
their ratios to MiniLM and to torch (the machine may be shared with other jobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evals.realdocs.harness import PACK3
from evals.realdocs.mpnet import MAX_TOKENS, MPNetEncoder, model_dir

if TYPE_CHECKING:
    import onnx
    import torch

EXPORT_VERSION = 1  # part of the cached file names: bump when the export changes
OPSET = 17
PASSAGES = 200
PASSAGE_LINES = 8
TOP_K = 5
WARMUP = 5
GAP_S = 0.1
ROUNDS = 3
INPUTS = ("ids", "mask")


# --- export ----------------------------------------------------------------------------


def _layer_norm_symbolic() -> Callable[..., Any]:
    from torch.onnx import symbolic_helper

    return symbolic_helper.parse_args("v", "v", "v", "v", "f", "b")(_layer_norm)


def _layer_norm(g: Any, x: Any, shape: Any, weight: Any, bias: Any, eps: float, _: bool) -> Any:
    """``aten::layer_norm`` over the last axis. The port passes ``(h.shape[-1],)``, which
    the tracer records as a computed value that the stock symbolic refuses; the port only
    ever normalizes the last axis, which is what ``axis=-1`` says."""
    return g.op("LayerNormalization", x, weight, bias, axis_i=-1, epsilon_f=eps)


def _traceable(encoder: MPNetEncoder) -> torch.nn.Module:
    """The port's ``_forward`` as a module whose buffers are its weights (so they export as
    initializers, which ``quantize_dynamic`` needs, not as constant nodes)."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, tensor in encoder.w.items():
                self.register_buffer(name.replace(".", "_"), tensor)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return encoder._forward(ids, mask)

    return Forward()


def _slice_buckets(model: onnx.ModelProto, traced: int) -> None:
    """Make the relative-position buckets follow the input's length.

    The port computes them in numpy, so the trace holds them as a constant for the traced
    length. A bucket depends only on the key position minus the query position, so the
    L x L table is the top-left block of the ``traced`` x ``traced`` one: tracing at the
    longest input and slicing that constant to the input's length is exact for every
    length up to it."""
    from onnx import helper, numpy_helper

    graph = model.graph
    found = [
        n
        for n in graph.node
        if n.op_type == "Constant" and list(n.attribute[0].t.dims) == [traced, traced]
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one {traced}x{traced} bucket constant, found {len(found)}")
    table = found[0].output[0]
    users = [n for n in graph.node if table in n.input]
    if [n.op_type for n in users] != ["Gather"]:
        raise RuntimeError(f"the bucket constant feeds {[n.op_type for n in users]}, not a Gather")

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        tensor = numpy_helper.from_array(np.array(values, np.int64), name)
        return helper.make_node("Constant", [], [name], value=tensor)

    edit = [
        helper.make_node("Shape", [INPUTS[0]], ["buckets_length"], start=1, end=2),
        helper.make_node("Concat", ["buckets_length", "buckets_length"], ["buckets_ends"], axis=0),
        const("buckets_starts", [0, 0]),
        const("buckets_axes", [0, 1]),
        helper.make_node(
            "Slice", [table, "buckets_starts", "buckets_ends", "buckets_axes"], ["buckets"]
        ),
    ]
    at = list(graph.node).index(users[0])
    for offset, node in enumerate(edit):
        graph.node.insert(at + offset, node)
    users[0].input[list(users[0].input).index(table)] = "buckets"


def export_fp32(encoder: MPNetEncoder, path: Path) -> None:
    """Trace the port at batch 2 and the longest length, with both axes dynamic."""
    import onnx
    import torch

    tmp = path.with_name(path.name + ".part")
    ids = torch.full((2, MAX_TOKENS), encoder.tokenizer.unk_id, dtype=torch.long)
    torch.onnx.register_custom_op_symbolic("aten::layer_norm", _layer_norm_symbolic(), OPSET)
    try:
        with warnings.catch_warnings():
            # the bucket table is the one value the trace fixes; _slice_buckets undoes it
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _traceable(encoder),
                (ids, torch.ones_like(ids)),
                str(tmp),
                input_names=list(INPUTS),
                output_names=["vectors"],
                dynamic_axes={
                    "ids": {0: "batch", 1: "length"},
                    "mask": {0: "batch", 1: "length"},
                    "vectors": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        _slice_buckets(model, MAX_TOKENS)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::layer_norm", OPSET)
        tmp.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ``quantize_dynamic`` setting. ``keep_down`` names the layers whose FFN output
    projection (``output.dense``, the one fed by GELU) stays fp32."""

    weight_type: str  # "QInt8" or "QUInt8"
    per_channel: bool = False
    keep_down: tuple[int, ...] = ()


LAYERS = tuple(range(12))  # all-mpnet-base-v2's
VARIANTS = {
    "qint8": Variant("QInt8"),
    "quint8": Variant("QUInt8"),
    # both plain settings lose the vectors (cosine ~0.7/0.8 with torch). Found while
    # writing this, on the first 10 questions and 20 passages here: of the six weight
    # matmuls of a layer, only the FFN output projection matters when left in fp32 (its
    # input, GELU's output, quantizes badly per tensor), and quantizing one layer's alone,
    # those of layers 6-10 cost the most
    "qint8-pc-down-fp32": Variant("QInt8", per_channel=True, keep_down=LAYERS),
    "qint8-pc-down6-10-fp32": Variant("QInt8", per_channel=True, keep_down=(6, 7, 8, 9, 10)),
}


def down_projections(fp32: Path, config: dict[str, Any]) -> list[str]:
    """The MatMul nodes of the FFN output projections, in layer order: the only ones whose
    weight is intermediate x hidden."""
    import onnx

    graph = onnx.load(str(fp32)).graph
    shape = [config["intermediate_size"], config["hidden_size"]]
    weights = {i.name for i in graph.initializer if list(i.dims) == shape}
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    if len(nodes) != config["num_hidden_layers"]:
        raise RuntimeError(f"found {len(nodes)} FFN output projections")
    return nodes


def quantize(fp32: Path, path: Path, variant: Variant, config: dict[str, Any]) -> None:
    """Dynamic int8: weights quantized once, activations per call (per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(path.name + ".part")
    down = down_projections(fp32, config) if variant.keep_down else []
    try:
        quantize_dynamic(
            fp32,
            tmp,
            weight_type=QuantType[variant.weight_type],
            per_channel=variant.per_channel,
            nodes_to_exclude=[down[n] for n in variant.keep_down],
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_models(encoder: MPNetEncoder, folder: Path) -> dict[str, Path]:
    """``{"fp32": path, <variant>: path, ...}`` beside the model, made only when missing."""
    paths = {
        kind: folder / f"mpnet-{kind}-opset{OPSET}-v{EXPORT_VERSION}.onnx"
        for kind in ("fp32", *VARIANTS)
    }
    if not paths["fp32"].exists():
        print(f"exporting {paths['fp32']}", flush=True)
        export_fp32(encoder, paths["fp32"])
    for kind, variant in VARIANTS.items():
        if not paths[kind].exists():
            print(f"quantizing {paths[kind]}", flush=True)
            quantize(paths["fp32"], paths[kind], variant, encoder.config)
    return paths


class OnnxMPNet(MPNetEncoder):
    """The port with its forward pass run by onnxruntime; tokenizer and batching are the
    port's (``like``'s), its torch weights are not loaded again."""

    def __init__(self, path: Path, like: MPNetEncoder, threads: int) -> None:
        import onnxruntime as ort

        # no super().__init__(): it would load the torch weights a second time
        self.config = like.config
        self.tokenizer = like.tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        (vectors,) = self.session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
        return torch.from_numpy(vectors)


# --- texts (tuning data only) ----------------------------------------------------------


def tune_questions() -> list[str]:
    items = json.loads(PACK3.questions.read_text())["questions"]
    return [q["question"] for q in items if q["split"] == "tune"]


def passages(count: int = PASSAGES, lines: int = PASSAGE_LINES) -> list[str]:
    """``count`` windows of ``lines`` consecutive lines, evenly spread over pack 3's
    documents' non-overlapping windows (blank windows left out)."""
    windows = []
    for doc in sorted(PACK3.docs.iterdir()):
        text = doc.read_text(encoding="utf-8").splitlines()
        for start in range(0, len(text), lines):
            window = "\n".join(text[start : start + lines]).strip()
            if window:
                windows.append(window)
    picks = np.linspace(0, len(windows) - 1, count).round().astype(int)
    return [windows[i] for i in picks]


# --- measures --------------------------------------------------------------------------


def cosine_summary(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    cos = np.sum(reference * other, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    )
    return {
        "min": round(float(cos.min()), 5),
        "p5": round(float(np.percentile(cos, 5)), 5),
        "mean": round(float(cos.mean()), 5),
    }


def top_k(questions: np.ndarray, passages: np.ndarray, k: int = TOP_K) -> list[set[int]]:
    scores = questions @ passages.T
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in scores]


def overlap(reference: list[set[int]], other: list[set[int]], k: int = TOP_K) -> dict[str, Any]:
    shares = [len(a & b) / k for a, b in zip(reference, other, strict=True)]
    return {
        "mean": round(float(np.mean(shares)), 4),
        "min": min(shares),
        f"questions_{k}_of_{k}": sum(s == 1.0 for s in shares),
    }


def latency(
    engines: dict[str, Callable[[str], object]], texts: Sequence[str], rounds: int = ROUNDS
) -> dict[str, np.ndarray]:
    """ms of each text embedded alone, ``{engine: rounds x texts}``: every engine in turn
    on one text (the order rotating, so no engine always runs after the same one), after
    ``WARMUP`` texts each. ``GAP_S`` before each call lets the previous engine's threads
    stop spinning: back to back, onnxruntime's spinning pool made the next torch call
    ~1.6x and llama.cpp's ~2.5x slower (seen here)."""
    for text in texts[:WARMUP]:
        for embed in engines.values():
            embed(text)
    names = list(engines)
    ms = {name: np.zeros((rounds, len(texts))) for name in names}
    turn = 0
    for r in range(rounds):
        for n, text in enumerate(texts):
            turn += 1
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                time.sleep(GAP_S)
                started = time.perf_counter()
                engines[name](text)
                ms[name][r, n] = (time.perf_counter() - started) * 1000
    return ms


def latency_summary(ms: dict[str, np.ndarray]) -> dict[str, Any]:
    """p50/p95 over the texts of each text's fastest round (a neighbour job's load lands
    on single calls, and llama.cpp's thread barriers slow tens of times under it), and,
    for comparison, of all calls."""
    best = {name: m.min(axis=0) for name, m in ms.items()}

    def pct(name: str, q: float) -> float:
        return float(np.percentile(best[name], q))

    out: dict[str, Any] = {}
    for name in ms:
        out[name] = {
            "p50_ms": round(pct(name, 50), 2),
            "p95_ms": round(pct(name, 95), 2),
            "p50_vs_minilm": round(pct(name, 50) / pct("minilm", 50), 2),
            "p95_vs_minilm": round(pct(name, 95) / pct("minilm", 95), 2),
            "p50_vs_torch": round(pct(name, 50) / pct("torch", 50), 3),
            "p95_vs_torch": round(pct(name, 95) / pct("torch", 95), 3),
            "median_paired_vs_torch": round(float(np.median(best[name] / best["torch"])), 3),
            "times_faster_than_torch_p50": round(pct("torch", 50) / pct(name, 50), 2),
            "all_calls_p50_ms": round(float(np.percentile(ms[name], 50)), 2),
            "all_calls_p95_ms": round(float(np.percentile(ms[name], 95)), 2),
        }
    return out


# --- CLI -------------------------------------------------------------------------------


def _one(encoder: MPNetEncoder) -> Callable[[str], object]:
    return lambda text: encoder.embed([text])


def run(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch

    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.llama import LlamaEmbedder

    load = os.getloadavg()
    folder = model_dir()
    port = MPNetEncoder(folder, threads=threads)
    paths = cached_models(port, folder)
    models = {kind: OnnxMPNet(path, port, threads) for kind, path in paths.items()}
    questions, windows = tune_questions(), passages()
    print(f"{len(questions)} tune questions, {len(windows)} passages", flush=True)

    vectors = {"torch": (port.embed(questions), port.embed(windows))}
    for kind, model in models.items():
        vectors[f"onnx-{kind}"] = (model.embed(questions), model.embed(windows))
    ref_q, ref_p = vectors["torch"]
    ref_top = top_k(ref_q, ref_p)
    fidelity = {
        name: {
            "cosine_questions": cosine_summary(ref_q, q),
            "cosine_passages": cosine_summary(ref_p, p),
            "cosine_all": cosine_summary(np.vstack([ref_q, ref_p]), np.vstack([q, p])),
            f"overlap@{TOP_K}": overlap(ref_top, top_k(q, p)),
        }
        for name, (q, p) in vectors.items()
        if name != "torch"
    }

    minilm = LlamaEmbedder(cached_gguf(), n_threads=threads)
    engines: dict[str, Callable[[str], object]] = {
        "torch": _one(port),
        **{f"onnx-{kind}": _one(m) for kind, m in models.items()},
        "minilm": lambda t: minilm.embed([t]),
    }
    try:
        ms = latency(engines, questions)
    finally:
        minilm.close()
    speed = latency_summary(ms)
    tokens = [len(port.tokenizer.encode(q, MAX_TOKENS)) for q in questions]
    return {
        "what": "all-mpnet-base-v2: torch port vs ONNX fp32 / dynamic int8 (onnxruntime, CPU)",
        "texts": {
            "questions": f"{PACK3.name} split=tune ({len(questions)})",
            "passages": f"{len(windows)} {PASSAGE_LINES}-line windows of {PACK3.name}'s docs",
            "question_tokens_mean": round(float(np.mean(tokens)), 1),
        },
        "threads": threads,
        "gap_between_calls_s": GAP_S,
        "rounds": ROUNDS,
        "cpus": os.cpu_count(),
        "load_average": {
            "start": [round(x, 2) for x in load],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "files": {
            k: {"name": p.name, "mb": round(p.stat().st_size / 1e6, 1)} for k, p in paths.items()
        },
        "variants": {k: dataclasses.asdict(v) for k, v in VARIANTS.items()},
        "fidelity_vs_torch": fidelity,
        "latency_one_question": speed,
    }


def summary(report: dict[str, Any]) -> str:
    lines = [f"threads {report['threads']}, load average {report['load_average']}"]
    for name, row in report["fidelity_vs_torch"].items():
        c, o = row["cosine_all"], row[f"overlap@{TOP_K}"]
        lines.append(
            f"{name:27s} cos min {c['min']:.4f} p5 {c['p5']:.4f} mean {c['mean']:.5f}  "
            f"overlap@{TOP_K} mean {o['mean']:.3f} min {o['min']:.1f}  "
            f"{report['files'][name.removeprefix('onnx-')]['mb']} MB"
        )
    for name, row in report["latency_one_question"].items():
        lines.append(
            f"{name:27s} p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  "
            f"x MiniLM {row['p50_vs_minilm']:5.2f}/{row['p95_vs_minilm']:5.2f}  "
            f"x torch {row['p50_vs_torch']:.3f}/{row['p95_vs_torch']:.3f} "
            f"(paired {row['median_paired_vs_torch']:.3f}, "
            f"{row['times_faster_than_torch_p50']:.2f}x faster; all calls "
            f"{row['all_calls_p50_ms']:.1f}/{row['all_calls_p95_ms']:.1f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.realdocs.mpnet_onnx", description=__doc__
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run(args.threads)
    print(summary(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
