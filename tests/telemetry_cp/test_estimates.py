"""The estimates behind every telemetry number: sums of noisy counts with honest
intervals, quantiles of noisy histograms, never a negative count. Noise is simulated with
the protocol's mechanism (discrete Laplace) at the declared scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.telemetry.aggregation import Aggregate, HistogramFacts, ReportFacts
from control_plane.telemetry.estimates import (
    NoisyValue,
    UnknownMechanismError,
    estimate_quantile,
    estimate_rate,
    estimate_sum,
    interpolated_quantile,
    noise_variance,
)
from protocol.telemetry import LATENCY_BUCKETS_SECONDS, bucket_index
from simulator.telemetry import discrete_laplace

EDGES = LATENCY_BUCKETS_SECONDS


def _histogram(samples: np.ndarray) -> np.ndarray:
    return np.bincount(
        [bucket_index(EDGES, float(s)) for s in samples], minlength=len(EDGES) + 1
    ).astype(float)


def test_the_declared_variance_is_the_variance_of_the_noise() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.5, 2.0, 10.0):
        draws = discrete_laplace(200_000, scale, rng)
        assert np.var(draws) == pytest.approx(noise_variance("discrete_laplace", scale), rel=0.03)
    with pytest.raises(UnknownMechanismError, match="unknown noise mechanism 'gauss'"):
        noise_variance("gauss", 1.0)


def test_a_fleet_count_interval_covers_the_true_count_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    scale, devices, runs = 10.0, 1000, 400
    variance = noise_variance("discrete_laplace", scale)
    covered = 0
    for _ in range(runs):
        true = rng.poisson(3, devices)
        noisy = true + discrete_laplace(devices, scale, rng)
        estimate = estimate_sum(NoisyValue(float(v), variance) for v in noisy)
        covered += estimate.covers(float(true.sum()))
    assert 0.92 <= covered / runs <= 0.98


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(-(10**6), 10**6), max_size=50),
    variance=st.floats(0, 1e6),
)
def test_a_count_is_never_negative_and_its_interval_holds_it(
    values: list[int], variance: float
) -> None:
    estimate = estimate_sum(NoisyValue(float(v), variance) for v in values)
    assert 0.0 <= estimate.low <= estimate.estimate <= estimate.high
    assert estimate.reports == len(values)
    if sum(values) >= 0:
        assert estimate.estimate == pytest.approx(sum(values))


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(-50, 5000), min_size=len(EDGES) + 1, max_size=len(EDGES) + 1),
    variance=st.floats(0, 500),
    q=st.floats(0.05, 0.99),
)
def test_a_quantile_is_inside_the_buckets_and_inside_its_interval(
    counts: list[int], variance: float, q: float
) -> None:
    estimate = estimate_quantile(
        counts, [variance] * len(counts), EDGES, q, np.random.default_rng(0), devices=3, draws=50
    )
    if estimate.value is None:
        assert estimate.low is None and estimate.observations == 0
        return
    assert estimate.low is not None and estimate.high is not None
    assert 0.0 <= estimate.low <= estimate.value <= estimate.high <= EDGES[-1]
    assert estimate.observations > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.001, 200.0), min_size=1, max_size=300), st.floats(0.05, 0.99))
def test_an_exact_histogram_quantile_lands_in_the_bucket_of_the_sample_quantile(
    samples: list[float], q: float
) -> None:
    counts = _histogram(np.asarray(samples))
    value = interpolated_quantile(list(counts), EDGES, q)
    ordered = sorted(samples)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    bucket = bucket_index(EDGES, ordered[rank])
    low = 0.0 if bucket == 0 else EDGES[bucket - 1]
    high = EDGES[bucket] if bucket < len(EDGES) else EDGES[-1]
    assert low - 1e-9 <= value <= high + 1e-9


def test_p95_of_1000_noisy_devices_is_close_and_its_interval_covers_the_truth() -> None:
    """Latencies from a lognormal (median 300 ms), 50 requests per device, each bucket
    released with discrete Laplace at scale 2: the interval covers the population p95
    (on the same buckets) in at least 90% of runs, and the estimate is within 10%."""
    rng = np.random.default_rng(2)
    mu, sigma = math.log(0.3), 0.5
    population = _histogram(rng.lognormal(mu, sigma, 400_000))
    truth = interpolated_quantile(list(population), EDGES, 0.95)
    scale, devices, runs = 2.0, 1000, 40
    variance = noise_variance("discrete_laplace", scale)
    covered, errors = 0, []
    for _ in range(runs):
        exact = np.bincount(
            np.searchsorted(EDGES, rng.lognormal(mu, sigma, devices * 50), side="left"),
            minlength=len(EDGES) + 1,
        )
        noisy = exact + discrete_laplace((len(EDGES) + 1) * devices, scale, rng).reshape(
            devices, -1
        ).sum(axis=0)
        estimate = estimate_quantile(
            list(noisy), [variance * devices] * len(noisy), EDGES, 0.95, rng, devices=devices
        )
        assert estimate.value is not None and estimate.low is not None and estimate.high is not None
        covered += estimate.low <= truth <= estimate.high
        errors.append(abs(estimate.value - truth) / truth)
    assert covered / runs >= 0.9
    assert float(np.median(errors)) < 0.1


def test_an_error_rate_is_bounded_to_0_1_and_says_when_there_is_no_denominator() -> None:
    none = estimate_rate(estimate_sum([NoisyValue(5, 4)]), estimate_sum([NoisyValue(-3, 4)]))
    assert none.rate is None
    rate = estimate_rate(estimate_sum([NoisyValue(120, 8)]), estimate_sum([NoisyValue(100, 8)]))
    assert rate.rate == 1.0 and rate.high == 1.0 and rate.low is not None and rate.low >= 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(-5, 5)), min_size=1, max_size=20))
def test_aggregates_merge_like_one_big_fold_and_round_trip_through_storage(
    reports: list[tuple[int, int]],
) -> None:
    facts = [
        ReportFacts(
            histograms={"h": HistogramFacts((float(a), float(b)), (2.0, 2.0))},
            counters={"requests.chat": NoisyValue(float(a + b), 2.0)},
            epsilon=0.5,
            withheld=("rag_seconds",) if a % 2 else (),
        )
        for a, b in reports
    ]
    whole = Aggregate()
    for item in facts:
        whole.add(item)
    halves = [Aggregate(), Aggregate()]
    for i, item in enumerate(facts):
        halves[i % 2].add(item)
    merged = Aggregate.of(Aggregate.from_json(h.as_json()) for h in halves)
    assert merged.as_json() == Aggregate.from_json(whole.as_json()).as_json()
    assert merged.count("requests.chat").variance == pytest.approx(2.0 * len(facts))
    assert merged.epsilon == pytest.approx(0.5 * len(facts))


def test_the_noise_of_empty_tail_buckets_does_not_pass_for_slow_requests() -> None:
    """100 devices, 20 requests each (about 300 ms), scale 2: the twenty empty buckets up
    to 120 s carry only noise; read as requests, they would put the p95 seconds away."""
    rng = np.random.default_rng(3)
    scale, devices = 2.0, 100
    variance = noise_variance("discrete_laplace", scale) * devices
    errors = []
    for _ in range(30):
        samples = rng.lognormal(math.log(0.3), 0.3, devices * 20)
        exact = _histogram(samples)
        noise = discrete_laplace((len(EDGES) + 1) * devices, scale, rng).reshape(devices, -1)
        noisy = exact + noise.sum(axis=0)
        truth = interpolated_quantile(list(exact), EDGES, 0.95)
        estimate = estimate_quantile(
            list(noisy), [variance] * len(noisy), EDGES, 0.95, rng, devices=devices, draws=50
        )
        assert estimate.value is not None
        errors.append(abs(estimate.value - truth) / truth)
    assert max(errors) < 0.5
    assert float(np.median(errors)) < 0.1
