"""One simulated device's install state machine: values in, reports out, no I/O.

The device verifies each assignment with the agent's own trust code
(:func:`edge_agent.trust.verify_assignment`) and then walks the states a real agent
reports: ``downloading`` -> ``verified`` -> ``active`` -> ``committed``, or
``rolled_back`` (naming the release it serves again) when its health window fails, or
``refused`` when verification fails. Artifacts are not downloaded.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_agent.errors import BadUpdateError
from edge_agent.trust import DirectorTrust, verify_assignment
from protocol import Assignment, Ed25519KeyPair, InstallState, SignedEnvelope, StatusReport
from protocol.remote_config import ConfigReport, ConfigState
from simulator.behaviour import Behaviour
from simulator.profiles import DeviceProfile


class PollOutcome(StrEnum):
    """What one poll meant to the device."""

    NO_ASSIGNMENT = "no_assignment"
    UP_TO_DATE = "up_to_date"
    INSTALLING = "installing"  # a new assignment verified; the install started
    BUSY = "busy"  # an install is still in its health window
    GIVEN_UP = "given_up"  # the assignment failed health here before; not retried
    REFUSED = "refused"


_HEALTHY = frozenset({PollOutcome.NO_ASSIGNMENT, PollOutcome.UP_TO_DATE, PollOutcome.INSTALLING})


@dataclass(frozen=True)
class Serving:
    """The release a device serves, and the assignment version that put it there."""

    assignment_version: int
    release_id: str


@dataclass(frozen=True)
class PendingInstall:
    """An activated release in its health window."""

    assignment: Assignment
    prior: Serving | None
    started_round: int
    started_at: datetime


@dataclass
class SimDevice:
    """A simulated device. ``device_id`` is None until it has enrolled."""

    index: int
    profile: DeviceProfile
    behaviour: Behaviour
    key: Ed25519KeyPair
    device_id: str | None = None
    serving: Serving | None = None
    highest_accepted: int | None = None
    given_up: int | None = None
    pending: PendingInstall | None = None
    outbox: list[StatusReport] = field(default_factory=list)
    refusals_reported: set[str] = field(default_factory=set)
    # remote config (with Behaviour.syncs_config; not saved by simulator.state)
    config_version: int | None = None  # in force
    config_settings: dict[str, Any] = field(default_factory=dict)
    config_highest: int | None = None
    config_outbox: list[ConfigReport] = field(default_factory=list)

    @property
    def enrolled(self) -> bool:
        return self.device_id is not None

    @property
    def serving_release_id(self) -> str | None:
        return None if self.serving is None else self.serving.release_id

    def _id(self) -> str:
        if self.device_id is None:
            raise ValueError(f"device {self.index} has not enrolled yet")
        return self.device_id

    # --- remote config ------------------------------------------------------------------

    def observe_config(
        self, envelope: SignedEnvelope | None, *, director: DirectorTrust, now: datetime
    ) -> str:
        """Act on one config fetch, as the agent's config sync does (verify with its code,
        keep or revert by the behaviour, report once per new version): ``none``,
        ``up_to_date``, ``applied``, ``reverted`` or ``rejected``."""
        if envelope is None:
            return "none"
        # imported here: the agent's remote-config package loads its live-config parts,
        # which a fleet that does not sync config should not pay for
        from edge_agent.remote_config.verify import verify_config_document

        try:
            verdict = verify_config_document(
                envelope,
                director=director,
                device_id=self._id(),
                applied_version=self.config_version,
                highest_accepted_version=self.config_highest,
                now=now,
            )
        except BadUpdateError:
            return "rejected"  # the config in force stays; the simulator does not report it
        document = verdict.document
        if not verdict.is_new:
            return "up_to_date"
        self.config_highest = document.version
        failing = self.behaviour.keeps_config(document.settings)
        if failing is not None:
            self._config_report(
                document.version,
                "reverted",
                f"reverted: config v{document.version} made the simulated health check fail"
                f" ({failing}); v{self.config_version or 0} is back in force",
                now,
            )
            return "reverted"
        self.config_version = document.version
        self.config_settings = dict(document.settings)
        self._config_report(document.version, "applied", f"config applied v{document.version}", now)
        return "applied"

    def _config_report(self, version: int, state: ConfigState, detail: str, now: datetime) -> None:
        if not self.behaviour.reports:
            return
        self.config_outbox.append(
            ConfigReport(
                report_id=secrets.token_hex(16),
                device_id=self._id(),
                config_version=version,
                state=state,
                detail=detail[:2000],
                at=now,
            )
        )

    # --- the state machine --------------------------------------------------------------

    def observe(
        self,
        envelope: SignedEnvelope | None,
        *,
        director: DirectorTrust,
        round_: int,
        now: datetime,
    ) -> PollOutcome:
        """Act on one poll's answer (None: nothing assigned); queue the reports it causes."""
        outcome = self._observe(envelope, director, round_, now)
        if outcome in _HEALTHY:
            self.refusals_reported.clear()  # a later refusal is news again
        return outcome

    def refuse(self, kind: str, detail: str, now: datetime) -> PollOutcome:
        """The assignment could not be read or verified: report ``refused`` once per kind."""
        if kind not in self.refusals_reported:
            self.refusals_reported.add(kind)
            self._report(InstallState.REFUSED, now, detail=detail)
        return PollOutcome.REFUSED

    def advance(self, round_: int, now: datetime) -> None:
        """Finish the install in its health window once its delay has passed."""
        pending = self.pending
        if pending is None:
            return
        waited = (now - pending.started_at).total_seconds()
        if (
            round_ - pending.started_round < self.behaviour.install_rounds
            or waited < self.behaviour.install_seconds
        ):
            return
        self.pending = None
        assignment = pending.assignment
        prior_release = None if pending.prior is None else pending.prior.release_id
        if self.behaviour.passes_health(assignment, prior_release):
            self._report(InstallState.COMMITTED, now, assignment)
            return
        self.serving = pending.prior
        self.given_up = assignment.version
        self._report(
            InstallState.ROLLED_BACK,
            now,
            assignment,
            detail="simulated health window failed; serving the previous release again",
            serving_release_id=prior_release,
        )

    def _observe(
        self, envelope: SignedEnvelope | None, director: DirectorTrust, round_: int, now: datetime
    ) -> PollOutcome:
        if envelope is None:
            return PollOutcome.NO_ASSIGNMENT
        try:
            verdict = verify_assignment(
                envelope,
                director=director,
                device_id=self._id(),
                installed_version=None if self.serving is None else self.serving.assignment_version,
                highest_accepted_version=self.highest_accepted,
                now=now,
            )
        except BadUpdateError as e:
            return self.refuse(type(e).__name__, str(e), now)
        if self.pending is not None:
            return PollOutcome.BUSY
        if not verdict.is_new:
            return PollOutcome.UP_TO_DATE
        assignment = verdict.assignment
        if assignment.version == self.given_up:
            return PollOutcome.GIVEN_UP
        self.highest_accepted = assignment.version
        self._report(InstallState.DOWNLOADING, now, assignment)
        self._report(InstallState.VERIFIED, now, assignment)
        prior = self.serving
        self.serving = Serving(assignment.version, assignment.release_id)
        self._report(
            InstallState.ACTIVE,
            now,
            assignment,
            detail=f"{assignment.release_name} {assignment.release_version}",
        )
        self.pending = PendingInstall(assignment, prior, round_, now)
        self.advance(round_, now)
        return PollOutcome.INSTALLING

    def _report(
        self,
        state: InstallState,
        now: datetime,
        assignment: Assignment | None = None,
        *,
        detail: str = "",
        serving_release_id: str | None = None,
    ) -> None:
        if not self.behaviour.reports:
            return
        self.outbox.append(
            StatusReport(
                report_id=secrets.token_hex(16),
                device_id=self._id(),
                assignment_version=None if assignment is None else assignment.version,
                release_id=None if assignment is None else assignment.release_id,
                state=state,
                detail=detail[:2000],
                at=now,
                serving_release_id=serving_release_id,
            )
        )
