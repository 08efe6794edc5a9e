"""What the device owner reads with ``outpost-agent telemetry ...``: the policy in force
and where each setting came from, the epsilon spent and left, and every report as it was
queued and sent, field by field. Read from the state directory; works while the agent
runs (SQLite WAL) and while it is stopped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.remote_config.release_defaults import ReleaseDefaults
from edge_agent.remote_config.sync import applied_config
from edge_agent.settings import AgentSettings
from edge_agent.store.release_store import STATE_DB, ReleaseFiles
from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.ledger import budget_window
from edge_agent.telemetry.mechanisms import OpenDPDiscreteLaplace
from edge_agent.telemetry.policy import TelemetryPolicy, resolve_policy
from edge_agent.telemetry.report import plan_release
from edge_agent.telemetry.store import SentRecord, TelemetryStore
from protocol.telemetry import SENSITIVE_FIELDS, ReleasedCounts, TelemetryReport, field_labels

__all__ = ["OwnerView", "budget_text", "policy_text", "sent_text"]


@dataclass
class OwnerView:
    """The state directory's telemetry, opened for reading."""

    policy: TelemetryPolicy
    store: TelemetryStore
    db: StateDB
    remote_version: int | None

    @classmethod
    def open(cls, settings: AgentSettings) -> OwnerView:
        db = StateDB(settings.state_dir / STATE_DB)
        applied = applied_config(db)
        release = ReleaseFiles(settings.state_dir).current()
        _, bundle = ReleaseDefaults().of(release)
        policy = resolve_policy(
            bundle.telemetry if bundle else None,
            applied[1].telemetry if applied else None,
            locally_enabled=settings.telemetry_enabled,
        )
        return cls(policy, TelemetryStore(db), db, applied[0] if applied else None)

    def close(self) -> None:
        self.db.close()

    def budget(self, now: datetime) -> dict[str, Any]:
        window = budget_window(now, self.policy.budget_period_seconds)
        spent = self.store.spent(window)
        return {
            "period_start": window.start.isoformat(),
            "period_end": window.end.isoformat(),
            "period_spent": spent.period,
            "period_cap": self.policy.epsilon_per_period,
            "period_left": max(0.0, self.policy.epsilon_per_period - spent.period),
            "lifetime_spent": spent.lifetime,
            "lifetime_cap": self.policy.epsilon_lifetime,
            "lifetime_left": max(0.0, self.policy.epsilon_lifetime - spent.lifetime),
            "reports_per_period_left": int(
                max(0.0, self.policy.epsilon_per_period - spent.period + 1e-9)
                // self.policy.epsilon_per_report
            ),
        }

    def policy_json(self, now: datetime) -> dict[str, Any]:
        body = self.policy.as_dict()
        body["remote_config_version"] = self.remote_version
        plans = plan_release(self.policy, OpenDPDiscreteLaplace())
        for name, rule in body["fields"].items():
            plan = plans.get(name)
            rule["epsilon_per_report"] = None if plan is None else plan.epsilon
            rule["noise_scale"] = None if plan is None else plan.scale
        body["budget"] = self.budget(now)
        return body

    def sent_json(self, limit: int) -> list[dict[str, Any]]:
        return [_record_json(r) for r in self.store.history(limit)]


def _record_json(record: SentRecord) -> dict[str, Any]:
    return {
        "report_id": record.report_id,
        "queued_at": record.queued_at,
        "sent_at": record.sent_at,
        "outcome": record.outcome,
        "report": json.loads(record.body),
    }


def _layer(policy: TelemetryPolicy, key: str) -> str:
    return policy.sources.get(key, "default")


