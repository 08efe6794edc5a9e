"""Telemetry reports a simulated device sends: the wire format of
:mod:`protocol.telemetry`, built from latencies and counts a test or benchmark measured.

Usage fields are clamped and noised the way the protocol declares (discrete Laplace at
``scale`` per value, epsilon ``sensitivity / scale`` per field); the noise comes from the
generator passed in (a simulation of what devices send, not a privacy release: real
devices draw it with OpenDP). A field with no data given is released as zeros plus noise
(a device that served nothing still reports), unless ``withhold`` names it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import numpy as np

from protocol.telemetry import (
    HISTOGRAM_EDGES,
    SENSITIVE_FIELDS,
    SENSITIVITY,
    BudgetState,
    OperationalFields,
    PolicyRef,
    ReleasedCounts,
    SensitiveField,
    TelemetryReport,
    UsageFields,
    Withheld,
    bucket_index,
    field_labels,
    field_length,
)

__all__ = ["CLAMP_UPPER", "discrete_laplace", "telemetry_report", "true_counts"]

CLAMP_UPPER = 100_000
_POLICY_DIGEST = hashlib.sha256(b"simulator telemetry policy").hexdigest()


def discrete_laplace(size: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Draws of the two-sided geometric distribution (discrete Laplace) at ``scale``: the
    difference of two geometric variables with ``p = 1 - e^(-1/scale)``."""
    p = 1.0 - np.exp(-1.0 / scale)
    return rng.geometric(p, size) - rng.geometric(p, size)


def true_counts(
    field: SensitiveField,
    *,
    samples: Sequence[float] = (),
    counts: Mapping[str, int] | None = None,
) -> list[int]:
    """The exact values of ``field``: a histogram of ``samples`` on the protocol's edges,
    or the labelled ``counts`` (features, error classes) as a vector."""
    values = [0] * field_length(field)
    edges = HISTOGRAM_EDGES.get(field)
    if edges is not None:
        for sample in samples:
            values[bucket_index(edges, sample)] += 1
        return values
    labels = field_labels(field)
    for label, n in (counts or {}).items():
        values[labels.index(label)] = n
    return values


def telemetry_report(
    *,
    device_id: str,
    sequence: int,
    period_start: datetime,
    period_end: datetime,
    release_id: str | None,
    device_class: str,
    rng: np.random.Generator,
    scale: float = 2.0,
    latencies: Mapping[SensitiveField, Sequence[float]] | None = None,
    requests: Mapping[str, int] | None = None,
    errors: Mapping[str, int] | None = None,
    withhold: Collection[SensitiveField] = (),
    outbox_dropped: int = 0,
    report_id: str | None = None,
) -> TelemetryReport:
    """A report with every usage field released at ``scale`` (or withheld as
    ``withhold`` says), operational fields of a healthy agent, and the budget it cost."""
    latencies = latencies or {}
    released: dict[str, ReleasedCounts | Withheld] = {}
    epsilon = 0.0
    for field in SENSITIVE_FIELDS:
        if field in withhold:
            released[field] = Withheld(reason="period_budget_spent")
            continue
        if field == "requests_by_feature":
            exact = true_counts(field, counts=requests)
        elif field == "errors_by_class":
            exact = true_counts(field, counts=errors)
        else:
            exact = true_counts(field, samples=latencies.get(field, ()))
        clamped = np.clip(np.asarray(exact, dtype=np.int64), 0, CLAMP_UPPER)
        noisy = clamped + discrete_laplace(clamped.size, scale, rng)
        field_epsilon = SENSITIVITY / scale
        epsilon += field_epsilon
        released[field] = ReleasedCounts(
            mechanism="discrete_laplace",
            scale=scale,
            epsilon=field_epsilon,
            clamp_upper=CLAMP_UPPER,
            values=[int(v) for v in noisy],
        )
    return TelemetryReport(
        report_id=report_id or secrets.token_hex(16),
        device_id=device_id,
        sequence=sequence,
        period_start=period_start,
        period_end=period_end,
        release_id=release_id,
        device_class=device_class,
        policy=PolicyRef(source="default", digest=_POLICY_DIGEST),
        operational=OperationalFields(
            agent_version="simulator",
            uptime_seconds=(period_end - period_start).total_seconds(),
            restarts=0,
            crashes=0,
            rss_bytes=200 * 1024 * 1024,
            cpu_percent=10.0,
        ),
        usage=UsageFields.model_validate(released),
        privacy=BudgetState(
            epsilon_charged=epsilon,
            period_start=period_start,
            period_end=period_end,
            period_spent=epsilon,
            period_cap=max(epsilon, 1.0) * 100,
            lifetime_spent=epsilon,
            lifetime_cap=max(epsilon, 1.0) * 10_000,
        ),
        outbox_dropped=outbox_dropped,
    )
