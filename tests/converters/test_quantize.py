"""ONNX -> static QDQ INT8: opset upgrade, per-channel weights, the report, and the refusal."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converters.__main__ import main
from converters.images import random_crops
from converters.quantize import QuantizationRefused, default_opset, quantize_onnx, upgrade_opset
from edge_agent.vision.spec import PreprocessSpec, VisionModelSpec
from tests.vision.tiny_models import conv_classifier

SPEC = VisionModelSpec(
    task="classify",
    preprocess=PreprocessSpec(size=(32, 32), resize="stretch"),
    labels=tuple(f"class-{i}" for i in range(10)),
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    for i, img in enumerate(random_crops(sources, 24, seed=3)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.fixture()
def opset11_model(tmp_path: Path) -> Path:
    return conv_classifier(tmp_path / "net.onnx", opset=11)


def test_old_opset_is_upgraded_to_13(opset11_model: Path) -> None:
    model = onnx.load(str(opset11_model))
    assert default_opset(model) == 11
    assert default_opset(upgrade_opset(model)) == 13
    assert upgrade_opset(upgraded := upgrade_opset(model)) is upgraded


def test_quantized_model_is_valid_qdq_with_per_channel_weights(
    opset11_model: Path, images: Path, tmp_path: Path
) -> None:
    paths = sorted(images.glob("*.png"))
    out = tmp_path / "net-int8.onnx"
    report = quantize_onnx(opset11_model, out, SPEC, paths[:12], paths[12:], threshold=0.0)
    assert report.accepted and report.opset_before == 11 and report.opset_after >= 13
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in model.graph.initializer}
    weight_scales = [
        inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[1] in inits
    ]
    assert any(len(s.dims) == 1 and s.dims[0] in (8, 16) for s in weight_scales)  # per channel
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)  # U8 activations
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
    saved = json.loads((tmp_path / "net-int8.onnx.report.json").read_text())
    assert saved["accepted"] is True and saved["metric"] == "top1_agreement"
    assert saved["fp32_latency"]["n"] == 2 * 12 and saved["int8_latency"]["p95_ms"] > 0
    assert (
        VisionModelSpec.from_config(
            json.loads((tmp_path / "net-int8.onnx.vision.json").read_text())
        )
        == SPEC
    )


def test_agreement_below_threshold_refuses_and_writes_no_model(
    opset11_model: Path, images: Path, tmp_path: Path
) -> None:
    paths = sorted(images.glob("*.png"))
    out = tmp_path / "refused.onnx"
    with pytest.raises(QuantizationRefused) as info:
        quantize_onnx(opset11_model, out, SPEC, paths, paths, threshold=1.01)
    assert not out.exists()
    assert info.value.report.accepted is False and info.value.report.artifact is None
    assert json.loads((tmp_path / "refused.onnx.report.json").read_text())["accepted"] is False
    assert not list(tmp_path.glob(".quantize-*"))  # no temporary leftovers


def test_cli_exits_non_zero_on_refusal(opset11_model: Path, images: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC.to_config()))
    out = tmp_path / "cli-int8.onnx"
    args = ["quantize", "--model", str(opset11_model), "--out", str(out), "--spec", str(spec_file)]
    args += ["--calibration", str(images), "--cards", str(tmp_path / "cards")]
    assert main([*args, "--min-agreement", "1.01"]) != 0
    assert not out.exists() and not (tmp_path / "cards").exists()
    assert main([*args, "--min-agreement", "0.0", "--calibration-method", "minmax"]) == 0
    assert out.exists()
    card = (tmp_path / "cards" / "cli-int8.md").read_text()
    assert "sha256" in card and "top1_agreement" in card and '"resize": "stretch"' in card
