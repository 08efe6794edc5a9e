"""BlazeFace: SSD anchors, box decoding and suppression (MediaPipe's face detector layout)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.vision.detection import Detection, non_max_suppression
from edge_agent.vision.preprocess import Geometry
from edge_agent.vision.spec import BlazeFaceSpec


def anchors(spec: BlazeFaceSpec) -> npt.NDArray[np.float32]:
    """Anchor centres ``[n, 2]`` in [0, 1] input coordinates.

    Consecutive layers with the same stride share a grid; each layer adds
    ``anchors_per_layer`` anchors per cell (fixed anchor size, so only centres matter).
    """
    centres: list[npt.NDArray[np.float32]] = []
    i = 0
    strides = spec.strides
    while i < len(strides):
        stride = strides[i]
        per_cell = 0
        while i < len(strides) and strides[i] == stride:
            per_cell += spec.anchors_per_layer
            i += 1
        cells = int(np.ceil(spec.input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        cell_index = np.stack([xs, ys], axis=-1).reshape(-1, 2)
        grid = ((cell_index + spec.anchor_offset) / cells).astype(np.float32)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def decode(
    regressors: npt.NDArray[np.float32],
    logits: npt.NDArray[np.float32],
    anchor_centres: npt.NDArray[np.float32],
    spec: BlazeFaceSpec,
    geometry: Geometry,
) -> tuple[Detection, ...]:
    """Raw model outputs -> face detections in original-image pixels."""
    reg = regressors.reshape(-1, regressors.shape[-1]).astype(np.float32)
    raw = logits.reshape(-1).astype(np.float32)
    if reg.shape[0] != anchor_centres.shape[0] or raw.shape[0] != anchor_centres.shape[0]:
        raise ValueError(
            f"model gives {reg.shape[0]} boxes for {anchor_centres.shape[0]} anchors: "
            "the blazeface anchor settings do not match this model"
        )
    scores = (1.0 / (1.0 + np.exp(-np.clip(raw.astype(np.float64), -100.0, 100.0)))).astype(
        np.float32
    )
    hit = np.flatnonzero(scores >= spec.score_threshold)
    if hit.size == 0:
        return ()
    size = float(spec.input_size)
    anc = anchor_centres[hit] * size
    r = reg[hit]
    cx, cy = r[:, 0] + anc[:, 0], r[:, 1] + anc[:, 1]
    w, h = r[:, 2], r[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    kp_count = min(spec.num_keypoints, (reg.shape[1] - 4) // 2)
    kps = (r[:, 4 : 4 + 2 * kp_count].reshape(-1, kp_count, 2) + anc[:, None, :]).astype(np.float32)
    keep = non_max_suppression(boxes, scores[hit], spec.iou_threshold, spec.max_detections)
    out_boxes = geometry.to_original(boxes[keep])
    out_kps = geometry.points_to_original(kps[keep])
    return tuple(
        Detection(
            box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            score=float(scores[hit][k]),
            label=spec.label,
            keypoints=tuple((float(p[0]), float(p[1])) for p in pts),
        )
        for k, b, pts in zip(keep, out_boxes, out_kps, strict=True)
    )
