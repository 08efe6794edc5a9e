"""Remote config on the device: the named attacks (each refused, the config in force
stays), live apply, revert on a failing health check, reports, and coalesced wakes.

The control plane here is a small simulator that signs documents like the director does
(the same protocol code); the state database is the agent's real one."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import (
    BadUpdateError,
    ExpiredUpdateError,
    RollbackAttackError,
    UntrustedSignatureError,
    WrongDeviceError,
)
from edge_agent.remote_config import (
    ConfigSync,
    InvalidRemoteConfigError,
    LiveConfig,
    verify_config_document,
)
from edge_agent.store.state_db import StateDB
from edge_agent.trust import DirectorTrust
from edge_agent.updates.schedule import PollSchedule
from protocol import SignedEnvelope, generate_key_pair, key_id, sign_envelope
from protocol.keys import Ed25519KeyPair
from protocol.remote_config import (
    CONFIG_PAYLOAD_TYPE,
    ConfigReport,
    ConfigReportAck,
    RemoteConfig,
    config_digest,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DEVICE = "dev_a"


def signed(
    key: Ed25519KeyPair,
    version: int,
    settings: dict[str, Any],
    *,
    device_id: str = DEVICE,
    issued: datetime = NOW,
    ttl: timedelta = timedelta(days=7),
    digest: str | None = None,
) -> SignedEnvelope:
    payload = {
        "protocol_version": 1,
        "device_id": device_id,
        "version": version,
        "settings": settings,
        "digest": digest or config_digest(settings),
        "issued_at": issued.isoformat(),
        "expires_at": (issued + ttl).isoformat(),
    }
    return sign_envelope(CONFIG_PAYLOAD_TYPE, payload, [key])


@pytest.fixture
def director() -> Ed25519KeyPair:
    return generate_key_pair()


def trust(key: Ed25519KeyPair) -> DirectorTrust:
    return DirectorTrust(keys={key_id(key.public): key.public}, threshold=1)


def verify(
    env: SignedEnvelope,
    key: Ed25519KeyPair,
    applied: int | None = None,
    highest: int | None = None,
    now: datetime = NOW,
) -> Any:
    return verify_config_document(
        env,
        director=trust(key),
        device_id=DEVICE,
        applied_version=applied,
        highest_accepted_version=highest,
        now=now,
    )


# --- the named attacks, on the pure check ------------------------------------------------


def test_replayed_old_config_is_refused(director: Ed25519KeyPair) -> None:
    old = signed(director, 3, {"log_level": "DEBUG"})
    with pytest.raises(RollbackAttackError, match="replayed"):
        verify(old, director, applied=4, highest=4)


def test_config_for_another_device_is_refused(director: Ed25519KeyPair) -> None:
    with pytest.raises(WrongDeviceError, match="dev_b"):
        verify(signed(director, 1, {}, device_id="dev_b"), director)


def test_config_signed_by_an_untrusted_key_is_refused(director: Ed25519KeyPair) -> None:
    with pytest.raises(UntrustedSignatureError):
        verify(signed(generate_key_pair(), 1, {"log_level": "DEBUG"}), director)


def test_unsigned_config_is_refused(director: Ed25519KeyPair) -> None:
    env = signed(director, 1, {"log_level": "DEBUG"})
    stripped = SignedEnvelope.model_validate(
        {**env.model_dump(), "signatures": [{"keyid": "0" * 64, "sig": "0" * 128}]}
    )
    with pytest.raises(UntrustedSignatureError):
        verify(stripped, director)


def test_schema_invalid_config_signed_by_a_malicious_control_plane_is_refused(
    director: Ed25519KeyPair,
) -> None:
    env = signed(director, 1, {"chat": {"max_tokens_default": -5}, "shell": "rm -rf /"})
    with pytest.raises(InvalidRemoteConfigError, match="/shell: unknown key"):
        verify(env, director)


def test_settings_that_do_not_match_their_digest_are_refused(director: Ed25519KeyPair) -> None:
    env = signed(director, 1, {"log_level": "DEBUG"}, digest="0" * 64)
    with pytest.raises(BadUpdateError, match="digest"):
        verify(env, director)


def test_an_expired_config_stops_new_changes_but_not_the_one_in_force(
    director: Ed25519KeyPair,
) -> None:
    env = signed(director, 2, {"log_level": "DEBUG"}, issued=NOW - timedelta(days=8))
    with pytest.raises(ExpiredUpdateError, match="stays in force"):
        verify(env, director, applied=1, highest=1)
    assert verify(env, director, applied=2, highest=2).is_new is False  # in force: fine


# --- the sync loop -----------------------------------------------------------------------


@dataclass
class SimulatedControlPlane:
    """The device endpoints: serves whatever envelope the test sets, records reports."""

    envelope: SignedEnvelope | None = None
    reports: list[ConfigReport] = field(default_factory=list)
    fetches: int = 0
    gate: threading.Event | None = None

    def fetch_config(self) -> SignedEnvelope | None:
        self.fetches += 1
        if self.gate is not None:
            self.gate.wait(5)
        return self.envelope

    def send_config_report(self, report: ConfigReport) -> ConfigReportAck:
        self.reports.append(report)
        return ConfigReportAck(report_id=report.report_id, duplicate=False)


class PromptSensitiveHealth:
    """The runtime's health under a config: a system prompt the model cannot take fails."""

    def check(self, config: RemoteConfig) -> str | None:
        prompt = config.chat.system_prompt or ""
        return "the prompt does not fit the context" if len(prompt) > 100 else None


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    return StateDB(tmp_path / "state.db")


