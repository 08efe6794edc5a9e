"""Telemetry reports: what a device tells the control plane about how it runs (protocol v1).

A device sends one :class:`TelemetryReport` per period, ``POST`` to
:data:`protocol.paths.DEVICE_TELEMETRY`, signed like every device request
(:mod:`protocol.device_auth`). ``report_id`` makes delivery exactly-once: the control
plane stores a report id once and answers a repeat with ``duplicate: true``.

A report has two halves:

- **operational** fields (:class:`OperationalFields`: versions, uptime, install state,
  restart and crash counts, memory, CPU, temperature): not usage-sensitive, always sent,
  exact;
- **usage** fields (:class:`UsageFields`): every figure that counts what users did -
  requests per feature, error and busy counts, the latency histograms (a bucket count is
  a request count), prompt lengths, RAG abstentions. Each is either
  :class:`ReleasedCounts` (clamped to ``[clamp_lower, clamp_upper]`` per value, then
  noised by the named mechanism at ``scale``; ``epsilon`` is what it cost) or
  :class:`Withheld` with the reason (the device's privacy budget is spent, or the policy
  does not release that field).

Privacy unit: one request. A request adds at most 1 to one value of each usage field
(L1 sensitivity :data:`SENSITIVITY` = 1), so a field released with the discrete
Laplace mechanism at scale ``b`` is ``1/b``-differentially private, and a report's cost
is the sum over its released fields (``privacy.epsilon_charged``).

Histograms use the fixed bucket edges below (base unit seconds, or tokens for prompt
length), in Prometheus ``le`` semantics but not cumulative: ``values[i]`` counts
observations ``x`` with ``edges[i-1] < x <= edges[i]`` and the last value counts
``x > edges[-1]``, so a histogram has ``len(edges) + 1`` values.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.messages import INT64_MAX, InstallState
from protocol.version import PROTOCOL_VERSION

__all__ = [
    "CHAT_TTFT",
    "ERROR_CLASSES",
    "FEATURES",
    "HISTOGRAM_EDGES",
    "LATENCY_BUCKETS_SECONDS",
    "MAX_TELEMETRY_REPORT_BYTES",
    "PROMPT_TOKEN_BUCKETS",
    "SENSITIVE_FIELDS",
    "SENSITIVITY",
    "TELEMETRY_SCHEMA_VERSION",
    "TOKEN_TIME_BUCKETS_SECONDS",
    "BudgetState",
    "FieldValue",
    "Mechanism",
    "OperationalFields",
    "PolicyRef",
    "PolicySource",
    "ReleasedCounts",
    "SensitiveField",
    "TelemetryAck",
    "TelemetryReport",
    "UsageFields",
    "Withheld",
    "WithheldReason",
    "bucket_index",
    "discrete_laplace_variance",
    "field_labels",
    "field_length",
]

TELEMETRY_SCHEMA_VERSION: Literal[1] = 1
# A report is a few KiB; the control plane refuses a body above this before parsing it.
MAX_TELEMETRY_REPORT_BYTES = 64 * 1024

# Request latency (TTFT, whole completions, embeddings, vision, RAG queries): 5 ms to
# 120 s, about 1.5x apart, so that a 20% p95 regression moves across a bucket edge.
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
)  # fmt: skip
# Time per output token (a request's decode time / its output tokens): 1 ms to 5 s.
TOKEN_TIME_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
)  # fmt: skip
# Prompt length in tokens.
PROMPT_TOKEN_BUCKETS: tuple[float, ...] = (
    16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768,
)  # fmt: skip

FEATURES: tuple[str, ...] = ("chat", "completion", "embedding", "vision", "rag")
# 400/404/413/415/422 | 401/403 | 429 (local rate limit) | 503 (model queue full) | 5xx
ERROR_CLASSES: tuple[str, ...] = (
    "bad_request",
    "unauthorized",
    "rate_limited",
    "busy",
    "server_error",
)

SensitiveField = Literal[
    "requests_by_feature",
    "errors_by_class",
    "chat_ttft_seconds",
    "chat_time_per_output_token_seconds",
    "completion_seconds",
    "embedding_seconds",
    "vision_seconds",
    "rag_seconds",
    "prompt_tokens",
    "rag_abstentions",
]
CHAT_TTFT: SensitiveField = "chat_ttft_seconds"

# Histogram fields and their edges; the other usage fields are plain count vectors.
HISTOGRAM_EDGES: dict[SensitiveField, tuple[float, ...]] = {
    "chat_ttft_seconds": LATENCY_BUCKETS_SECONDS,
    "chat_time_per_output_token_seconds": TOKEN_TIME_BUCKETS_SECONDS,
    "completion_seconds": LATENCY_BUCKETS_SECONDS,
    "embedding_seconds": LATENCY_BUCKETS_SECONDS,
    "vision_seconds": LATENCY_BUCKETS_SECONDS,
    "rag_seconds": LATENCY_BUCKETS_SECONDS,
    "prompt_tokens": PROMPT_TOKEN_BUCKETS,
}
_VECTOR_LABELS: dict[SensitiveField, tuple[str, ...]] = {
    "requests_by_feature": FEATURES,
    "errors_by_class": ERROR_CLASSES,
    "rag_abstentions": ("abstained",),
}
SENSITIVE_FIELDS: tuple[SensitiveField, ...] = get_args(SensitiveField)
# One request changes each usage field by at most this much in L1 (the privacy unit).
SENSITIVITY = 1

MAX_FIELD_VALUES = 64
# A noisy count is bounded by clamp_upper plus noise; anything beyond this is a bad report.
MAX_ABS_COUNT = 10**12

Mechanism = Literal["discrete_laplace"]
WithheldReason = Literal["period_budget_spent", "lifetime_budget_spent", "not_in_policy"]
PolicySource = Literal["default", "release", "remote_config"]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def field_length(field: SensitiveField) -> int:
    """How many values a released ``field`` carries."""
    edges = HISTOGRAM_EDGES.get(field)
    return len(edges) + 1 if edges is not None else len(_VECTOR_LABELS[field])


def field_labels(field: SensitiveField) -> tuple[str, ...]:
    """A name for each value of ``field``: the ``le`` edge for histograms (``+Inf`` last),
    the feature / error class otherwise."""
    edges = HISTOGRAM_EDGES.get(field)
    if edges is None:
        return _VECTOR_LABELS[field]
    return (*(f"{e:g}" for e in edges), "+Inf")


def bucket_index(edges: tuple[float, ...], value: float) -> int:
    """The histogram value an observation belongs to (``len(edges)`` above the last)."""
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if value <= edges[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def discrete_laplace_variance(scale: float) -> float:
    """Variance of the discrete Laplace noise at ``scale`` (what one released value adds):
    ``2 e^{-1/b} / (1 - e^{-1/b})^2``, a little under the continuous ``2 b^2``."""
    q = math.exp(-1.0 / scale)
    return 2.0 * q / (1.0 - q) ** 2


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleasedCounts(_Message):
    """A usage field as released: each true count clamped to ``[clamp_lower,
    clamp_upper]``, then ``mechanism`` noise at ``scale`` added to each value. Values may
    be negative (noise is never clipped: clipping would bias a fleet sum)."""

    status: Literal["released"] = "released"
    mechanism: Mechanism
    scale: float = Field(gt=0.0, le=1e9)
    epsilon: float = Field(gt=0.0, le=100.0)
    sensitivity: int = Field(default=SENSITIVITY, ge=1, le=1_000_000)
    clamp_lower: int = Field(default=0, ge=0, le=0)
    clamp_upper: int = Field(ge=1, le=10**9)
    values: list[Annotated[int, Field(ge=-MAX_ABS_COUNT, le=MAX_ABS_COUNT)]] = Field(
        min_length=1, max_length=MAX_FIELD_VALUES
    )


class Withheld(_Message):
    """A usage field the device did not release, and why."""

    status: Literal["withheld"] = "withheld"
    reason: WithheldReason


FieldValue = Annotated[ReleasedCounts | Withheld, Field(discriminator="status")]


class UsageFields(_Message):
    """Every usage-sensitive figure of a period, each released with noise or withheld."""

    requests_by_feature: FieldValue
    errors_by_class: FieldValue
    chat_ttft_seconds: FieldValue
    chat_time_per_output_token_seconds: FieldValue
    completion_seconds: FieldValue
    embedding_seconds: FieldValue
    vision_seconds: FieldValue
    rag_seconds: FieldValue
    prompt_tokens: FieldValue
    rag_abstentions: FieldValue

    @model_validator(mode="after")
    def _lengths(self) -> UsageFields:
        for name in SENSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, ReleasedCounts) and len(value.values) != field_length(name):
                raise ValueError(
                    f"usage field {name} carries {len(value.values)} values; protocol v1"
                    f" defines {field_length(name)}"
                )
        return self

    def get(self, field: SensitiveField) -> ReleasedCounts | Withheld:
        value: ReleasedCounts | Withheld = getattr(self, field)
        return value

    def epsilon_spent(self) -> float:
        """The sum of the released fields' epsilons (basic composition)."""
        total = 0.0
        for name in SENSITIVE_FIELDS:
            value = self.get(name)
            if isinstance(value, ReleasedCounts):
                total += value.epsilon
        return total


