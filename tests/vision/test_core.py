"""Pure cores: preprocessing geometry, top-k, BlazeFace anchors/decoding, NMS, specs."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.errors import BadRequestError, ConfigError
from edge_agent.vision.blazeface import anchors, decode
from edge_agent.vision.classification import softmax, top_k
from edge_agent.vision.detection import non_max_suppression
from edge_agent.vision.preprocess import Geometry, fit_to_input, prepare
from edge_agent.vision.spec import BlazeFaceSpec, PreprocessSpec, VisionModelSpec


def _image(h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = 10  # B
    img[..., 1] = 20  # G
    img[..., 2] = 30  # R
    return img


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
def test_geometry_maps_input_corners_back_inside_the_original(mode: str) -> None:
    spec = PreprocessSpec(size=(64, 32), resize=mode)  # type: ignore[arg-type]
    fitted, geo = fit_to_input(_image(100, 300), spec)
    assert fitted.shape == (32, 64, 3)
    box = geo.to_original(np.array([[0, 0, 64, 32]], dtype=np.float32))[0]
    assert 0 <= box[0] < box[2] <= 300 and 0 <= box[1] < box[3] <= 100


def test_letterbox_geometry_inverts_scale_and_padding() -> None:
    spec = PreprocessSpec(size=(100, 100), resize="letterbox")
    fitted, geo = fit_to_input(_image(50, 200), spec)  # scale 0.5 -> 100x25, top pad 37
    assert geo.offset_y == 37 and geo.offset_x == 0
    assert np.all(fitted[:37] == 0) and np.all(fitted[37:62, :, 2] == 30)
    pt = geo.points_to_original(np.array([[50.0, 37.0 + 12.5]], dtype=np.float32))[0]
    assert pt == pytest.approx([100.0, 25.0])


def test_center_crop_takes_the_middle() -> None:
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    img[40:60, 40:60] = 255
    spec = PreprocessSpec(size=(20, 20), resize="center_crop", crop_fraction=1.0)
    fitted, geo = fit_to_input(img, spec)
    assert fitted[10, 10, 0] == 255 and fitted[0, 0, 0] == 0
    assert geo.to_original(np.array([[0, 0, 20, 20]], dtype=np.float32))[0] == pytest.approx(
        [0, 0, 100, 100]
    )


def test_tensor_layout_colour_and_normalization() -> None:
    img = _image(4, 4)
    nchw = PreprocessSpec(size=(4, 4), color="rgb", layout="nchw", mean=(30, 20, 10), scale=1.0)
    t, _ = prepare(img, nchw)
    assert t.shape == (1, 3, 4, 4) and t.dtype == np.float32
    assert np.allclose(t, 0.0)  # R-30, G-20, B-10 in RGB order
    nhwc = PreprocessSpec(size=(4, 4), color="bgr", layout="nhwc", std=(2, 2, 2), scale=1.0)
    t, _ = prepare(img, nhwc)
    assert t.shape == (1, 4, 4, 3)
    assert t[0, 0, 0].tolist() == [5.0, 10.0, 15.0]
    raw = PreprocessSpec(size=(4, 4), dtype="uint8", layout="nhwc")
    t, _ = prepare(img, raw)
    assert t.dtype == np.uint8 and t[0, 0, 0].tolist() == [30, 20, 10]


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([1000.0, 1000.0, -1000.0]))
    assert p == pytest.approx([0.5, 0.5, 0.0])


def test_top_k_orders_and_labels() -> None:
    preds = top_k(np.array([[0.1, 3.0, 2.0, -1.0]]), ["a", "b", "c", "d"], 2)
    assert [p.label for p in preds] == ["b", "c"]
    assert preds[0].score > preds[1].score
    assert sum(p.score for p in top_k(np.zeros(4), "abcd", 4)) == pytest.approx(1.0)


def test_top_k_out_of_range_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="top_k"):
        top_k(np.zeros(3), ["a", "b", "c"], 0)


def test_label_count_mismatch_is_detected() -> None:
    with pytest.raises(ValueError, match="labels"):
        top_k(np.zeros(5), ["a", "b"], 1)


def test_blazeface_short_range_has_896_anchors() -> None:
    a = anchors(BlazeFaceSpec())
    assert a.shape == (896, 2)
    assert a[0] == pytest.approx([0.5 / 16, 0.5 / 16])
    assert a[512] == pytest.approx([0.5 / 8, 0.5 / 8])


def test_blazeface_decodes_one_face_into_original_pixels() -> None:
    spec = BlazeFaceSpec()
    anc = anchors(spec)
    reg = np.zeros((1, 896, 16), dtype=np.float32)
    logits = np.full((1, 896, 1), -10.0, dtype=np.float32)
    i = 512 + 2 * (8 * 3 + 4)  # stride-16 grid, row 3, column 4
    logits[0, i, 0] = 5.0
    reg[0, i, :4] = (2.0, -2.0, 32.0, 40.0)  # dx, dy, w, h in input pixels
    geo = Geometry(0.5, 0.5, 0.0, 0.0, 256, 256)  # input is the original at half size
    (det,) = decode(reg, logits, anc, spec, geo)
    cx, cy = anc[i] * 128 + (2.0, -2.0)
    assert det.box == pytest.approx(((cx - 16) * 2, (cy - 20) * 2, (cx + 16) * 2, (cy + 20) * 2))
    assert det.score == pytest.approx(1 / (1 + np.exp(-5.0)))
    assert det.label == "face" and len(det.keypoints) == 6


def test_blazeface_anchor_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="anchor"):
        decode(
            np.zeros((1, 10, 16), np.float32),
            np.zeros((1, 10, 1), np.float32),
            anchors(BlazeFaceSpec()),
            BlazeFaceSpec(),
            Geometry(1, 1, 0, 0, 1, 1),
        )


def test_nms_keeps_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7], dtype=np.float32)
    assert non_max_suppression(boxes, scores, 0.3, 10) == [1, 2]
    assert non_max_suppression(boxes, scores, 0.3, 1) == [1]


def test_spec_round_trips_through_config() -> None:
    spec = VisionModelSpec(
        task="detect",
        preprocess=PreprocessSpec(size=(128, 128), resize="letterbox", layout="nhwc"),
        detector=BlazeFaceSpec(score_threshold=0.6),
    )
    assert VisionModelSpec.from_config(spec.to_config()) == spec


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task": "segment", "preprocess": {"size": 8}}, "task"),
        ({"task": "classify", "preprocess": {"size": 8}}, "labels"),
        ({"task": "classify", "labels": ["a"], "preprocess": {"size": [8]}}, "size"),
        ({"task": "classify", "labels": ["a"], "preprocess": {"size": 8, "std": 0}}, "std"),
        ({"task": "classify", "labels": ["a"], "preprocess": {"size": 8, "zoom": 2}}, "zoom"),
        ({"task": "detect", "preprocess": {"size": 8}}, "postprocess"),
        ({"task": "classify", "labels": ["a"], "preprocess": {"size": 8, "layout": "x"}}, "layout"),
    ],
)
def test_bad_spec_is_a_config_error(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VisionModelSpec.from_config(raw)
