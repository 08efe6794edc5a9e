"""The telemetry report's wire contract: what a well-formed report is, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.remote_config import config_problems
from protocol.telemetry import (
    LATENCY_BUCKETS_SECONDS,
    SENSITIVE_FIELDS,
    BudgetState,
    OperationalFields,
    PolicyRef,
    ReleasedCounts,
    TelemetryReport,
    UsageFields,
    Withheld,
    bucket_index,
    discrete_laplace_variance,
    field_labels,
    field_length,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _released(field: str, epsilon: float = 0.1, n: int | None = None) -> ReleasedCounts:
    return ReleasedCounts(
        mechanism="discrete_laplace",
        scale=1 / epsilon,
        epsilon=epsilon,
        clamp_upper=1000,
        values=[1] * (field_length(field) if n is None else n),  # type: ignore[arg-type] # str literal
    )


def report_fields(**overrides: Any) -> dict[str, Any]:
    usage = {f: _released(f) for f in SENSITIVE_FIELDS}
    usage["rag_abstentions"] = Withheld(reason="period_budget_spent")  # type: ignore[assignment]
    fields: dict[str, Any] = dict(
        report_id="0" * 32,
        device_id="dev-1",
        sequence=1,
        period_start=NOW - timedelta(hours=1),
        period_end=NOW,
        device_class="x86-ci",
        policy=PolicyRef(source="default", digest="a" * 64),
        operational=OperationalFields(
            agent_version="0.1.0",
            uptime_seconds=3600,
            restarts=0,
            crashes=0,
            rss_bytes=200 << 20,
            cpu_percent=12.5,
        ),
        usage=UsageFields(**usage),
        privacy=BudgetState(
            epsilon_charged=0.1 * (len(SENSITIVE_FIELDS) - 1),
            period_start=NOW - timedelta(days=1),
            period_end=NOW,
            period_spent=0.9,
            period_cap=10.0,
            lifetime_spent=0.9,
            lifetime_cap=1000.0,
        ),
        outbox_dropped=0,
    )
    fields.update(overrides)
    return fields


def test_a_report_round_trips_through_json() -> None:
    report = TelemetryReport(**report_fields())
    again = TelemetryReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert again.usage.get("rag_abstentions") == Withheld(reason="period_budget_spent")


def test_a_histogram_with_the_wrong_number_of_buckets_is_refused() -> None:
    usage = {f: _released(f) for f in SENSITIVE_FIELDS}
    usage["chat_ttft_seconds"] = _released("chat_ttft_seconds", n=3)
    with pytest.raises(ValidationError, match="chat_ttft_seconds carries 3 values"):
        UsageFields(**usage)


def test_a_charge_that_is_not_the_sum_of_the_released_epsilons_is_refused() -> None:
    fields = report_fields()
    fields["privacy"] = fields["privacy"].model_copy(update={"epsilon_charged": 0.0})
    with pytest.raises(ValidationError, match="not the sum"):
        TelemetryReport(**fields)


def test_unknown_keys_and_unbounded_lists_are_refused() -> None:
    body = TelemetryReport(**report_fields()).model_dump(mode="json")
    body["prompt"] = "hello"
    with pytest.raises(ValidationError, match="Extra inputs"):
        TelemetryReport.model_validate(body)
    body.pop("prompt")
    body["usage"]["prompt_tokens"]["values"] = [0] * 65
    with pytest.raises(ValidationError, match="at most 64"):
        TelemetryReport.model_validate(body)


def test_histogram_buckets_follow_le_semantics_and_reach_two_minutes() -> None:
    assert LATENCY_BUCKETS_SECONDS[-1] >= 120.0
    assert bucket_index(LATENCY_BUCKETS_SECONDS, 0.005) == 0
    assert bucket_index(LATENCY_BUCKETS_SECONDS, 0.0051) == 1
    assert bucket_index(LATENCY_BUCKETS_SECONDS, 121.0) == len(LATENCY_BUCKETS_SECONDS)
    assert field_labels("chat_ttft_seconds")[-1] == "+Inf"
    assert len(field_labels("errors_by_class")) == field_length("errors_by_class")


def test_discrete_laplace_variance_is_just_under_the_continuous_one() -> None:
    for scale in (2.0, 10.0, 100.0):
        assert 0.8 * 2 * scale**2 < discrete_laplace_variance(scale) < 2 * scale**2


def test_the_policy_names_only_fields_the_protocol_defines() -> None:
    assert config_problems({"telemetry": {"fields": {"prompt_tokens": {"clamp": 50}}}}) == []
    problems = config_problems({"telemetry": {"fields": {"prompt_text": {"clamp": 5}}}})
    assert [p.pointer for p in problems] == ["/telemetry/fields/prompt_text"]
    assert "prompt_tokens" in problems[0].rule
