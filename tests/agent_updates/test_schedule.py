"""The poll schedule: jittered, exponential after failures, bounded, never zero."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.updates import PollSchedule

SCHEDULE = PollSchedule(interval=30.0, max_backoff=600.0)


def test_healthy_polling_is_jittered_around_the_interval() -> None:
    assert SCHEDULE.delay(0, 0.0) == pytest.approx(24.0)
    assert SCHEDULE.delay(0, 0.999999) == pytest.approx(36.0, abs=1e-3)


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    ceilings = [SCHEDULE.delay(n, 0.999999) for n in range(1, 8)]
    assert ceilings[:4] == pytest.approx([60, 120, 240, 480], abs=1e-3)
    assert ceilings[4:] == pytest.approx([600, 600, 600], abs=1e-3)
    assert SCHEDULE.delay(10, 0.0) == pytest.approx(300.0)


def test_a_fleet_that_failed_together_spreads_out() -> None:
    draws = [SCHEDULE.delay(5, i / 100) for i in range(100)]
    assert max(draws) - min(draws) > 250


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=0.999999))
def test_delay_is_always_positive_and_bounded(failures: int, rand: float) -> None:
    delay = SCHEDULE.delay(failures, rand)
    assert 0 < delay <= 600.0


def test_randomness_outside_the_unit_interval_is_a_bug() -> None:
    with pytest.raises(ValueError, match="rand"):
        SCHEDULE.delay(1, 1.0)