def make_sync(
    db: StateDB, cp: SimulatedControlPlane, key: Ed25519KeyPair, live: LiveConfig | None = None
) -> tuple[ConfigSync, LiveConfig]:
    live = live or LiveConfig()
    sync = ConfigSync(
        device_id=DEVICE,
        db=db,
        source=cp,
        director=lambda: trust(key),
        live=live,
        health=PromptSensitiveHealth(),
        schedule=PollSchedule(30, 600),
        clock=lambda: NOW,
    )
    return sync, live


def test_a_valid_config_is_applied_live_reported_and_survives_a_restart(
    db: StateDB, director: Ed25519KeyPair
) -> None:
    cp = SimulatedControlPlane(signed(director, 1, {"chat": {"max_tokens_default": 64}}))
    sync, live = make_sync(db, cp, director)
    assert sync.check_once().result == "applied"
    assert live.chat_defaults().max_tokens == 64 and live.version == 1
    assert [(r.config_version, r.state, r.detail) for r in cp.reports] == [
        (1, "applied", "config applied v1")
    ]
    assert sync.check_once().result == "up_to_date"
    assert len(cp.reports) == 1
    again, live_again = make_sync(db, SimulatedControlPlane(), director)
    assert again.restore() == 1  # no network: the config in force comes back at start
    assert live_again.chat_defaults().max_tokens == 64


@pytest.mark.parametrize(
    "attack",
    ["replayed", "other device", "unsigned", "schema-invalid"],
)
def test_each_attack_is_refused_reported_and_the_config_in_force_stays(
    db: StateDB, director: Ed25519KeyPair, attack: str
) -> None:
    cp = SimulatedControlPlane(signed(director, 1, {"log_level": "WARNING"}))
    sync, live = make_sync(db, cp, director)
    sync.check_once()
    cp.envelope = signed(director, 2, {"log_level": "ERROR"})
    sync.check_once()
    cp.envelope = {
        "replayed": signed(director, 1, {"log_level": "WARNING"}),
        "other device": signed(director, 3, {"log_level": "DEBUG"}, device_id="dev_b"),
        "unsigned": signed(generate_key_pair(), 3, {"log_level": "DEBUG"}),
        "schema-invalid": signed(director, 3, {"log_level": "DEBUG", "debug_shell": True}),
    }[attack]
    outcome = sync.check_once()
    assert outcome.result == "rejected"
    assert live.version == 2 and live.config.log_level == "ERROR"  # still in force
    assert cp.reports[-1].state == "rejected"
    assert cp.reports[-1].detail.startswith("rejected: ")
    sync.check_once()  # the same refusal again is not reported twice
    assert [r.state for r in cp.reports].count("rejected") == 1


