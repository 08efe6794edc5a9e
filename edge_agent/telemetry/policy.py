"""The telemetry policy in force: built-in defaults, under the release's policy bundle,
under the remote config (each layer wins where it sets a key), and the device owner's
local switch above all. Pure: layers in, a :class:`TelemetryPolicy` out."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.canonical import canonical_json
from protocol.remote_config import TelemetrySettings, merge_patch
from protocol.telemetry import SENSITIVE_FIELDS, Mechanism, PolicySource, SensitiveField

__all__ = ["DEFAULT_POLICY", "FieldRule", "TelemetryPolicy", "resolve_policy"]

# Hourly reports; 0.25 per report x 24 = 6 per day, the daily cap; about 11 years of
# daily caps before the lifetime cap. Each count clamped to 10,000 per report.
DEFAULT_POLICY: dict[str, Any] = {
    "enabled": True,
    "interval_seconds": 3600.0,
    "epsilon_per_report": 0.25,
    "epsilon_per_period": 6.0,
    "budget_period_seconds": 86_400.0,
    "epsilon_lifetime": 25_000.0,
    "fields": {
        name: {"release": True, "mechanism": "discrete_laplace", "clamp": 10_000, "weight": 1.0}
        for name in SENSITIVE_FIELDS
    },
}


@dataclass(frozen=True)
class FieldRule:
    field: SensitiveField
    release: bool
    mechanism: Mechanism
    clamp: int
    weight: float


@dataclass(frozen=True)
class TelemetryPolicy:
    """What the reporter does; ``sources`` says which layer set each setting."""

    enabled: bool
    interval_seconds: float
    epsilon_per_report: float
    epsilon_per_period: float
    budget_period_seconds: float
    epsilon_lifetime: float
    fields: tuple[FieldRule, ...]
    source: PolicySource  # the most specific layer that set anything
    sources: Mapping[str, str]  # setting ("fields.prompt_tokens.clamp") -> layer; else default
    digest: str
    local_override: str | None = None  # why the device owner's setting changed it

    def as_dict(self) -> dict[str, Any]:
        """The policy as the CLI shows it."""
        return {
            "enabled": self.enabled,
            "interval_seconds": self.interval_seconds,
            "epsilon_per_report": self.epsilon_per_report,
            "epsilon_per_period": self.epsilon_per_period,
            "budget_period_seconds": self.budget_period_seconds,
            "epsilon_lifetime": self.epsilon_lifetime,
            "fields": {
                r.field: {
                    "release": r.release,
                    "mechanism": r.mechanism,
                    "clamp": r.clamp,
                    "weight": r.weight,
                }
                for r in self.fields
            },
            "source": self.source,
            "sources": dict(self.sources),
            "digest": self.digest,
            "local_override": self.local_override,
        }


def _leaves(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, Mapping):
            out.update(_leaves(v, name + "."))
        else:
            out[name] = v
    return out


def _set(layer: TelemetrySettings | None) -> dict[str, Any]:
    return {} if layer is None else layer.model_dump(exclude_none=True, exclude_defaults=False)


def _prune(value: Any) -> Any:
    """Drop empty objects left by sections that set nothing."""
    if not isinstance(value, Mapping):
        return value
    kept = {k: _prune(v) for k, v in value.items()}
    return {k: v for k, v in kept.items() if v != {}}


def resolve_policy(
    release: TelemetrySettings | None,
    remote: TelemetrySettings | None,
    *,
    locally_enabled: bool = True,
) -> TelemetryPolicy:
    """Defaults < the release's policy bundle < the remote config; ``locally_enabled``
    False (the device owner's setting) turns telemetry off whatever the layers say."""
    layers: list[tuple[PolicySource, dict[str, Any]]] = [
        ("default", DEFAULT_POLICY),
        ("release", _prune(_set(release))),
        ("remote_config", _prune(_set(remote))),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    source: PolicySource = "default"
    for name, layer in layers:
        if not layer:
            continue
        merged = merge_patch(merged, layer)
        for key in _leaves(layer):
            if name != "default":
                sources[key] = name
        source = name
    digest = hashlib.sha256(canonical_json(merged)).hexdigest()
    fields = tuple(
        FieldRule(
            field=name,
            release=bool(merged["fields"][name]["release"]),
            mechanism=merged["fields"][name]["mechanism"],
            clamp=int(merged["fields"][name]["clamp"]),
            weight=float(merged["fields"][name]["weight"]),
        )
        for name in SENSITIVE_FIELDS
    )
    enabled = bool(merged["enabled"])
    override = None
    if enabled and not locally_enabled:
        enabled, override = False, "telemetry_enabled is false in the agent's local settings"
    return TelemetryPolicy(
        enabled=enabled,
        interval_seconds=float(merged["interval_seconds"]),
        epsilon_per_report=float(merged["epsilon_per_report"]),
        epsilon_per_period=float(merged["epsilon_per_period"]),
        budget_period_seconds=float(merged["budget_period_seconds"]),
        epsilon_lifetime=float(merged["epsilon_lifetime"]),
        fields=fields,
        source=source,
        sources=sources,
        digest=digest,
        local_override=override,
    )
