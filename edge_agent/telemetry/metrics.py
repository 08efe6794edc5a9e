"""What the agent counts while it serves: one in-memory registry, read two ways.

:class:`AgentMetrics` keeps cumulative counts since the process started (a few integer
additions under a lock per request). The Prometheus endpoint reads them as they are; the
telemetry reporter takes a :class:`MetricsSnapshot` at the end of each period and sends
the difference from the previous one (:meth:`MetricsSnapshot.since`).

Every usage field of :mod:`protocol.telemetry` is a vector of counts here, indexed as on
the wire (histogram buckets by :func:`protocol.telemetry.bucket_index`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.telemetry import (
    ERROR_CLASSES,
    FEATURES,
    HISTOGRAM_EDGES,
    SENSITIVE_FIELDS,
    SensitiveField,
    bucket_index,
    field_length,
)

__all__ = ["AgentMetrics", "MetricsSnapshot", "error_class"]

_FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}
_ERROR_INDEX = {name: i for i, name in enumerate(ERROR_CLASSES)}


def error_class(status: int) -> str | None:
    """The wire error class of an HTTP status (None: not an error)."""
    if status < 400:
        return None
    if status in (401, 403):
        return "unauthorized"
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "busy"
    if status >= 500:
        return "server_error"
    return "bad_request"


@dataclass(frozen=True)
class MetricsSnapshot:
    """Cumulative counts at one moment (or, from :meth:`since`, over a period)."""

    counts: Mapping[SensitiveField, tuple[int, ...]]
    sums: Mapping[SensitiveField, float]  # histogram observation sums (Prometheus _sum)
    output_tokens: int
    decode_seconds: float

    def since(self, earlier: MetricsSnapshot | None) -> MetricsSnapshot:
        """What was counted between ``earlier`` and this snapshot."""
        if earlier is None:
            return self
        return MetricsSnapshot(
            counts={
                f: tuple(a - b for a, b in zip(v, earlier.counts[f], strict=True))
                for f, v in self.counts.items()
            },
            sums={f: v - earlier.sums.get(f, 0.0) for f, v in self.sums.items()},
            output_tokens=self.output_tokens - earlier.output_tokens,
            decode_seconds=self.decode_seconds - earlier.decode_seconds,
        )

    @classmethod
    def empty(cls) -> MetricsSnapshot:
        return cls(
            counts={f: (0,) * field_length(f) for f in SENSITIVE_FIELDS},
            sums={f: 0.0 for f in HISTOGRAM_EDGES},
            output_tokens=0,
            decode_seconds=0.0,
        )


class AgentMetrics:
    """Thread-safe counters of everything the telemetry report and ``/metrics`` show."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[SensitiveField, list[int]] = {
            f: [0] * field_length(f) for f in SENSITIVE_FIELDS
        }
        self._sums: dict[SensitiveField, float] = {f: 0.0 for f in HISTOGRAM_EDGES}
        self._output_tokens = 0
        self._decode_seconds = 0.0

    def observe(self, field: SensitiveField, value: float) -> None:
        """One observation of a histogram field (seconds, or tokens for prompt_tokens)."""
        index = bucket_index(HISTOGRAM_EDGES[field], value)
        with self._lock:
            self._counts[field][index] += 1
            self._sums[field] += value

    def request(self, feature: str) -> None:
        with self._lock:
            self._counts["requests_by_feature"][_FEATURE_INDEX[feature]] += 1

    def error(self, klass: str) -> None:
        with self._lock:
            self._counts["errors_by_class"][_ERROR_INDEX[klass]] += 1

    def rag_abstention(self) -> None:
        with self._lock:
            self._counts["rag_abstentions"][0] += 1

    def generation(
        self,
        *,
        chat: bool,
        ttft_seconds: float | None,
        decode_seconds: float,
        prompt_tokens: int,
        output_tokens: int,
    ) -> None:
        """One finished generation: TTFT and time per output token (chat), prompt length,
        tokens generated (tokens/s is output tokens over decode seconds)."""
        with self._lock:
            if chat and ttft_seconds is not None:
                self._observe_locked("chat_ttft_seconds", ttft_seconds)
            if chat and output_tokens > 1:
                self._observe_locked(
                    "chat_time_per_output_token_seconds", decode_seconds / (output_tokens - 1)
                )
            if prompt_tokens > 0:
                self._observe_locked("prompt_tokens", float(prompt_tokens))
            self._output_tokens += output_tokens
            self._decode_seconds += decode_seconds

    def _observe_locked(self, field: SensitiveField, value: float) -> None:
        self._counts[field][bucket_index(HISTOGRAM_EDGES[field], value)] += 1
        self._sums[field] += value

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(
                counts={f: tuple(v) for f, v in self._counts.items()},
                sums=dict(self._sums),
                output_tokens=self._output_tokens,
                decode_seconds=self._decode_seconds,
            )
