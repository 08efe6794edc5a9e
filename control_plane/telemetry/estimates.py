"""Estimates from many devices' privacy-noised telemetry: the pure core (values in, values
out; the random generator for the bootstrap is passed in).

A device releases a usage-sensitive count as ``clamp(true, lo, hi) + noise`` where the
noise comes from a declared mechanism and scale (``protocol.telemetry``). The noise has
mean zero, so a sum of released values is an unbiased estimate of the sum of clamped true
values, and its variance is the sum of each mechanism's variance. A latency histogram whose
bucket counts were released that way is summed bucket by bucket; buckets not
significantly above zero are dropped (the tail's noise is not slow requests), and its
quantiles come with an interval from a parametric bootstrap over the sampling spread and
the summed noise. No estimate and no interval bound is ever negative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from protocol.telemetry import discrete_laplace_variance

__all__ = [
    "Z_95",
    "CountEstimate",
    "NoisyValue",
    "QuantileEstimate",
    "RateEstimate",
    "denoised_quantile",
    "estimate_quantile",
    "estimate_rate",
    "estimate_sum",
    "interpolated_quantile",
    "noise_variance",
]

Z_95 = 1.959963984540054  # the two-sided 95% normal quantile
BOOTSTRAP_DRAWS = 400


class UnknownMechanismError(ValueError):
    """A report declares a noise mechanism whose variance this control plane cannot state."""


def noise_variance(mechanism: str, scale: float) -> float:
    """The variance of one draw of ``mechanism`` at ``scale`` (the parameters a report
    declares): ``discrete_laplace`` is the two-sided geometric OpenDP samples for integers
    (``protocol.telemetry.discrete_laplace_variance``, about ``2 b²``); ``none`` is an exact
    value."""
    if not math.isfinite(scale) or scale < 0:
        raise UnknownMechanismError(f"noise scale {scale!r} is not a finite number >= 0")
    if mechanism == "none" or scale == 0:
        return 0.0
    if mechanism == "discrete_laplace":
        return discrete_laplace_variance(scale)
    raise UnknownMechanismError(
        f"unknown noise mechanism {mechanism!r}; known: discrete_laplace, none"
    )


@dataclass(frozen=True)
class NoisyValue:
    """One released value and the variance of the noise added to it (0 when exact)."""

    value: float
    variance: float = 0.0


@dataclass(frozen=True)
class CountEstimate:
    """A fleet total: the estimate, its noise variance and a 95% interval, all >= 0."""

    estimate: float
    variance: float
    low: float
    high: float
    reports: int

    @property
    def stddev(self) -> float:
        return math.sqrt(self.variance)

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def estimate_sum(values: Iterable[NoisyValue], *, z: float = Z_95) -> CountEstimate:
    """The sum of released values with the interval ``sum ± z·sqrt(Σ variance)``, clipped
    at zero (a count is never negative, whatever the noise drew)."""
    total = 0.0
    variance = 0.0
    n = 0
    for item in values:
        total += item.value
        variance += item.variance
        n += 1
    half = z * math.sqrt(variance)
    return CountEstimate(
        estimate=max(0.0, total),
        variance=variance,
        low=max(0.0, total - half),
        high=max(0.0, total + half),
        reports=n,
    )


@dataclass(frozen=True)
class RateEstimate:
    """A ratio of two fleet totals (e.g. errors per request) with a delta-method 95%
    interval clipped to [0, 1]; ``None`` values when the denominator is estimated as 0."""

    rate: float | None
    low: float | None
    high: float | None
    numerator: CountEstimate
    denominator: CountEstimate


def estimate_rate(
    numerator: CountEstimate, denominator: CountEstimate, *, z: float = Z_95
) -> RateEstimate:
    """``numerator / denominator`` with the noise of both and the binomial spread of the
    rate itself (delta method), bounded to [0, 1]."""
    n = denominator.estimate
    if n <= 0:
        return RateEstimate(None, None, None, numerator, denominator)
    rate = min(1.0, numerator.estimate / n)
    variance = (
        numerator.variance / n**2
        + (rate**2) * denominator.variance / n**2
        + rate * (1 - rate) / max(n, 1.0)
    )
    half = z * math.sqrt(variance)
    return RateEstimate(
        rate=rate,
        low=max(0.0, rate - half),
        high=min(1.0, rate + half),
        numerator=numerator,
        denominator=denominator,
    )


@dataclass(frozen=True)
class QuantileEstimate:
    """A latency quantile (seconds) from summed histograms, with a 95% interval.

    ``observations`` is the estimated number of samples behind it (noisy counts summed and
    clipped). ``open_ended`` says the quantile fell in the last bucket (beyond the last
    finite edge): the value is then that edge, a lower bound.
    """

    q: float
    value: float | None
    low: float | None
    high: float | None
    observations: float
    devices: int
    open_ended: bool = False

    def describe(self) -> str:
        if self.value is None:
            return "no data"
        bound = ">=" if self.open_ended else ""
        return (
            f"{bound}{self.value * 1000:.0f} ms"
            f" [95% CI {(self.low or 0) * 1000:.0f}-{(self.high or 0) * 1000:.0f} ms]"
        )


def interpolated_quantile(counts: Sequence[float], edges: Sequence[float], q: float) -> float:
    """The ``q`` quantile of a histogram with upper bucket edges ``edges`` (the last bucket,
    past ``edges[-1]``, is open), interpolating linearly inside the bucket; ``nan`` when
    the histogram is empty. Noisy counts are welcome (see :func:`_quantiles`)."""
    return float(_quantiles(np.asarray([counts], dtype=float), np.asarray(edges, float), q)[0])


def _quantiles(counts: np.ndarray, edges: np.ndarray, q: float) -> np.ndarray:
    """Row-wise interpolated quantiles of ``counts`` (shape draws x buckets, buckets =
    len(edges) + 1).

    Noisy counts are not clipped bucket by bucket: the noise is mean-zero, so the running
    sum of raw counts is an unbiased estimate of the cumulative distribution, while
    clipping each bucket at zero would pile up positive noise in the empty tail buckets
    and drag a p95 upwards. The running sum is made a distribution function instead:
    bounded to [0, total] and non-decreasing.
    """
    total = counts.sum(axis=1)
    cum = np.cumsum(counts, axis=1)
    cum = np.maximum.accumulate(np.clip(cum, 0.0, np.maximum(total, 0.0)[:, None]), axis=1)
    mass = np.diff(cum, axis=1, prepend=0.0)
    rank = q * total
    # first bucket whose cumulative count reaches the rank
    index = np.argmax(cum >= rank[:, None] - 1e-9, axis=1)
    lower_edges = np.concatenate([[0.0], edges])
    upper_edges = np.concatenate([edges, [edges[-1]]])  # open bucket: its lower edge
    rows = np.arange(counts.shape[0])
    inside = mass[rows, index]
    before = cum[rows, index] - inside
    safe = np.where(inside > 0, inside, 1.0)
    fraction = np.clip(np.where(inside > 0, (rank - before) / safe, 0.0), 0.0, 1.0)
    low_edge = lower_edges[index]
    value = low_edge + (upper_edges[index] - low_edge) * fraction
    return np.where(total > 0, value, np.nan)


SIGNIFICANCE_Z = 3.0


def _denoised(counts: np.ndarray, noise_sd: np.ndarray) -> np.ndarray:
    """Bucket counts with the ones not significantly above zero (at most
    :data:`SIGNIFICANCE_Z` noise deviations) set to zero. Post-processing of released
    values, so it costs no privacy; it stops the noise of the many empty tail buckets
    from passing for slow requests (which would drag a p95 far to the right)."""
    return np.where(counts > SIGNIFICANCE_Z * noise_sd, counts, 0.0)


def denoised_quantile(
    counts: Sequence[float], variances: Sequence[float], edges: Sequence[float], q: float
) -> float | None:
    """The point estimate of :func:`estimate_quantile` without the interval (cheap)."""
    kept = _denoised(
        np.asarray(counts, float), np.sqrt(np.clip(np.asarray(variances, float), 0, None))
    )
    value = float(_quantiles(kept[None, :], np.asarray(edges, float), q)[0])
    return None if math.isnan(value) else value


def estimate_quantile(
    counts: Sequence[float],
    variances: Sequence[float],
    edges: Sequence[float],
    q: float,
    rng: np.random.Generator,
    *,
    devices: int,
    draws: int = BOOTSTRAP_DRAWS,
) -> QuantileEstimate:
    """The ``q`` quantile of summed (noisy) bucket counts and a 95% interval.

    Buckets not significantly above zero are dropped first (:func:`_denoised`). The
    interval is a parametric bootstrap of that whole estimator: each draw takes the
    released counts (clipped at zero) as the truth, redraws every bucket with the privacy
    noise's variance (summed over the reports) plus its own sampling spread (Poisson: its
    count), drops what is not significant and takes the quantile; the interval is the
    2.5th and 97.5th percentiles of the draws, widened to contain the estimate. Where the
    noise swamps the tail, the interval says so by being wide.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile {q} is not in (0, 1)")
    if len(counts) != len(edges) + 1 or len(variances) != len(counts):
        raise ValueError(
            f"{len(counts)} bucket counts and {len(variances)} variances do not fit"
            f" {len(edges)} edges (one more bucket than edges: the last is open)"
        )
    observed = np.asarray(counts, dtype=float)
    noise_sd = np.sqrt(np.clip(np.asarray(variances, dtype=float), 0.0, None))
    edge_array = np.asarray(edges, dtype=float)
    kept = _denoised(observed, noise_sd)
    total = float(kept.sum())
    if total <= 0:
        return QuantileEstimate(q, None, None, None, 0.0, devices)
    value = float(_quantiles(kept[None, :], edge_array, q)[0])
    truth = np.clip(observed, 0.0, None)
    spread = np.sqrt(noise_sd**2 + truth)
    sample = truth + rng.normal(0.0, 1.0, size=(draws, truth.size)) * spread
    boot = _quantiles(_denoised(sample, noise_sd), edge_array, q)
    boot = boot[np.isfinite(boot)]
    low, high = (value, value) if boot.size == 0 else np.percentile(boot, [2.5, 97.5])
    cum = np.cumsum(kept)
    open_ended = bool(cum[-2] < q * total - 1e-9)
    return QuantileEstimate(
        q=q,
        value=value,
        low=max(0.0, min(float(low), value)),
        high=max(float(high), value),
        observations=total,
        devices=devices,
        open_ended=open_ended,
    )
