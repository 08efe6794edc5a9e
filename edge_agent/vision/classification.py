"""Classifier scores -> top-k labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BadRequestError
from edge_agent.vision.spec import ScoreOutput

MAX_TOP_K = 100


@dataclass(frozen=True)
class Prediction:
    """One class: its index in the model output, its label and its probability."""

    index: int
    label: str
    score: float


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Numerically stable softmax over the last axis."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    out: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def check_top_k(top_k: int) -> int:
    """Validate a caller's ``top_k``."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadRequestError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return top_k


def top_k(
    output: npt.NDArray[np.floating],
    labels: Sequence[str],
    k: int,
    scores: ScoreOutput = "logits",
) -> tuple[Prediction, ...]:
    """The ``k`` most likely classes of one image's output vector (batch axis allowed)."""
    vec = np.asarray(output, dtype=np.float64).reshape(-1)
    if len(labels) != vec.size:
        raise ValueError(f"model gives {vec.size} scores but {len(labels)} labels are declared")
    probs = softmax(vec) if scores == "logits" else vec
    k = min(check_top_k(k), vec.size)
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return tuple(Prediction(int(i), labels[int(i)], float(probs[i])) for i in idx)
