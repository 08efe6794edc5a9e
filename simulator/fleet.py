"""The in-process driver: a fleet that takes one round per :meth:`Fleet.step`.

Made for fast protocol tests: give it any synchronous HTTP client with the control
plane's base URL (a FastAPI ``TestClient`` included) and the clock the control plane
uses, so device signatures and assignment expiry follow the test's time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edge_agent.trust import DirectorTrust
from protocol import InstallState, generate_key_pair
from simulator import state
from simulator.behaviour import Behaviour, BehaviourFunction, always
from simulator.device import PollOutcome, SimDevice
from simulator.errors import ServerError, SetupError
from simulator.exchange import RoundOutcome, device_round, director_from_root, root_call
from simulator.profiles import ProfileFunction, uniform
from simulator.transport import HttpClient, Latencies, run, send

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class StepResult:
    """What the fleet did in one round.

    ``polls``: answered polls; ``new_assignments``: new assignment versions verified (an
    install started); ``reports``: delivered status reports by state; ``outcomes``: what
    each poll meant; ``latencies``: seconds per request, by kind.
    """

    round: int
    enrolled: int
    polls: int
    new_assignments: int
    refused: int
    reports: Mapping[InstallState, int]
    outcomes: Mapping[PollOutcome, int]
    errors: tuple[str, ...]
    latencies: Mapping[str, tuple[float, ...]]

    @property
    def reports_sent(self) -> int:
        return sum(self.reports.values())

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def summarize(round_: int, outcomes: Iterable[RoundOutcome], latencies: Latencies) -> StepResult:
    rounds = list(outcomes)
    polled = Counter(r.outcome for r in rounds if r.outcome is not None)
    return StepResult(
        round=round_,
        enrolled=sum(r.enrolled for r in rounds),
        polls=sum(r.polled for r in rounds),
        new_assignments=polled[PollOutcome.INSTALLING],
        refused=polled[PollOutcome.REFUSED],
        reports=dict(Counter(s for r in rounds for s in r.reports)),
        outcomes=dict(polled),
        errors=tuple(e for r in rounds for e in r.errors),
        latencies={k: tuple(v) for k, v in latencies.items()},
    )


class Fleet:
    """Simulated devices stepped together, in process.

    Build one with :meth:`create` (fresh keys, enrolled as their ``enroll_at`` round
    comes) or :meth:`resume` (from a state file). Each :meth:`step` is one round: every
    enrolled device that is online polls once, verifies what it gets with the agent's
    trust code and delivers the reports its behaviour calls for.
    """

    def __init__(
        self,
        http: HttpClient,
        *,
        devices: Sequence[SimDevice],
        clock: Clock,
        operator_token: str | None = None,
        root: bytes | None = None,
        start_round: int = 0,
    ) -> None:
        self._http = http
        self._devices = list(devices)
        self._by_index = {d.index: d for d in self._devices}
        if len(self._by_index) != len(self._devices):
            raise SetupError("two simulated devices share an index")
        self._clock = clock
        self._operator_token = operator_token
        self._director = None if root is None else director_from_root(root)
        self._round = start_round

    @classmethod
    def create(
        cls,
        http: HttpClient,
        *,
        size: int,
        clock: Clock,
        operator_token: str,
        profile: ProfileFunction | None = None,
        behaviour: BehaviourFunction | None = None,
        root: bytes | None = None,
    ) -> Fleet:
        """``size`` new devices with fresh Ed25519 keys.

        ``operator_token``: an API token with the operator role (one enrollment token is
        issued per device). ``root``: the TUF root file to trust (pinned); None trusts the
        first root fetched from the server (TOFU).
        """
        if size < 0:
            raise SetupError("a fleet needs a size >= 0")
        profile_of = profile or uniform()
        behaviour_of = behaviour or always()
        devices = [
            SimDevice(i, profile_of(i), behaviour_of(i), generate_key_pair()) for i in range(size)
        ]
        return cls(http, devices=devices, clock=clock, operator_token=operator_token, root=root)

    @classmethod
    def resume(
        cls,
        http: HttpClient,
        path: Path,
        *,
        clock: Clock,
        operator_token: str | None = None,
        behaviour: BehaviourFunction | None = None,
        root: bytes | None = None,
    ) -> Fleet:
        """The fleet saved by :meth:`save` (behaviours are not saved: give them again)."""
        devices = state.load(path, behaviour or always())
        return cls(http, devices=devices, clock=clock, operator_token=operator_token, root=root)

    # --- the devices -----------------------------------------------------------------------

    @property
    def devices(self) -> Sequence[SimDevice]:
        return tuple(self._devices)

    @property
    def round(self) -> int:
        """The number of the next round :meth:`step` runs."""
        return self._round

    def device(self, index: int) -> SimDevice:
        return self._by_index[index]

    def by_id(self, device_id: str) -> SimDevice:
        for device in self._devices:
            if device.device_id == device_id:
                return device
        raise KeyError(device_id)

    def device_ids(self, where: Callable[[SimDevice], bool] | None = None) -> list[str]:
        """Ids of the enrolled devices (that match ``where``), in index order."""
        return [
            d.device_id
            for d in self._devices
            if d.device_id is not None and (where is None or where(d))
        ]

    def set_behaviour(self, index: int, behaviour: Behaviour) -> None:
        """Change how one device behaves from the next round on."""
        self._by_index[index].behaviour = behaviour

    def save(self, path: Path) -> None:
        state.save(self._devices, path)

    # --- rounds ----------------------------------------------------------------------------

    @property
    def director(self) -> DirectorTrust:
        """The director keys the fleet trusts (fetched from the server on first use: TOFU)."""
        if self._director is None:
            latencies: Latencies = {}
            answer = send(self._http, root_call(), latencies)
            if not answer.ok:
                raise ServerError(
                    f"cannot fetch the TUF root from the control plane:"
                    f" {answer.error or f'HTTP {answer.status_code}'}; is the server up?"
                )
            self._director = director_from_root(answer.content)
        return self._director

    def step(self, now: datetime | None = None) -> StepResult:
        """One round for every device; ``now`` defaults to the fleet's clock."""
        at = now or self._clock()
        director = self.director
        latencies: Latencies = {}
        outcomes = [
            run(
                self._http,
                device_round(
                    device,
                    round_=self._round,
                    now=at,
                    director=director,
                    operator_token=self._operator_token,
                ),
                latencies,
            )
            for device in self._devices
        ]
        result = summarize(self._round, outcomes, latencies)
        self._round += 1
        return result
