"""The onnxruntime side of the INT8 search: inputs checked, recipes built and measured.

:mod:`converters.int8_search` decides what to try; this module turns a
:class:`~converters.int8_search.Recipe` into a static QDQ model with onnxruntime's
quantizer and measures it against FP32 on the evaluation images (top-1 agreement, output
fidelity, latency timed interleaved with FP32). Calibration runs once per method; the
ranges are cached for the later trials. Everything a user can get wrong (not an ONNX
model, an empty image folder, an image the preprocessing cannot take, a spec that does not
fit the model) is checked before the first trial, and no artifact is written then.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from converters.int8_search import CALIBRATIONS, WEIGHT_BITS, Recipe
from converters.int8_trials import (
    MAX_BLOCKS,
    ImageSet,
    RecipeTrials,
    SearchInputError,
    merge_blocks,
    true_top1,
)
from converters.quantize import (
    CALIBRATION_METHODS,
    ImageTensors,
    default_opset,
    name_nodes,
    upgrade_opset,
)
from edge_agent.vision.backends import OnnxRuntimeBackend

Tensor = npt.NDArray[Any]
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ort.set_default_logger_severity(3)


def load_model(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path``, or :class:`SearchInputError` saying why it is not one."""
    if not path.is_file():
        raise SearchInputError(f"{path} does not exist (pass the FP32 .onnx model to quantize)")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ...
        raise SearchInputError(
            f"{path.name} is not a valid ONNX model ({type(e).__name__}: {str(e)[:200]}); "
            "pass an FP32 .onnx export"
        ) from e
    if not model.graph.input:
        raise SearchInputError(f"{path.name} has no graph input")
    elem = model.graph.input[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise SearchInputError(
            f"{path.name}'s input is {onnx.TensorProto.DataType.Name(elem)}, not FLOAT: "
            "quantize the FP32 model, not an already quantized one"
        )
    return model


def _block_key(name: str) -> str:
    parts = [p for p in name.split("/") if p]
    return "/" + parts[0] if name.startswith("/") and len(parts) >= 2 else name


def blocks_of(model: onnx.ModelProto, max_blocks: int = MAX_BLOCKS) -> dict[str, list[str]]:
    """Blocks of a graph in order: nodes grouped by the top of their name path (``/_blocks.3``
    in a PyTorch export), one block per weighted layer otherwise; consecutive blocks are
    merged when there are more than ``max_blocks``."""
    keys: dict[str, list[str]] = {}
    weighted: list[str] = []
    for node in model.graph.node:
        key = _block_key(node.name)
        keys.setdefault(key, []).append(node.name)
        if node.op_type in WEIGHTED_OPS and key not in weighted:
            weighted.append(key)
    return merge_blocks({k: keys[k] for k in weighted}, max_blocks)


def prepare_model(source: Path, work: Path) -> tuple[Path, int, int]:
    """Opset upgraded (per-channel QDQ needs 13), graph optimized for quantization, nodes
    named; returns the prepared path and the opset before and after."""
    model = load_model(source)
    before = default_opset(model)
    upgraded = upgrade_opset(model)
    base = work / "fp32.onnx"
    onnx.save(upgraded, str(base))
    prepared = work / "fp32-prepared.onnx"
    try:
        quant_pre_process(str(base), str(prepared), skip_symbolic_shape=True)
        optimized = onnx.load(str(prepared))
    except Exception:  # optimization is an optional nicety; quantize the plain graph
        optimized = upgraded
    onnx.save(name_nodes(optimized), str(prepared))
    return prepared, before, default_opset(upgraded)


def check_spec_fits(model_path: Path, images: ImageSet) -> None:
    """Run FP32 on the first image: a spec whose tensors the model cannot take fails here."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = session.get_inputs()[0].shape
    try:
        session.run(None, {session.get_inputs()[0].name: images.tensors[0]})
    except Exception as e:
        raise SearchInputError(
            f"the preprocessing makes {list(images.tensors[0].shape)} tensors but the model "
            f"takes {expected}: the vision spec does not fit this model ({str(e)[:160]})"
        ) from e


class OnnxTrials(RecipeTrials):
    """Builds each recipe with onnxruntime's static QDQ quantizer and measures it.

    ``measure`` is what :func:`converters.int8_search.search` calls. The model of every
    measured recipe stays in ``work`` (sensitivity probes are deleted at once) so that the
    chosen one is moved into place, not rebuilt.
    """

    suffix = ".onnx"
    calibrations = CALIBRATIONS
    weight_bits = WEIGHT_BITS

    def __init__(
        self,
        prepared: Path,
        work: Path,
        blocks: dict[str, list[str]],
        calibration: ImageSet,
        evaluation: ImageSet,
        *,
        latency_images: int = 32,
        latency_rounds: int = 2,
        threads: int = 2,
        percentile: float = 99.99,
        report: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.prepared, self.work, self.blocks = prepared, work, blocks
        self.calibration, self.evaluation = calibration, evaluation
        self.latency_tensors = evaluation.tensors[:latency_images]
        self.latency_rounds, self.threads, self.percentile = latency_rounds, threads, percentile
        self.report = report
        self.fp32 = OnnxRuntimeBackend(prepared, n_threads=threads)
        self.reference = [self.fp32.run(t)[0] for t in evaluation.tensors]
        self.fp32_labelled = true_top1(self.reference, evaluation.labels)
        self.input_name = (
            ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
            .get_inputs()[0]
            .name
        )
        self.paths: dict[Recipe, Path] = {}
        self._count = 0

    def _calibration_cache(self, method: str) -> Path:
        cache = self.work / f"calibration-{method}.json"
        if not cache.exists():
            self.report(f"calibrating ({method}, {len(self.calibration.tensors)} images)")
        return cache

    def build(self, recipe: Recipe, target: Path) -> None:
        """Write ``recipe``'s QDQ model to ``target``."""
        if recipe.only_block is not None:
            include = self.blocks[recipe.only_block]
            exclude: list[str] = []
        else:
            include = []
            exclude = [n for b in recipe.float_blocks for n in self.blocks[b]]
        quantize_static(
            str(self.prepared),
            str(target),
            ImageTensors(self.input_name, self.calibration.tensors),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=recipe.weight_bits == 7,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[recipe.calibration],
            nodes_to_quantize=include or None,
            nodes_to_exclude=exclude or None,
            extra_options={"CalibPercentile": self.percentile},
            calibration_cache_path=self._calibration_cache(recipe.calibration),
        )

    def backend(self, path: Path) -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(path, n_threads=self.threads)
