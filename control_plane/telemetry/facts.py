"""From a wire report (``protocol.telemetry.TelemetryReport``) to the facts aggregates keep:
each released histogram with the variance of its noise, each counter likewise, the epsilon
charged and the fields withheld. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.telemetry.aggregation import HistogramFacts, ReportFacts
from control_plane.telemetry.estimates import NoisyValue, noise_variance
from protocol.telemetry import (
    HISTOGRAM_EDGES,
    SENSITIVE_FIELDS,
    ReleasedCounts,
    TelemetryReport,
    field_labels,
)

__all__ = [
    "ERROR_COUNTERS",
    "REQUEST_COUNTERS",
    "facts_from_json",
    "facts_of",
    "facts_to_json",
]

# Errors that count against a release (a model that fails or is too busy to answer);
# bad requests and refused credentials are the caller's doing.
ERROR_COUNTERS = ("errors.server_error", "errors.busy")
REQUEST_COUNTERS = tuple(f"requests.{feature}" for feature in field_labels("requests_by_feature"))
_VECTOR_PREFIX = {
    "requests_by_feature": "requests",
    "errors_by_class": "errors",
    "rag_abstentions": "rag",
}


def facts_of(report: TelemetryReport) -> ReportFacts:
    histograms: dict[str, HistogramFacts] = {}
    counters: dict[str, NoisyValue] = {}
    withheld: list[str] = []
    for name in SENSITIVE_FIELDS:
        value = report.usage.get(name)
        if not isinstance(value, ReleasedCounts):
            withheld.append(name)
            continue
        variance = noise_variance(value.mechanism, value.scale)
        if name in HISTOGRAM_EDGES:
            histograms[name] = HistogramFacts(
                counts=tuple(float(v) for v in value.values),
                variances=(variance,) * len(value.values),
            )
            continue
        prefix = _VECTOR_PREFIX[name]
        for label, count in zip(field_labels(name), value.values, strict=True):
            counters[f"{prefix}.{label}"] = NoisyValue(float(count), variance)
    operational = report.operational
    for key, exact in (
        ("restarts", operational.restarts),
        ("crashes", operational.crashes),
        ("install_failures", operational.install_failures),
        ("outbox_dropped", report.outbox_dropped),
    ):
        counters[key] = NoisyValue(float(exact))
    return ReportFacts(
        histograms=histograms,
        counters=counters,
        epsilon=report.privacy.epsilon_charged,
        withheld=tuple(withheld),
        dropped=report.outbox_dropped,
    )


def facts_to_json(facts: ReportFacts) -> dict[str, Any]:
    return {
        "h": {k: [list(h.counts), list(h.variances)] for k, h in facts.histograms.items()},
        "c": {k: [v.value, v.variance] for k, v in facts.counters.items()},
        "e": facts.epsilon,
        "w": list(facts.withheld),
        "d": facts.dropped,
    }


def facts_from_json(data: Mapping[str, Any]) -> ReportFacts:
    return ReportFacts(
        histograms={
            k: HistogramFacts(tuple(float(x) for x in c), tuple(float(x) for x in v))
            for k, (c, v) in data["h"].items()
        },
        counters={k: NoisyValue(float(v), float(var)) for k, (v, var) in data["c"].items()},
        epsilon=float(data["e"]),
        withheld=tuple(str(w) for w in data["w"]),
        dropped=int(data["d"]),
    )
