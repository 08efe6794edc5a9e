"""How each simulated device behaves: install health, reachability, enrollment time.

Time here is counted in *rounds*: one round is one poll of a device (one
``Fleet.step`` in process; one poll interval in the concurrent driver). Install delays
may also be given in seconds of the driver's clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol import Assignment
from simulator.errors import SetupError


class Health(StrEnum):
    """What a device's health window says about a release it activates."""

    HEALTHY = "healthy"  # commits
    FAILS_HEALTH = "fails_health"  # rolls back to its previous release, never retries it
    NEVER_REPORTS = "never_reports"  # polls and installs, but sends no status report


@dataclass(frozen=True)
class Window:
    """Rounds ``start`` (inclusive) to ``end`` (exclusive; None: for ever)."""

    start: int
    end: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise SetupError(f"window [{self.start}, {self.end}) is empty or negative")

    def __contains__(self, round_: object) -> bool:
        if not isinstance(round_, int):
            return False
        return self.start <= round_ and (self.end is None or round_ < self.end)


@dataclass(frozen=True)
class Behaviour:
    """One device's behaviour.

    ``offline``: rounds in which the device neither polls nor reports (its installs go on,
    and its reports wait until it is back). ``enroll_at``: the first round it exists in.
    ``install_rounds`` / ``install_seconds``: how long it stays ``active`` (the health
    window) before it commits or rolls back; both must have passed. ``failing_releases``:
    with :attr:`Health.FAILS_HEALTH`, only releases whose id or version is listed fail
    (empty: every release it does not already serve fails). ``syncs_config``: the device
    also fetches its signed remote config each round it is online and reports on it
    (``applied``; ``reverted`` when the config sets one of the dotted settings in
    ``reverts_config``, e.g. ``chat.system_prompt`` on a device whose model cannot take
    one). A config that fails verification is refused and not reported.
    """

    health: Health = Health.HEALTHY
    offline: tuple[Window, ...] = ()
    enroll_at: int = 0
    install_rounds: int = 0
    install_seconds: float = 0.0
    failing_releases: frozenset[str] = field(default_factory=frozenset)
    syncs_config: bool = False
    reverts_config: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.enroll_at < 0 or self.install_rounds < 0 or self.install_seconds < 0:
            raise SetupError("enroll_at, install_rounds and install_seconds must be >= 0")

    def online(self, round_: int) -> bool:
        return not any(round_ in window for window in self.offline)

    def enrolled_by(self, round_: int) -> bool:
        return round_ >= self.enroll_at

    def passes_health(self, assignment: Assignment, serving_release_id: str | None) -> bool:
        """Whether activating ``assignment`` passes this device's health window."""
        if self.health is not Health.FAILS_HEALTH:
            return True
        if assignment.release_id == serving_release_id:  # a re-signed assignment: no change
            return True
        if not self.failing_releases:
            return False
        names = {assignment.release_id, assignment.release_version}
        return not names & self.failing_releases

    def keeps_config(self, settings: Mapping[str, Any]) -> str | None:
        """None when a config with ``settings`` passes this device's health check, else
        the setting that fails it."""
        for dotted in sorted(self.reverts_config):
            value: Any = settings
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is not None:
                return dotted
        return None

    @property
    def reports(self) -> bool:
        return self.health is not Health.NEVER_REPORTS


BehaviourFunction = Callable[[int], Behaviour]


def share(index: int, fraction: float, salt: str = "") -> bool:
    """True for a deterministic ``fraction`` of indices, spread evenly over the fleet.

    Different ``salt`` values pick independent subsets (e.g. failing vs. silent devices).
    """
    if not 0.0 <= fraction <= 1.0:
        raise SetupError(f"a share must be between 0 and 1, got {fraction}")
    digest = hashlib.sha256(f"{salt}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Mix:
    """A behaviour function for a mixed fleet: shares of failing, silent, offline and late
    devices, picked deterministically by index. A device fails health or stays silent,
    never both; ``offline`` windows apply to ``offline_share`` of the fleet; late devices
    enroll in round ``enrolls_late_at``. Picklable, so the concurrent driver can hand it to
    its client processes.
    """

    fails_health: float = 0.0
    never_reports: float = 0.0
    install_rounds: int = 0
    install_seconds: float = 0.0
    offline: tuple[Window, ...] = ()
    offline_share: float = 0.0
    enrolls_late_at: int | None = None
    enrolls_late_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fails_health", "never_reports", "offline_share", "enrolls_late_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SetupError(f"{name} is a share between 0 and 1, got {value}")
        if self.enrolls_late_share and self.enrolls_late_at is None:
            raise SetupError("enrolls_late_share needs enrolls_late_at (the round they enroll in)")

    def __call__(self, index: int) -> Behaviour:
        if share(index, self.fails_health, "fails_health"):
            health = Health.FAILS_HEALTH
        elif share(index, self.never_reports, "never_reports"):
            health = Health.NEVER_REPORTS
        else:
            health = Health.HEALTHY
        late = self.enrolls_late_at is not None and share(index, self.enrolls_late_share, "late")
        return Behaviour(
            health=health,
            offline=self.offline if share(index, self.offline_share, "offline") else (),
            enroll_at=self.enrolls_late_at if late and self.enrolls_late_at is not None else 0,
            install_rounds=self.install_rounds,
            install_seconds=self.install_seconds,
        )


@dataclass(frozen=True)
class Always:
    """Every device behaves the same (healthy by default)."""

    behaviour: Behaviour = field(default_factory=Behaviour)

    def __call__(self, index: int) -> Behaviour:
        return self.behaviour


def always(behaviour: Behaviour | None = None) -> BehaviourFunction:
    """Every device behaves the same (healthy by default)."""
    return Always(behaviour or Behaviour())
