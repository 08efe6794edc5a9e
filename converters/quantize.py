"""ONNX FP32 -> static QDQ INT8 with a calibration image set and an acceptance gate.

U8 activations, S8 per-channel weights; the calibration method, 7-bit weights
(``reduce_range``) and float first/last layers come from an :class:`Int8Recipe`. Models
below opset 13 are upgraded first: per-channel QuantizeLinear/DequantizeLinear need opset
13, and an older graph quantized per channel is not a valid model. The INT8 model is
written only when its agreement with FP32 on the evaluation images reaches the threshold.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from converters.catalog import Int8Recipe
from converters.images import load_images
from converters.measure import mean_cosine, time_calls, top1_agreement
from edge_agent.store import sha256_file
from edge_agent.vision.classification import softmax
from edge_agent.vision.decode import BGRImage
from edge_agent.vision.preprocess import prepare
from edge_agent.vision.spec import VisionModelSpec

MIN_PER_CHANNEL_OPSET = 13
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
ort.set_default_logger_severity(3)
Tensor = npt.NDArray[Any]


class QuantizationRefused(Exception):
    """INT8 agreement with FP32 fell below the threshold; no artifact was written."""

    def __init__(self, report: QuantizationReport) -> None:
        super().__init__(
            f"{report.metric} {report.agreement:.4f} < threshold {report.threshold}: "
            "refusing to write the INT8 model"
        )
        self.report = report


@dataclass(frozen=True)
class QuantizationReport:
    """What the converter measured, written as JSON beside the artifact."""

    source: str
    source_sha256: str
    artifact: str | None
    artifact_sha256: str | None
    opset_before: int
    opset_after: int
    calibration_images: int
    evaluation_images: int
    metric: str
    agreement: float
    threshold: float
    accepted: bool
    fp32_latency: dict[str, Any]
    int8_latency: dict[str, Any]
    speedup_p50: float
    details: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("the model imports no ai.onnx opset")


def upgrade_opset(model: onnx.ModelProto, minimum: int = MIN_PER_CHANNEL_OPSET) -> onnx.ModelProto:
    """Return ``model`` converted to ``minimum`` if it is older (unchanged otherwise)."""
    if default_opset(model) >= minimum:
        return model
    upgraded = version_converter.convert_version(model, minimum)
    onnx.checker.check_model(upgraded)
    return upgraded


class ImageTensors(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed image tensors to the calibrator, one image per batch."""

    def __init__(self, input_name: str, tensors: Sequence[Tensor]) -> None:
        self._input = input_name
        self._tensors = list(tensors)
        self._iter: Iterator[Tensor] = iter(self._tensors)

    def get_next(self) -> dict[str, Tensor] | None:
        tensor = next(self._iter, None)
        return None if tensor is None else {self._input: tensor}

    def rewind(self) -> None:
        self._iter = iter(self._tensors)


# Plain QDQ: what quantize_onnx does without a recipe.
PLAIN_RECIPE = Int8Recipe(
    calibration_method="percentile", reduce_range=False, keep_first_and_last_fp32=False
)