def test_a_config_that_fails_the_health_check_is_reverted_and_reported(
    db: StateDB, director: Ed25519KeyPair
) -> None:
    cp = SimulatedControlPlane(signed(director, 1, {"chat": {"system_prompt": "Be brief."}}))
    sync, live = make_sync(db, cp, director)
    sync.check_once()
    cp.envelope = signed(director, 2, {"chat": {"system_prompt": "x" * 500}})
    outcome = sync.check_once()
    assert outcome.result == "reverted"
    assert live.version == 1 and live.chat_defaults().system_prompt == "Be brief."
    assert cp.reports[-1].state == "reverted"
    assert "does not fit the context" in cp.reports[-1].detail
    assert sync.check_once().result == "up_to_date"  # not retried in a loop
    again, live_again = make_sync(db, SimulatedControlPlane(), director)
    assert again.restore() == 1 and live_again.chat_defaults().system_prompt == "Be brief."


def test_reports_queue_while_the_control_plane_is_unreachable(
    db: StateDB, director: Ed25519KeyPair
) -> None:
    from edge_agent.errors import TransportError

    class Down(SimulatedControlPlane):
        up = False

        def send_config_report(self, report: ConfigReport) -> ConfigReportAck:
            if not self.up:
                raise TransportError("down")
            return super().send_config_report(report)

    cp = Down(signed(director, 1, {"log_level": "DEBUG"}))
    sync, _ = make_sync(db, cp, director)
    assert sync.check_once().result == "applied"
    assert sync.status()["pending_reports"] == 1 and cp.reports == []
    cp.up = True
    assert sync.deliver_reports() == 1
    assert [r.state for r in cp.reports] == ["applied"]


def test_a_burst_of_wakes_during_a_check_causes_one_more_check(
    db: StateDB, director: Ed25519KeyPair
) -> None:
    gate = threading.Event()
    cp = SimulatedControlPlane(signed(director, 1, {"log_level": "DEBUG"}), gate=gate)
    sync, _ = make_sync(db, cp, director)
    stop = threading.Event()
    worker = threading.Thread(target=sync.run, args=(stop,), daemon=True)
    worker.start()
    for _ in range(50):
        sync.wake()  # nudges while the first check waits on the gate
    gate.set()
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    while cp.fetches < 2 and datetime.now(UTC) < deadline:
        threading.Event().wait(0.01)
    threading.Event().wait(0.3)
    stop.set()
    sync.wake()
    worker.join(5)
    assert cp.fetches == 2  # the first, and one for the whole burst


class Refusing(SimulatedControlPlane):
    """A control plane that answers config reports with one fixed 4xx."""

    def __init__(self, envelope: SignedEnvelope, status: int) -> None:
        super().__init__(envelope)
        self.status = status
        self.refused = 0

    def send_config_report(self, report: ConfigReport) -> ConfigReportAck:
        from edge_agent.uplink.client import RequestRejectedError

        self.refused += 1
        raise RequestRejectedError(f"HTTP {self.status}: refused", self.status)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_a_config_report_the_control_plane_refuses_for_good_is_dropped_not_retried(
    db: StateDB, director: Ed25519KeyPair, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    cp = Refusing(signed(director, 1, {"log_level": "DEBUG"}), status)
    sync, _ = make_sync(db, cp, director)
    with caplog.at_level("ERROR", logger="edge_agent.remote_config.sync"):
        assert sync.check_once().result == "applied"
    assert cp.refused == 1 and sync.status()["pending_reports"] == 0
    dropped = [r.getMessage() for r in caplog.records if "dropping config report" in r.message]
    assert len(dropped) == 1 and f"refused it for good with {status}" in dropped[0]
    sync.check_once()
    sync.deliver_reports()
    assert cp.refused == 1  # not sent again every cycle


@pytest.mark.parametrize("status", [401, 429])
def test_a_config_report_refused_for_credentials_or_rate_stays_queued(
    db: StateDB, director: Ed25519KeyPair, status: int
) -> None:
    cp = Refusing(signed(director, 1, {"log_level": "DEBUG"}), status)
    sync, _ = make_sync(db, cp, director)
    assert sync.check_once().result == "applied"
    assert sync.status()["pending_reports"] == 1
    sync.deliver_reports()
    assert cp.refused == 2 and sync.status()["pending_reports"] == 1
