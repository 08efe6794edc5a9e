"""``python -m converters quantize MODEL --target onnxruntime``: the recipe search on real
onnxruntime, over small generated models and generated image sets.

Deterministic with a seed, the gate respected, a non-zero exit with a report when the gate
cannot be met, and bad input (not ONNX, an empty folder, an image the preprocessing
cannot take, a spec that does not fit) refused with a clear message and no artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.__main__ import main
from converters.images import random_crops
from edge_agent.vision.spec import PreprocessSpec, VisionModelSpec
from tests.vision.tiny_models import colour_classifier, conv_classifier

SENSITIVE_SPEC = VisionModelSpec(
    task="classify",
    preprocess=PreprocessSpec(size=(8, 8), resize="stretch", color="rgb"),
    labels=("red", "green", "blue"),
)


def sensitive_classifier(path: Path) -> Path:
    """Colour classifier with one tensor INT8 cannot take: ``lift`` writes the colours beside
    a constant channel of 100, which ``mix`` reads, so that tensor's 8-bit step (100/255)
    erases the colours when either of them is quantized; ``classifier`` quantizes
    harmlessly. [N,3,8,8] RGB in [0,1] -> 3 logits."""
    lift_w = np.zeros((4, 3, 1, 1), np.float32)
    for c in range(3):
        lift_w[c, c] = 1.0
    lift_b = np.array([0, 0, 0, 100], np.float32)
    mix_w = np.zeros((3, 4, 1, 1), np.float32)
    for c in range(3):
        mix_w[c, c] = 1.0
    inits = [
        numpy_helper.from_array(lift_w, "lift_w"),
        numpy_helper.from_array(lift_b, "lift_b"),
        numpy_helper.from_array(mix_w, "mix_w"),
        numpy_helper.from_array(np.eye(3, dtype=np.float32) * 10, "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "lift_w", "lift_b"], ["lifted"], name="lift"),
        helper.make_node("Conv", ["lifted", "mix_w"], ["mixed"], name="mix"),
        helper.make_node("GlobalAveragePool", ["mixed"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["logits"], name="classifier"),
    ]
    graph = helper.make_graph(
        nodes,
        "sensitive",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    path.with_name(path.name + ".vision.json").write_text(json.dumps(SENSITIVE_SPEC.to_config()))
    return path


@pytest.fixture(scope="module")
def colour_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Plain colour swatches: calibration over the whole range, evaluation mid-tones whose
    strongest channel leads the next by at least 0.05."""
    root = tmp_path_factory.mktemp("colour-sets")
    rng = np.random.default_rng(2)
    cal = [np.full((8, 8, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(12)]
    ev = []
    while len(ev) < 30:
        rgb = rng.uniform(0.3, 0.7, 3)
        top = np.sort(rgb)
        if top[-1] - top[-2] >= 0.05:
            ev.append(np.full((8, 8, 3), np.round(rgb[::-1] * 255), np.uint8))  # BGR on disk
    return _write(root / "cal", cal), _write(root / "eval", ev)


CONV_SPEC = VisionModelSpec(
    task="classify",
    preprocess=PreprocessSpec(size=(32, 32), resize="stretch"),
    labels=tuple(f"class-{i}" for i in range(10)),
)
COLOUR_SPEC = VisionModelSpec(
    task="classify",
    preprocess=PreprocessSpec(size=(8, 8), resize="stretch", color="rgb"),
    labels=("red", "green", "blue"),
)


def _write(folder: Path, images: list[Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.fixture(scope="module")
def conv_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("conv-sets")
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    cal = _write(root / "cal", random_crops(sources, 12, seed=3))
    ev = _write(root / "eval", random_crops(sources, 16, seed=4))
    return cal, ev


@pytest.fixture()
def conv_model(tmp_path: Path) -> Path:
    path = conv_classifier(tmp_path / "net-fp32.onnx", opset=13)
    path.with_name(path.name + ".vision.json").write_text(json.dumps(CONV_SPEC.to_config()))
    return path


def _search(model: Path, cal: Path, ev: Path, gate: float, tmp: Path, *extra: str) -> int:
    return main(
        [
            "quantize",
            str(model),
            "--calibration",
            str(cal),
            "--eval",
            str(ev),
            "--min-agreement",
            str(gate),
            "--target",
            "onnxruntime",
            "--report",
            str(tmp / "report.json"),
            "--cards",
            str(tmp / "cards"),
            *extra,
        ]
    )


def _trials(report: Path) -> list[tuple[str, dict[str, Any], int]]:
    data = json.loads(report.read_text())
    return [(t["stage"], t["recipe"], t["agree"]) for t in data["search"]["trials"]]


def test_a_met_gate_writes_the_model_its_card_and_the_curve(
    conv_model: Path, conv_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    assert _search(conv_model, *conv_sets, 0.5, tmp_path, "--seed", "3") == 0
    out = tmp_path / "net-int8.onnx"  # "-fp32" replaced by "-int8", beside the model
    assert out.is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    search = report["search"]
    chosen = report["chosen"]
    faster = chosen["latency_ms"]["ratio_p50"] < 1.0  # a tiny net may well be slower in INT8
    assert search["verdict"] == ("int8" if faster else "keep-fp32")
    assert report["artifact"] == str(out)
    assert chosen["agreement"] >= 0.5
    low, high = chosen["agreement_ci95"]
    assert low <= chosen["agreement"] <= high
    assert set(chosen["per_block"].values()) <= {"int8", "float"}
    assert len(chosen["per_block"]) == 3  # Conv, Conv, Gemm: one block per weighted layer
    # The whole curve: every calibration method and weight width, then per-tensor.
    tried = {(t["recipe"]["calibration"], t["recipe"]["weight_bits"]) for t in search["trials"]}
    assert tried == {(c, b) for c in ("minmax", "entropy", "percentile") for b in (8, 7)}
    assert any(not t["recipe"]["per_channel"] for t in search["trials"])
    recipes = [t for t in search["trials"] if t["stage"] != "runoff"]
    assert len(search["curve"]) == len(recipes)
    runoff = [t for t in search["trials"] if t["stage"] == "runoff"]
    assert 2 <= len(runoff) <= 4  # the passing finalists were re-timed together
    assert chosen["described"] in {t["described"] for t in runoff}
    assert chosen["latency_ms"]["fp32_p50"] > 0 and chosen["latency_ms"]["int8_p95"] > 0
    card = (tmp_path / "cards" / "net-int8.md").read_text()
    assert report["artifact_sha256"] in card and f'"verdict": "{search["verdict"]}"' in card
    assert "never edit it by hand" in card
    assert json.loads((tmp_path / "net-int8.onnx.vision.json").read_text()) == CONV_SPEC.to_config()
    assert not list(tmp_path.glob(".int8-search-*"))


def test_the_sensitive_layer_stays_float_and_the_gate_is_met(
    colour_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    model = sensitive_classifier(tmp_path / "sensitive-fp32.onnx")
    assert _search(model, *colour_sets, 0.95, tmp_path) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    search = report["search"]
    full_int8 = [t for t in search["trials"] if t["stage"] in ("calibration", "granularity")]
    assert full_int8 and all(t["agreement"] < 0.95 for t in full_int8)
    ranked = [(s["block"], s["agreement_cost"]) for s in search["sensitivity"]]
    assert {b for b, _ in ranked[:2]} == {"lift", "mix"} and ranked[2] == ("classifier", 0.0)
    assert all(cost > 0.1 for _, cost in ranked[:2])
    assert report["chosen"]["per_block"] == {"lift": "float", "mix": "float", "classifier": "int8"}
    assert report["chosen"]["agreement"] >= 0.95
    assert (tmp_path / "sensitive-int8.onnx").is_file()


def test_the_search_is_deterministic_with_a_seed(
    colour_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    model = sensitive_classifier(tmp_path / "sensitive-fp32.onnx")
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        out = str(folder / "m.onnx")
        code = _search(model, *colour_sets, 0.95, folder, "--seed", "11", "--out", out)
        report = json.loads((folder / "report.json").read_text())
        runs.append((code, _trials(folder / "report.json"), report["chosen"]["recipe"]))
    assert runs[0] == runs[1]
    stages = {stage for stage, _, _ in runs[0][1]}
    assert stages == {"calibration", "granularity", "sensitivity", "mixed"}


def test_a_gate_no_recipe_meets_exits_non_zero_with_the_best_in_the_report(
    tmp_path: Path,
) -> None:
    model = colour_classifier(tmp_path / "colour-fp32.onnx")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(COLOUR_SPEC.to_config()))
    rng = np.random.default_rng(1)
    # Calibration spans black to saturated colours, so one activation step is 1/255; the
    # evaluation images' channel means differ by less than that, so INT8 ties and flips.
    cal = [np.full((8, 8, 3), v, np.uint8) for v in (0, 255)]
    cal += [
        np.full((8, 8, 3), (255 * (i == 0), 255 * (i == 1), 255 * (i == 2)), np.uint8)
        for i in range(3)
    ]
    ev = []
    for _ in range(24):
        img = np.full((8, 8, 3), 128, np.uint8)
        img[rng.integers(0, 8), rng.integers(0, 8), rng.integers(0, 3)] = 129
        ev.append(img)
    cal_dir, ev_dir = _write(tmp_path / "cal", cal), _write(tmp_path / "ev", ev)
    out = tmp_path / "colour-int8.onnx"
    code = _search(model, cal_dir, ev_dir, 1.0, tmp_path, "--spec", str(spec))
    assert code == 3
    assert not out.exists() and not (tmp_path / "cards").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["search"]["verdict"] == "gate-not-met" and report["chosen"] is None
    best = report["search"]["best"]
    assert best is not None and best["agreement"] < 1.0
    assert best["agreement"] == max(t["agreement"] for t in report["search"]["trials"])
    assert not list(tmp_path.glob(".int8-search-*"))


def _no_artifacts(folder: Path) -> None:
    left = {p.name for p in folder.iterdir()} - {
        "cal",
        "eval",
        "net-fp32.onnx",
        "net-fp32.onnx.vision.json",
        "spec.json",
        "empty",
        "bad",
    }
    assert left == set(), left


def test_a_file_that_is_not_onnx_is_refused(
    conv_sets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "net-fp32.onnx"
    model.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(CONV_SPEC.to_config()))
    assert _search(model, *conv_sets, 0.5, tmp_path, "--spec", str(spec)) == 2
    assert "net-fp32.onnx is not a valid ONNX model" in capsys.readouterr().out
    _no_artifacts(tmp_path)


def test_an_empty_calibration_folder_is_refused(
    conv_model: Path,
    conv_sets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    assert _search(conv_model, empty, conv_sets[1], 0.5, tmp_path) == 2
    out = capsys.readouterr().out
    assert "the calibration folder" in out and "has no PNG or JPEG images" in out
    _no_artifacts(tmp_path)


def test_an_image_the_preprocessing_cannot_take_is_named(
    conv_model: Path,
    conv_sets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    good = cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes()
    (bad / "000.png").write_bytes(good)
    (bad / "001.png").write_bytes(good[: len(good) // 2])  # truncated
    assert _search(conv_model, conv_sets[0], bad, 0.5, tmp_path) == 2
    out = capsys.readouterr().out
    assert "evaluation image 001.png cannot be used" in out and "truncated" in out
    _no_artifacts(tmp_path)


def test_a_spec_that_does_not_fit_the_model_is_refused(
    conv_model: Path,
    conv_sets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = VisionModelSpec(
        task="classify",
        preprocess=PreprocessSpec(size=(24, 24), resize="stretch"),
        labels=CONV_SPEC.labels,
    )
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(wrong.to_config()))
    assert _search(conv_model, *conv_sets, 0.5, tmp_path, "--spec", str(spec)) == 2
    out = capsys.readouterr().out
    assert "the vision spec does not fit this model" in out and "[1, 3, 24, 24]" in out
    _no_artifacts(tmp_path)


def test_the_card_is_regenerated_from_the_report_alone(
    colour_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    model = sensitive_classifier(tmp_path / "sensitive-fp32.onnx")
    assert _search(model, *colour_sets, 0.95, tmp_path) == 0
    written = (tmp_path / "cards" / "sensitive-int8.md").read_text()
    report = tmp_path / "report.json"
    args = ["card", "--from-report", str(report), "--cards", str(tmp_path / "again")]
    assert main(args) == 0
    assert (tmp_path / "again" / "sensitive-int8.md").read_text() == written
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the measured model")
    assert main([*args, "--artifact", str(other)]) == 2  # a card never names another file