def sensitive_nodes(model: onnx.ModelProto) -> list[str]:
    """The first convolution and the last Gemm/MatMul (the classifier) of a graph."""
    first = next((n.name for n in model.graph.node if n.op_type == "Conv"), None)
    last = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
    return ([first] if first else []) + last


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (the quantizer selects nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def image_tensors(paths: Sequence[Path], spec: VisionModelSpec) -> list[Tensor]:
    """Decode and preprocess images exactly as the agent will."""
    return [prepare(img, spec.preprocess)[0] for img in load_images(paths)]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _outputs(session: ort.InferenceSession, tensors: Sequence[Tensor]) -> list[Tensor]:
    name = session.get_inputs()[0].name
    return [np.asarray(session.run(None, {name: t})[0]) for t in tensors]


def classifier_details(reference: Sequence[Tensor], candidate: Sequence[Tensor]) -> dict[str, Any]:
    """Agreement where FP32 is confident (top-1 softmax >= 0.5) and FP32 top-1 in INT8 top-5."""
    ref = np.stack([r.reshape(-1).astype(np.float64) for r in reference])
    is_probability = bool(np.all(ref >= 0) and np.allclose(ref.sum(axis=1), 1.0, atol=1e-3))
    if not is_probability:
        ref = softmax(ref)
    cand = np.stack([c.reshape(-1) for c in candidate])
    same = ref.argmax(1) == cand.argmax(1)
    confident = ref.max(1) >= 0.5
    k = min(5, cand.shape[1])
    in_top5 = [int(ref[i].argmax()) in np.argsort(-cand[i])[:k] for i in range(len(ref))]
    return {
        "top1_agreement_fp32_confident": round(float(same[confident].mean()), 4)
        if confident.any()
        else None,
        "fp32_confident_images": int(confident.sum()),
        "fp32_top1_in_int8_top5": round(float(np.mean(in_top5)), 4),
    }


def natural_details(
    fp32: Path, int8: Path, images: Sequence[BGRImage], spec: VisionModelSpec
) -> dict[str, Any]:
    """Top-1 agreement on a natural image set (reported, not gated)."""
    tensors = [prepare(img, spec.preprocess)[0] for img in images]
    ref, cand = _outputs(_session(fp32), tensors), _outputs(_session(int8), tensors)
    return {
        "images": len(tensors),
        "top1_agreement": round(top1_agreement(ref, cand), 4),
        **classifier_details(ref, cand),
    }


def compare(
    fp32: Path, int8: Path, tensors: Sequence[Tensor], metric: str, *, rounds: int = 2
) -> tuple[float, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Agreement of ``int8`` with ``fp32``, both latencies, and extra agreement details."""
    results: list[tuple[list[Tensor], dict[str, Any]]] = []
    for path in (fp32, int8):
        session = _session(path)
        name = session.get_inputs()[0].name
        outs = _outputs(session, tensors)
        calls = [partial(session.run, None, {name: t}) for t in tensors]
        results.append((outs, time_calls(calls, rounds=rounds).as_dict()))
    (ref, lat32), (cand, lat8) = results
    if metric == "top1_agreement":
        return top1_agreement(ref, cand), lat32, lat8, classifier_details(ref, cand)
    return mean_cosine(ref, cand), lat32, lat8, {}


def quantize_onnx(
    source: Path,
    target: Path,
    spec: VisionModelSpec,
    calibration: Sequence[Path],
    evaluation: Sequence[Path],
    *,
    threshold: float,
    metric: str | None = None,
    recipe: Int8Recipe = PLAIN_RECIPE,
    natural: Sequence[BGRImage] = (),
) -> QuantizationReport:
    """Quantize ``source`` into ``target``; raise :class:`QuantizationRefused` below threshold.

    The JSON report is written to ``<target>.report.json`` either way; the model and its
    ``<target>.vision.json`` spec only on acceptance. ``natural`` images, if given, add a
    second agreement figure (``details.natural_set``) that is reported but not gated.
    """
    metric = metric or ("top1_agreement" if spec.task == "classify" else "mean_cosine")
    model = onnx.load(str(source))
    before = default_opset(model)
    upgraded = upgrade_opset(model)
    after = default_opset(upgraded)
    calib = image_tensors(calibration, spec)
    evals = image_tensors(evaluation, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as tmpdir:
        work = Path(tmpdir)
        base = work / "fp32.onnx"
        onnx.save(upgraded, str(base))
        prepared = work / "fp32-prepared.onnx"
        try:
            quant_pre_process(str(base), str(prepared), skip_symbolic_shape=True)
        except Exception:  # optimization is an optional nicety; quantize the plain graph
            prepared = base
        onnx.save(name_nodes(onnx.load(str(prepared))), str(prepared))
        int8 = work / "int8.onnx"
        input_name = _session(prepared).get_inputs()[0].name
        excluded = (
            sensitive_nodes(onnx.load(str(prepared))) if recipe.keep_first_and_last_fp32 else []
        )
        excluded += [n for n in recipe.float_nodes if n not in excluded]
        quantize_static(
            str(prepared),
            str(int8),
            ImageTensors(input_name, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[recipe.calibration_method],
            nodes_to_exclude=excluded,
            extra_options={"CalibPercentile": recipe.percentile},
        )
        agreement, lat32, lat8, details = compare(base, int8, evals, metric)
        if natural and metric == "top1_agreement":
            details = {**details, "natural_set": natural_details(base, int8, natural, spec)}
        accepted = agreement >= threshold
        if accepted:
            os.replace(int8, target)
    report = QuantizationReport(
        source=str(source),
        source_sha256=sha256_file(source),
        artifact=str(target) if accepted else None,
        artifact_sha256=sha256_file(target) if accepted else None,
        opset_before=before,
        opset_after=after,
        calibration_images=len(calib),
        evaluation_images=len(evals),
        metric=metric,
        agreement=round(agreement, 4),
        threshold=threshold,
        accepted=accepted,
        fp32_latency=lat32,
        int8_latency=lat8,
        speedup_p50=round(lat32["p50_ms"] / lat8["p50_ms"], 3),
        details=details,
        settings={
            "format": "QDQ",
            "activations": "uint8",
            "weights": ("int8 per-channel" if recipe.per_channel else "int8 per-tensor")
            + (", 7-bit range" if recipe.reduce_range else ""),
            "calibration": recipe.calibration_method,
            "kept_fp32": excluded,
            "recipe": recipe.as_dict(),
            "onnxruntime": ort.__version__,
        },
    )
    report_path = target.with_name(target.name + ".report.json")
    report_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if not accepted:
        raise QuantizationRefused(report)
    spec_path = target.with_name(target.name + ".vision.json")
    spec_path.write_text(json.dumps(spec.to_config(), indent=2) + "\n")
    return report
