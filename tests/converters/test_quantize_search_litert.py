"""``python -m converters quantize MODEL.tflite --target litert``: full-integer TFLite built by
ai-edge-quantizer (LiteRT's own quantizer) and measured with LiteRT, on a generated model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converters.__main__ import main
from edge_agent.vision.spec import PreprocessSpec, VisionModelSpec
from tests.converters.test_quantize_search import _write
from tests.requirements import require_installed

require_installed("ai_edge_litert", "ai-edge-litert (the 'tflite' extra)", "make setup installs it")
require_installed("ai_edge_quantizer", "ai-edge-quantizer (the 'convert' extra)", "make setup")

from tests.converters.tiny_tflite import fc_classifier  # noqa: E402

SPEC = VisionModelSpec(
    task="classify",
    preprocess=PreprocessSpec(size=(4, 4), resize="stretch", layout="nhwc"),
    labels=("a", "b", "c"),
)


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("litert-sets")
    rng = np.random.default_rng(0)
    cal = _write(root / "cal", [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(12)])
    ev = _write(root / "eval", [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(20)])
    return cal, ev


def _run(model: Path, sets: tuple[Path, Path], gate: float, tmp: Path) -> int:
    cal, ev = sets
    args = ["quantize", str(model), "--calibration", str(cal), "--eval", str(ev)]
    args += ["--min-agreement", str(gate), "--target", "litert", "--report", str(tmp / "r.json")]
    return main([*args, "--cards", str(tmp / "cards"), "--spec", str(tmp / "spec.json")])


def test_litert_search_writes_a_full_integer_tflite(
    sets: tuple[Path, Path], tmp_path: Path
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    (tmp_path / "spec.json").write_text(json.dumps(SPEC.to_config()))
    model = fc_classifier(tmp_path / "tiny-fp32.tflite")
    assert _run(model, sets, 0.8, tmp_path) == 0
    out = tmp_path / "tiny-int8.tflite"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"] == "litert" and report["artifact"] == str(out)
    assert report["blocks"] == {"fc1": ["fc1/out"], "logits": ["logits"]}
    chosen = report["chosen"]
    assert chosen["agreement"] >= 0.8 and chosen["latency_ms"]["fp32_p50"] > 0
    faster = chosen["latency_ms"]["ratio_p50"] < 1.0
    assert report["search"]["verdict"] == ("int8" if faster else "keep-fp32")
    # LiteRT's calibration is min/max with 8-bit weights only: one of each was tried
    tried = {
        (t["recipe"]["calibration"], t["recipe"]["weight_bits"]) for t in report["search"]["trials"]
    }
    assert tried == {("minmax", 8)}
    interpreter = Interpreter(model_path=str(out))
    dtypes = {d["name"]: d["dtype"] for d in interpreter.get_tensor_details()}
    assert dtypes["fc1/weights"] == np.int8 and dtypes["fc1/out"] == np.int8  # full integer
    assert dtypes["input"] == np.int8 and dtypes["logits"] == np.int8
    card = (tmp_path / "cards" / "tiny-int8.md").read_text()
    assert "vision-classify / tflite" in card and report["artifact_sha256"] in card


def test_litert_search_keeps_a_float_block_float(sets: tuple[Path, Path], tmp_path: Path) -> None:
    from converters.int8_litert import LiteRTTrials, tflite_blocks
    from converters.int8_search import Recipe
    from converters.int8_trials import read_image_set

    model = fc_classifier(tmp_path / "tiny-fp32.tflite")
    blocks = tflite_blocks(model)
    cal = read_image_set(sets[0], SPEC, "calibration")
    ev = read_image_set(sets[1], SPEC, "evaluation")
    trials = LiteRTTrials(model, tmp_path, blocks, cal, ev)
    trials.build(Recipe(float_blocks=("logits",)), tmp_path / "mixed.tflite")
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {
        d["name"]: d["dtype"]
        for d in Interpreter(model_path=str(tmp_path / "mixed.tflite")).get_tensor_details()
    }
    assert dtypes["fc1/weights"] == np.int8
    assert dtypes["logits/weights"] == np.float32  # the float block's weights stay float


def test_a_file_that_is_not_tflite_is_refused(
    sets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(SPEC.to_config()))
    model = tmp_path / "model-fp32.tflite"
    model.write_bytes(b"\x00" * 64)
    assert _run(model, sets, 0.8, tmp_path) == 2
    assert "model-fp32.tflite is not a TFLite model" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-fp32.tflite", "spec.json"]
