"""The telemetry policy in force: defaults < the release's policy bundle < the remote
config, key by key, and the device owner's local switch above all."""

from __future__ import annotations

from edge_agent.telemetry.policy import resolve_policy
from protocol.release_artifacts import PolicyBundle
from protocol.remote_config import TelemetrySettings


def _settings(**values: object) -> TelemetrySettings:
    return TelemetrySettings.model_validate(values)


def test_each_layer_wins_where_it_sets_a_key() -> None:
    release = PolicyBundle.model_validate(
        {"telemetry": {"interval_seconds": 600, "fields": {"rag_seconds": {"clamp": 50}}}}
    ).telemetry
    remote = _settings(interval_seconds=120, epsilon_per_period=3.0)
    policy = resolve_policy(release, remote)
    assert (policy.interval_seconds, policy.epsilon_per_period) == (120.0, 3.0)
    rag = next(r for r in policy.fields if r.field == "rag_seconds")
    assert rag.clamp == 50 and rag.release  # the release's clamp, the default release flag
    assert policy.source == "remote_config"
    assert policy.sources["interval_seconds"] == "remote_config"
    assert policy.sources["fields.rag_seconds.clamp"] == "release"
    assert "epsilon_lifetime" not in policy.sources  # a default
    assert resolve_policy(release, TelemetrySettings()).source == "release"
    assert resolve_policy(None, None).source == "default"


def test_the_digest_changes_with_the_policy_and_only_with_it() -> None:
    a = resolve_policy(None, _settings(epsilon_per_report=0.5))
    b = resolve_policy(_settings(epsilon_per_report=0.5), None)
    c = resolve_policy(None, _settings(epsilon_per_report=0.4))
    assert a.digest == b.digest != c.digest


def test_the_owner_switch_turns_reports_off_whatever_the_fleet_says() -> None:
    policy = resolve_policy(None, _settings(enabled=True), locally_enabled=False)
    assert policy.enabled is False
    assert policy.local_override is not None and "telemetry_enabled" in policy.local_override
    assert resolve_policy(None, _settings(enabled=False)).enabled is False
