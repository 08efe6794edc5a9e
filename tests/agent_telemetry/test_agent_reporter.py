"""The reporter and its pure core: what a period's report says, what it costs, and when
the usage fields are withheld."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.telemetry.mechanisms import OpenDPDiscreteLaplace, clamp_counts
from edge_agent.telemetry.metrics import AgentMetrics
from edge_agent.telemetry.store import TelemetryStore
from protocol.telemetry import (
    FEATURES,
    SENSITIVE_FIELDS,
    ReleasedCounts,
    TelemetryReport,
    Withheld,
    field_length,
)
from tests.agent_telemetry.helpers import Clock, NoNoise, make_reporter, open_db, policy_of


def _released(report: TelemetryReport, field: str) -> ReleasedCounts:
    value = report.usage.get(field)  # type: ignore[arg-type] # a field name
    assert isinstance(value, ReleasedCounts), value
    return value


def test_a_period_report_carries_that_period_counts_and_charges_them(tmp_path: Path) -> None:
    db, clock, metrics = open_db(tmp_path), Clock(), AgentMetrics()
    reporter = make_reporter(
        db, clock, metrics=metrics, mechanism=NoNoise(), policy=policy_of(epsilon_per_report=0.5)
    )
    for _ in range(3):
        metrics.request("chat")
    metrics.observe("vision_seconds", 0.2)
    clock.advance(hours=1)
    first = reporter.close_period()
    assert first is not None
    report = first.report
    assert _released(report, "requests_by_feature").values[FEATURES.index("chat")] == 3
    assert sum(_released(report, "vision_seconds").values) == 1
    # the per-report epsilon split evenly over the ten fields, and charged in the ledger
    assert report.privacy.epsilon_charged == pytest.approx(0.5)
    assert _released(report, "prompt_tokens").epsilon == pytest.approx(0.05)
    assert _released(report, "prompt_tokens").scale == pytest.approx(20.0)
    entries = TelemetryStore(db).ledger_entries()
    assert [e[0] for e in entries] == [report.report_id]
    assert entries[0][3] == pytest.approx(0.5)
    # the next period counts only what happened since
    metrics.request("chat")
    clock.advance(hours=1)
    second = reporter.close_period()
    assert second is not None
    assert _released(second.report, "requests_by_feature").values[FEATURES.index("chat")] == 1
    assert second.report.sequence == report.sequence + 1
    assert second.report.period_start == report.period_end


def test_a_spent_period_budget_withholds_every_usage_field_until_it_renews(
    tmp_path: Path,
) -> None:
    db, clock = open_db(tmp_path), Clock()
    policy = policy_of(epsilon_per_report=1.0, epsilon_per_period=2.0, budget_period_seconds=86400)
    reporter = make_reporter(db, clock, policy=policy)
    reasons = []
    for _ in range(4):
        clock.advance(hours=1)
        queued = reporter.close_period()
        assert queued is not None
        reasons.append({queued.report.usage.get(f).status for f in SENSITIVE_FIELDS})
        if queued.report.privacy.epsilon_charged == 0:
            assert queued.report.usage.get("chat_ttft_seconds") == Withheld(
                reason="period_budget_spent"
            )
    assert reasons == [{"released"}, {"released"}, {"withheld"}, {"withheld"}]
    spent = sum(e[3] for e in TelemetryStore(db).ledger_entries())
    assert spent == pytest.approx(2.0)
    clock.advance(days=1)  # the next budget period
    renewed = reporter.close_period()
    assert renewed is not None
    assert renewed.report.privacy.epsilon_charged == pytest.approx(1.0)
    assert renewed.report.privacy.period_spent == pytest.approx(1.0)


def test_the_lifetime_cap_never_renews(tmp_path: Path) -> None:
    db, clock = open_db(tmp_path), Clock()
    policy = policy_of(epsilon_per_report=1.0, epsilon_per_period=5.0, epsilon_lifetime=2.0)
    reporter = make_reporter(db, clock, policy=policy)
    statuses = []
    for _ in range(4):
        clock.advance(days=1)
        queued = reporter.close_period()
        assert queued is not None
        statuses.append(queued.report.usage.get("requests_by_feature"))
    assert [s.status for s in statuses] == ["released", "released", "withheld", "withheld"]
    assert statuses[-1] == Withheld(reason="lifetime_budget_spent")


def test_a_field_the_policy_does_not_release_is_withheld_and_costs_nothing(
    tmp_path: Path,
) -> None:
    db, clock = open_db(tmp_path), Clock()
    policy = policy_of(
        epsilon_per_report=1.0,
        fields={"prompt_tokens": {"release": False}, "chat_ttft_seconds": {"weight": 2.0}},
    )
    queued = make_reporter(db, clock, policy=policy).close_period()
    assert queued is not None
    usage = queued.report.usage
    assert usage.get("prompt_tokens") == Withheld(reason="not_in_policy")
    # nine fields share 1.0 by weight: ttft has twice the share of each other field
    assert _released(queued.report, "chat_ttft_seconds").epsilon == pytest.approx(0.2)
    assert _released(queued.report, "rag_seconds").epsilon == pytest.approx(0.1)
    assert queued.report.privacy.epsilon_charged == pytest.approx(1.0)


def test_counts_are_clamped_before_noise(tmp_path: Path) -> None:
    assert clamp_counts([-3, 5, 50], 10) == [0, 5, 10]
    db, clock, metrics = open_db(tmp_path), Clock(), AgentMetrics()
    for _ in range(30):
        metrics.request("embedding")
    policy = policy_of(fields={"requests_by_feature": {"clamp": 10}})
    queued = make_reporter(db, clock, policy=policy, metrics=metrics, mechanism=NoNoise())
    report = queued.close_period()
    assert report is not None
    released = _released(report.report, "requests_by_feature")
    assert released.values[FEATURES.index("embedding")] == 10
    assert released.clamp_upper == 10


def test_telemetry_switched_off_builds_nothing_and_forgets_the_period(tmp_path: Path) -> None:
    db, clock, metrics = open_db(tmp_path), Clock(), AgentMetrics()
    policy = {"value": policy_of(enabled=False)}
    reporter = make_reporter(db, clock, metrics=metrics, mechanism=NoNoise())
    reporter._policy = lambda: policy["value"]  # the remote config switches it
    metrics.request("chat")
    assert reporter.close_period() is None
    assert TelemetryStore(db).outbox_size() == (0, 0)
    policy["value"] = policy_of()
    metrics.request("rag")
    queued = reporter.close_period()
    assert queued is not None
    counts = _released(queued.report, "requests_by_feature").values
    assert counts[FEATURES.index("chat")] == 0  # counted while off: never sent
    assert counts[FEATURES.index("rag")] == 1


def test_restarts_and_unclean_stops_are_counted_into_the_next_report(tmp_path: Path) -> None:
    db, clock = open_db(tmp_path), Clock()
    first = make_reporter(db, clock)
    first.start()
    first.stop()  # clean
    second = make_reporter(db, clock)
    second.start()  # ... and this run is killed: no stop()
    third = make_reporter(db, clock)
    third.start()
    queued = third.close_period()
    assert queued is not None
    assert (queued.report.operational.restarts, queued.report.operational.crashes) == (3, 1)
    again = third.close_period()
    assert again is not None
    assert (again.report.operational.restarts, again.report.operational.crashes) == (0, 0)


def test_opendp_noise_is_integer_discrete_laplace_and_costs_one_over_scale() -> None:
    from opendp.mod import GLOBAL_FEATURES

    mechanism = OpenDPDiscreteLaplace()
    values = [100] * field_length("chat_ttft_seconds")
    noisy = mechanism.release(values, 5.0)
    assert all(isinstance(v, int) for v in noisy)
    assert noisy != values  # 26 draws at scale 5 are all zero with probability ~1e-10
    assert abs(sum(noisy) / len(noisy) - 100) < 10
    assert mechanism.epsilon(5.0, 1) == pytest.approx(0.2)
    assert "contrib" not in GLOBAL_FEATURES  # enabled only while building the measurement


def test_opendp_refuses_to_run_with_a_weakening_feature_enabled() -> None:
    import opendp.prelude as dp

    mechanism = OpenDPDiscreteLaplace()
    mechanism.release([1], 3.0)  # built while nothing weakens it
    dp.enable_features("idealized-numerics")
    try:
        with pytest.raises(ConfigError, match="idealized-numerics"):
            mechanism.release([1], 3.0)
        with pytest.raises(ConfigError, match="idealized-numerics"):
            OpenDPDiscreteLaplace().release([1], 4.0)
    finally:
        dp.disable_features("idealized-numerics")


def test_opendp_is_loaded_only_when_a_report_is_built() -> None:
    """An idle agent does not pay OpenDP's ~40 MiB before its first report."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edge_agent.telemetry.mechanisms import OpenDPDiscreteLaplace\n"
        "m = OpenDPDiscreteLaplace()\n"
        "assert 'opendp' not in sys.modules, 'imported at construction'\n"
        "m.release([1], 2.0)\n"
        "assert 'opendp' in sys.modules\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_the_noise_has_the_variance_the_protocol_tells_the_control_plane() -> None:
    """The control plane's intervals use protocol.telemetry.discrete_laplace_variance;
    OpenDP's samples must match it (20,000 draws: the sample variance's relative standard
    error is about 1.6%, so 8% is five of them)."""
    from protocol.telemetry import discrete_laplace_variance

    scale = 8.0
    noisy = OpenDPDiscreteLaplace().release([0] * 20_000, scale)
    mean = sum(noisy) / len(noisy)
    variance = sum((v - mean) ** 2 for v in noisy) / (len(noisy) - 1)
    assert abs(mean) < 0.5  # standard error 0.08
    assert variance == pytest.approx(discrete_laplace_variance(scale), rel=0.08)
