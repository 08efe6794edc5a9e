"""The LiteRT side of the INT8 search: full-integer TFLite built by ai-edge-quantizer.

A float ``.tflite`` (from ``converters tflite``, or any export with a signature) is
quantized per recipe by :func:`converters.litert_int8.quantize_tflite` (INT8 weights per
channel or per tensor, INT8 activations from min/max calibration, the ops of the float
blocks left float) and measured with the agent's own LiteRT backend against the float
model: top-1 agreement, output fidelity and latency timed interleaved. ai-edge-quantizer
calibrates by min/max only and writes 8-bit weights, so those two axes of the search have
one value each on this target.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from converters.int8_search import Recipe
from converters.int8_trials import (
    MAX_BLOCKS,
    ImageSet,
    RecipeTrials,
    SearchInputError,
    merge_blocks,
    true_top1,
)
from edge_agent.errors import ConfigError
from edge_agent.vision.backends import LiteRTBackend

WEIGHTED_TFLITE_OPS = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "TRANSPOSE_CONV",
    "BATCH_MATMUL",
}
CALIBRATIONS = ("minmax",)
WEIGHT_BITS = (8,)


def quantizer_available() -> str | None:
    """None when ai-edge-quantizer imports here, else what to install."""
    if importlib.util.find_spec("ai_edge_quantizer") is None:
        return "ai-edge-quantizer (the 'convert' extra: pip install ai-edge-quantizer==0.10.0)"
    return None


def load_tflite(path: Path) -> LiteRTBackend:
    """The float model in the agent's LiteRT backend, or why it cannot be used."""
    if not path.is_file():
        raise SearchInputError(f"{path} does not exist (pass the float .tflite to quantize)")
    if path.read_bytes()[4:8] != b"TFL3":
        raise SearchInputError(
            f"{path.name} is not a TFLite model (no TFL3 identifier); --target litert "
            "quantizes a float .tflite, e.g. from `python -m converters tflite`"
        )
    try:
        backend = LiteRTBackend(path)
    except ConfigError as e:
        raise SearchInputError(str(e)) from e
    return backend


def _ops(path: Path) -> list[tuple[str, str]]:
    """(op name, scope) of the main subgraph's ops; the scope is what the quantizer's
    regexes match: the op's output tensor names joined by ';'."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    out = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        scope = ";".join(
            t.decode() if isinstance(t, bytes) else str(t)
            for t in (graph.tensors[i].name for i in op.outputs if i != -1)
        )
        out.append((names.get(builtin, str(builtin)), scope))
    return out


def _scope_key(scope: str, root: str | None) -> str:
    first = scope.split(";")[0]
    parts = [p for p in first.split("/") if p]
    if root is not None and len(parts) >= 3 and parts[0] == root:
        parts = parts[1:]  # litert-torch names every tensor under the root module
    return parts[0] if len(parts) >= 2 else first


def tflite_blocks(path: Path, max_blocks: int = MAX_BLOCKS) -> dict[str, list[str]]:
    """Blocks of a TFLite graph: op scopes grouped by the top of their tensor-name path
    below the root module (one block per weighted op otherwise), merged when there are
    more than ``max_blocks``."""
    ops = _ops(path)
    tops = [scope.split(";")[0].split("/")[0] for _, scope in ops]
    common = max(set(tops), key=tops.count) if tops else None
    root = common if common is not None and tops.count(common) >= 0.8 * len(tops) else None
    keys: dict[str, list[str]] = {}
    weighted: list[str] = []
    for op_name, scope in ops:
        key = _scope_key(scope, root)
        keys.setdefault(key, []).append(scope)
        if op_name in WEIGHTED_TFLITE_OPS and key not in weighted:
            weighted.append(key)
    return merge_blocks({k: keys[k] for k in weighted}, max_blocks)


def _regex(scope: str) -> str:
    # ai-edge-quantizer's scope is the output tensor names, each followed by ';'
    return "^" + "".join(f"{re.escape(name)};" for name in scope.split(";") if name) + "$"


class LiteRTTrials(RecipeTrials):
    """Builds each recipe with ai-edge-quantizer and measures it with LiteRT."""

    suffix = ".tflite"
    calibrations = CALIBRATIONS
    weight_bits = WEIGHT_BITS

    def __init__(
        self,
        float_model: Path,
        work: Path,
        blocks: dict[str, list[str]],
        calibration: ImageSet,
        evaluation: ImageSet,
        *,
        latency_images: int = 32,
        latency_rounds: int = 2,
        threads: int = 2,
        report: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.float_model, self.work, self.blocks = float_model, work, blocks
        self.calibration, self.evaluation = calibration, evaluation
        self.latency_tensors = evaluation.tensors[:latency_images]
        self.latency_rounds, self.threads, self.report = latency_rounds, threads, report
        self.fp32 = LiteRTBackend(float_model, n_threads=threads)
        self.reference = [self.fp32.run(t)[0] for t in evaluation.tensors]
        self.fp32_labelled = true_top1(self.reference, evaluation.labels)
        self._calibration_array = np.concatenate(
            [np.asarray(t, np.float32) for t in calibration.tensors]
        )
        self.paths: dict[Recipe, Path] = {}
        self._count = 0

    def build(self, recipe: Recipe, target: Path) -> None:
        from converters.litert_int8 import quantize_tflite

        if recipe.only_block is not None:
            floated = [b for b in self.blocks if b != recipe.only_block]
        else:
            floated = list(recipe.float_blocks)
        cache = self.work / "calibration-minmax.pkl"
        if not cache.exists():
            self.report(f"calibrating (min/max, {len(self.calibration.tensors)} images)")
        quantize_tflite(
            self.float_model,
            self._calibration_array,
            target,
            per_channel=recipe.per_channel,
            float_regexes=tuple(_regex(s) for b in floated for s in self.blocks[b]),
            qsv_cache=cache,
        )

    def backend(self, path: Path) -> LiteRTBackend:
        return LiteRTBackend(path, n_threads=self.threads)


def check_spec_fits_tflite(backend: LiteRTBackend, images: ImageSet) -> None:
    """Run the float model on the first image: a spec the model cannot take fails here."""
    try:
        backend.run(images.tensors[0])
    except Exception as e:  # LiteRT raises ValueError/RuntimeError for a wrong shape
        raise SearchInputError(
            f"the preprocessing makes {list(images.tensors[0].shape)} tensors, which the "
            f"model does not take: the vision spec does not fit this model ({str(e)[:160]})"
        ) from e
