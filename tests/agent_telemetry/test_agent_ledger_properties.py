"""Property tests of the epsilon ledger: over random policies and random sequences of
reports, clock jumps and agent restarts, the charges never exceed the per-period or the
lifetime cap, every queued report's charge is in the ledger, and fields are withheld only
when their charge would not fit."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.ledger import budget_window
from edge_agent.telemetry.policy import TelemetryPolicy
from edge_agent.telemetry.store import TelemetryStore
from protocol.telemetry import SENSITIVE_FIELDS, TelemetryReport
from tests.agent_telemetry.helpers import Clock, make_reporter, policy_of

TOLERANCE = 1e-9

policies = st.builds(
    lambda per_report, per_period, lifetime, period, withheld: policy_of(
        epsilon_per_report=per_report,
        epsilon_per_period=per_period,
        epsilon_lifetime=lifetime,
        budget_period_seconds=period,
        fields={name: {"release": False} for name in withheld},
    ),
    st.floats(0.01, 3.0),
    st.floats(0.05, 6.0),
    st.floats(0.1, 20.0),
    st.sampled_from([3600.0, 6 * 3600.0, 86400.0]),
    st.sets(st.sampled_from(SENSITIVE_FIELDS), max_size=3),
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("report"), st.just(0.0)),
        st.tuples(st.just("advance"), st.floats(0.0, 40.0)),  # hours
        st.tuples(st.just("restart"), st.just(0.0)),
    ),
    min_size=1,
    max_size=40,
)


def _check_ledger(path: Path, policy: TelemetryPolicy) -> None:
    with sqlite3.connect(path) as c:
        charges = c.execute(
            "SELECT report_id, period_start, epsilon FROM telemetry_ledger"
        ).fetchall()
        bodies = [r[0] for r in c.execute("SELECT body FROM telemetry_outbox").fetchall()]
    per_period: dict[str, float] = defaultdict(float)
    for _, period_start, epsilon in charges:
        per_period[period_start] += epsilon
    assert all(v <= policy.epsilon_per_period + TOLERANCE for v in per_period.values())
    assert sum(e for _, _, e in charges) <= policy.epsilon_lifetime + TOLERANCE
    charged = {report_id: epsilon for report_id, _, epsilon in charges}
    for body in bodies:
        report = TelemetryReport.model_validate(json.loads(body))
        if report.privacy.epsilon_charged > 0:
            assert charged[report.report_id] == report.privacy.epsilon_charged
        else:
            assert report.report_id not in charged


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, steps=actions)
def test_the_ledger_never_spends_past_a_cap_across_restarts(
    policy: TelemetryPolicy, steps: list[tuple[str, float]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        clock = Clock()
        db = StateDB(path)
        reporter = make_reporter(db, clock, policy=policy)
        for action, hours in steps:
            if action == "advance":
                clock.advance(hours=hours)
            elif action == "restart":  # a new process over the same database
                db.close()
                db = StateDB(path)
                reporter = make_reporter(db, clock, policy=policy)
            else:
                before = TelemetryStore(db).spent(
                    budget_window(clock(), policy.budget_period_seconds)
                )
                queued = reporter.close_period()
                assert queued is not None
                report = queued.report
                planned = policy.epsilon_per_report if any(r.release for r in policy.fields) else 0
                fits = (
                    before.period + planned <= policy.epsilon_per_period + TOLERANCE
                    and before.lifetime + planned <= policy.epsilon_lifetime + TOLERANCE
                )
                statuses = {report.usage.get(r.field).status for r in policy.fields if r.release}
                # released whenever it fits (away from the cap, where float sums may differ)
                at_cap = abs(before.period + planned - policy.epsilon_per_period) < 1e-6
                if fits and planned > 0 and not at_cap:
                    assert statuses == {"released"}
                if not fits:
                    assert statuses <= {"withheld"}
                    assert report.privacy.epsilon_charged == 0
            _check_ledger(path, policy)
        db.close()