class OperationalFields(_Message):
    """How the device runs: not usage-sensitive, always sent, exact."""

    agent_version: str = Field(min_length=1, max_length=64)
    protocol_version: int = Field(default=PROTOCOL_VERSION, ge=1, le=1000)
    runtime_versions: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="version of each runtime library present, e.g. llama_cpp, onnxruntime",
    )
    uptime_seconds: float = Field(ge=0.0, le=1e10, description="since the agent process started")
    restarts: int = Field(ge=0, le=INT64_MAX, description="agent starts within the period")
    crashes: int = Field(
        ge=0, le=INT64_MAX, description="starts within the period after an unclean stop"
    )
    install_state: InstallState | None = Field(
        default=None, description="the last install step reported, None if none yet"
    )
    install_failures: int = Field(
        default=0, ge=0, le=INT64_MAX, description="failed or rolled-back installs in the period"
    )
    models_loaded: int = Field(default=0, ge=0, le=1024)
    rss_bytes: int = Field(ge=0, le=INT64_MAX)
    cpu_percent: float = Field(
        ge=0.0, le=409_600.0, description="agent process CPU over the period, 100 = one core"
    )
    load_average_1m: float | None = Field(default=None, ge=0.0, le=1e6)
    temperature_celsius: float | None = Field(
        default=None, ge=-100.0, le=250.0, description="hottest sensor; None where none reports"
    )

    @field_validator("runtime_versions")
    @classmethod
    def _versions_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _VERSION_KEY.match(key) or not (1 <= len(value) <= 64):
                raise ValueError(
                    "runtime_versions keys are 1-64 of [A-Za-z0-9._-], values 1-64 characters"
                )
        return v