def policy_text(view: OwnerView, now: datetime) -> str:
    p = view.policy
    body = view.policy_json(now)
    state = "enabled" if p.enabled else "DISABLED"
    if p.local_override:
        state += f" ({p.local_override})"
    remote = f" v{view.remote_version}" if view.remote_version is not None else ""
    lines = [
        f"telemetry: {state}",
        f"policy from: {p.source}{remote if p.source == 'remote_config' else ''}"
        f" (digest {p.digest[:16]})",
        f"report every {p.interval_seconds:g} s [{_layer(p, 'interval_seconds')}]",
        f"epsilon per report {p.epsilon_per_report:g} [{_layer(p, 'epsilon_per_report')}],"
        f" per {p.budget_period_seconds:g} s period {p.epsilon_per_period:g}"
        f" [{_layer(p, 'epsilon_per_period')}], lifetime {p.epsilon_lifetime:g}"
        f" [{_layer(p, 'epsilon_lifetime')}]",
        "",
        f"{'usage field':<36} {'release':<8} {'mechanism':<17} {'clamp':>8} {'epsilon':>9}  set by",
    ]
    for rule in p.fields:
        field = body["fields"][rule.field]
        eps = field["epsilon_per_report"]
        layers = {_layer(p, f"fields.{rule.field}.{k}") for k in ("release", "clamp", "weight")} - {
            "default"
        }
        lines.append(
            f"{rule.field:<36} {'yes' if rule.release else 'no':<8} {rule.mechanism:<17}"
            f" {rule.clamp:>8} {'-' if eps is None else f'{eps:.4f}':>9}"
            f"  {', '.join(sorted(layers)) or 'default'}"
        )
    lines += ["", budget_text(view, now)]
    lines.append(
        "always sent, exact: agent and runtime versions, uptime, restarts, crashes, install"
        " state, RSS, CPU, load, temperature, outbox drops. Never sent: prompts,"
        " completions, documents, images, file names, headers."
    )
    return "\n".join(lines)


def budget_text(view: OwnerView, now: datetime) -> str:
    b = view.budget(now)
    return (
        f"epsilon this period ({b['period_start']} .. {b['period_end']}):"
        f" spent {b['period_spent']:.4g} of {b['period_cap']:g}, left {b['period_left']:.4g}"
        f" ({b['reports_per_period_left']} more reports with usage fields)\n"
        f"epsilon lifetime: spent {b['lifetime_spent']:.4g} of {b['lifetime_cap']:g},"
        f" left {b['lifetime_left']:.4g}"
    )


def _report_text(record: SentRecord) -> list[str]:
    report = TelemetryReport.model_validate_json(record.body)
    where = (
        f"sent {record.sent_at} ({record.outcome})" if record.sent_at else "queued, not sent yet"
    )
    lines = [
        f"report {report.report_id} #{report.sequence}: {where}",
        f"  period {report.period_start.isoformat()} .. {report.period_end.isoformat()},"
        f" release {report.release_id}, device class {report.device_class},"
        f" policy {report.policy.source} ({report.policy.digest[:16]})",
    ]
    for name, value in report.operational.model_dump(mode="json").items():
        lines.append(f"  {name:<36} {value}")
    lines.append(f"  {'outbox_dropped':<36} {report.outbox_dropped}")
    privacy = report.privacy
    lines.append(
        f"  {'epsilon_charged':<36} {privacy.epsilon_charged:.4g} (period"
        f" {privacy.period_spent:.4g}/{privacy.period_cap:g}, lifetime"
        f" {privacy.lifetime_spent:.4g}/{privacy.lifetime_cap:g})"
    )
    for name in SENSITIVE_FIELDS:
        value = report.usage.get(name)
        if isinstance(value, ReleasedCounts):
            pairs = ", ".join(
                f"{label}:{v}" for label, v in zip(field_labels(name), value.values, strict=True)
            )
            lines.append(
                f"  {name:<36} noised (scale {value.scale:.4g}, epsilon {value.epsilon:.4g},"
                f" clamp {value.clamp_upper}): {pairs}"
            )
        else:
            lines.append(f"  {name:<36} withheld: {value.reason}")
    return lines


def sent_text(view: OwnerView, limit: int) -> str:
    records = view.store.history(limit)
    if not records:
        return "no telemetry report has been built on this device yet"
    lines: list[str] = []
    for record in records:
        lines += [*_report_text(record), ""]
    reports, size = view.store.outbox_size()
    lines.append(
        f"{reports} report(s) ({size} bytes) queued; {view.store.dropped_total()} dropped by a"
        " full outbox since this state database was created"
    )
    return "\n".join(lines)


def now_utc() -> datetime:
    return datetime.now(UTC)


def state_dir_exists(path: Path) -> bool:
    return (path / STATE_DB).exists()
