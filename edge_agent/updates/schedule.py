"""When to poll next: a pure backoff-with-jitter schedule (randomness passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PollSchedule:
    """Poll every ``interval`` seconds (+-20 % jitter); after failures back off exponentially.

    After ``n`` consecutive failures the delay is drawn from ``[b/2, b]`` where
    ``b = min(max_backoff, interval * 2**n)`` ("equal jitter"): never zero, never above
    ``max_backoff``, and a fleet that lost its uplink at once does not return at once.
    """

    interval: float
    max_backoff: float

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_backoff <= 0:
            raise ValueError("interval and max_backoff must be positive")

    def delay(self, consecutive_failures: int, rand: float) -> float:
        """Seconds to wait; ``rand`` is a uniform draw from [0, 1)."""
        if not 0.0 <= rand < 1.0:
            raise ValueError("rand must be in [0, 1)")
        if consecutive_failures <= 0:
            return min(self.max_backoff, self.interval * (0.8 + 0.4 * rand))
        exponent = min(consecutive_failures, 62)
        ceiling = min(self.max_backoff, self.interval * 2.0**exponent)
        return ceiling / 2 + (ceiling / 2) * rand