class BudgetState(_Message):
    """The device's epsilon ledger after this report was charged."""

    epsilon_charged: float = Field(ge=0.0, le=100.0, description="what this report cost")
    period_start: datetime
    period_end: datetime
    period_spent: float = Field(ge=0.0, le=1e6)
    period_cap: float = Field(gt=0.0, le=1e6)
    lifetime_spent: float = Field(ge=0.0, le=1e9)
    lifetime_cap: float = Field(gt=0.0, le=1e9)


class PolicyRef(_Message):
    """Which telemetry policy produced the report."""

    source: PolicySource
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of its canonical JSON")


class TelemetryReport(_Message):
    """One period of one device. ``report_id`` makes delivery exactly-once."""

    schema_version: Literal[1] = TELEMETRY_SCHEMA_VERSION
    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    device_id: str = Field(min_length=1, max_length=64)
    sequence: int = Field(ge=1, le=INT64_MAX, description="per device, +1 per report built")
    period_start: datetime
    period_end: datetime
    release_id: str | None = Field(default=None, max_length=64, description="serving release")
    device_class: str = Field(
        min_length=1, max_length=64, description="the device's hw= tag, else '<arch>-<os>'"
    )
    policy: PolicyRef
    operational: OperationalFields
    usage: UsageFields
    privacy: BudgetState
    outbox_dropped: int = Field(
        ge=0,
        le=INT64_MAX,
        description="reports the outbox dropped (full) since the last report was built",
    )

    @field_validator("device_id")
    @classmethod
    def _device_id_ok(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("device_id must be 1-64 of [A-Za-z0-9_-]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TelemetryReport:
        if self.period_end < self.period_start:
            raise ValueError("period_end is before period_start")
        spent = self.usage.epsilon_spent()
        if not math.isclose(spent, self.privacy.epsilon_charged, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"privacy.epsilon_charged {self.privacy.epsilon_charged} is not the sum of"
                f" the released fields' epsilons ({spent})"
            )
        return self


class TelemetryAck(_Message):
    report_id: str
    duplicate: bool
