"""Latency percentiles and output agreement between two versions of a model."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Latency:
    """Per-call latency in milliseconds."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def latency_of(samples_ms: Sequence[float]) -> Latency:
    """Percentiles of measured samples (pure)."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    return Latency(
        p50_ms=float(np.percentile(arr, 50)),
        p95_ms=float(np.percentile(arr, 95)),
        mean_ms=float(arr.mean()),
        n=int(arr.size),
    )


def time_calls(
    calls: Sequence[Callable[[], object]], *, rounds: int = 1, warmup: int = 3
) -> Latency:
    """Time each call ``rounds`` times after ``warmup`` untimed calls."""
    for call in list(calls)[:warmup]:
        call()
    samples: list[float] = []
    for _ in range(rounds):
        for call in calls:
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1e3)
    return latency_of(samples)


def top1_agreement(
    reference: Sequence[npt.NDArray[Any]], candidate: Sequence[npt.NDArray[Any]]
) -> float:
    """Share of inputs where both models pick the same top-1 class."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("agreement needs the same, non-zero number of outputs on both sides")
    same = sum(
        int(np.argmax(a.reshape(-1)) == np.argmax(b.reshape(-1)))
        for a, b in zip(reference, candidate, strict=True)
    )
    return same / len(reference)


def mean_cosine(
    reference: Sequence[npt.NDArray[Any]], candidate: Sequence[npt.NDArray[Any]]
) -> float:
    """Mean cosine similarity of flattened outputs (for detectors and dense maps)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("agreement needs the same, non-zero number of outputs on both sides")
    sims = []
    for a, b in zip(reference, candidate, strict=True):
        x = a.reshape(-1).astype(np.float64)
        y = b.reshape(-1).astype(np.float64)
        denom = float(np.linalg.norm(x) * np.linalg.norm(y))
        sims.append(float(x @ y) / denom if denom > 0 else float(np.allclose(x, y)))
    return float(np.mean(sims))
