"""Detections and non-maximum suppression."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Detection:
    """One object: box in original-image pixels (x_min, y_min, x_max, y_max), score, label."""

    box: tuple[float, float, float, float]
    score: float
    label: str
    keypoints: tuple[tuple[float, float], ...] = ()


def iou(box: npt.NDArray[np.float32], others: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Intersection over union of one box against many (x_min, y_min, x_max, y_max)."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    out: npt.NDArray[np.float32] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return out.astype(np.float32)


def non_max_suppression(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    iou_threshold: float,
    max_detections: int,
) -> list[int]:
    """Indices of kept boxes, best first: greedy NMS."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou(boxes[best], boxes[rest]) <= iou_threshold]
    return keep
