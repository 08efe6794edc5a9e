"""Remote config: the agent's remotely settable settings, how scopes merge, and the
signed per-device document that carries them (protocol v1).

The settable settings are one typed model, :class:`RemoteConfig`; its JSON Schema
(:func:`remote_config_json_schema`, published as ``docs/remote-config.schema.json``) is
what both sides check against. Unknown keys are refused, never ignored, so a typo cannot
silently do nothing. A setting left out means "the device's own local setting".

Merge rule (pure, :func:`effective_config`): the effective config of a device is the
fleet layer, then each of its tag layers in sorted ``key=value`` order, then its device
layer, each applied with JSON merge patch (RFC 7386): objects merge key by key, any other
value replaces, and ``null`` removes the key. An operator's change to a layer is itself a
merge patch onto that layer (:func:`merge_patch`), so ``{"chat": {"system_prompt":
null}}`` removes one setting and leaves the others of the layer alone. Stored layers
never hold ``null``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol import telemetry
from protocol.canonical import canonical_json
from protocol.version import PROTOCOL_VERSION

__all__ = [
    "CONFIG_PAYLOAD_TYPE",
    "ConfigDocument",
    "ConfigProblem",
    "ConfigReport",
    "ConfigReportAck",
    "ConfigState",
    "RemoteConfig",
    "TelemetryFieldPolicy",
    "TelemetrySettings",
    "config_digest",
    "config_problems",
    "effective_config",
    "merge_patch",
    "problems_of",
    "remote_config_json_schema",
]

CONFIG_PAYLOAD_TYPE = "application/vnd.outpost.remote-config+json;v=1"
# Config versions are stored as INTEGER on SQLite and PostgreSQL alike.
MAX_CONFIG_VERSION = 2**31 - 1
MAX_SYSTEM_PROMPT_CHARS = 8000


class _Section(BaseModel):
    # strict: "256" is not 256 and 1 is not true; extra: unknown keys are refused
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ChatSettings(_Section):
    """Defaults for chat and completion requests that do not set them themselves."""

    max_tokens_default: int | None = Field(default=None, ge=1, le=8192)
    temperature_default: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p_default: float | None = Field(default=None, gt=0.0, le=1.0)
    system_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SYSTEM_PROMPT_CHARS,
        description="prepended as the system turn when a chat request brings none",
    )


class RateLimitSettings(_Section):
    """A token bucket over the local API's authenticated requests."""

    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    burst: int | None = Field(default=None, ge=1, le=100_000)


class RagSettings(_Section):
    """Thresholds of the abstention rule (cosine similarities, see docs/rag.md)."""

    min_similarity: float | None = Field(default=None, ge=0.0, le=1.0)
    confident_similarity: float | None = Field(default=None, ge=0.0, le=1.0)
    paraphrase_similarity: float | None = Field(default=None, ge=0.0, le=1.0)
    min_term_coverage: float | None = Field(default=None, ge=0.0, le=1.0)


class TelemetryFieldPolicy(_Section):
    """How one usage-sensitive telemetry field is released (see docs/telemetry.md)."""

    release: bool | None = Field(default=None, description="false: always withheld")
    mechanism: Literal["discrete_laplace"] | None = None
    clamp: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="each count clamped to [0, clamp]"
    )
    weight: float | None = Field(
        default=None, gt=0.0, le=1000.0, description="share of the per-report epsilon"
    )


class TelemetryFields(_Section):
    """A release policy per usage field (:data:`protocol.telemetry.SENSITIVE_FIELDS`)."""

    requests_by_feature: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    errors_by_class: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    chat_ttft_seconds: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    chat_time_per_output_token_seconds: TelemetryFieldPolicy = Field(
        default_factory=TelemetryFieldPolicy
    )
    completion_seconds: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    embedding_seconds: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    vision_seconds: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    rag_seconds: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    prompt_tokens: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)
    rag_abstentions: TelemetryFieldPolicy = Field(default_factory=TelemetryFieldPolicy)


if tuple(TelemetryFields.model_fields) != telemetry.SENSITIVE_FIELDS:
    raise RuntimeError("TelemetryFields must list protocol.telemetry.SENSITIVE_FIELDS in order")


class TelemetrySettings(_Section):
    """The telemetry policy: whether and how often the device reports, and the privacy
    budget of its usage-sensitive fields (epsilon per report, per period and lifetime)."""

    enabled: bool | None = None
    interval_seconds: float | None = Field(default=None, ge=10.0, le=86_400.0)
    epsilon_per_report: float | None = Field(default=None, gt=0.0, le=10.0)
    epsilon_per_period: float | None = Field(default=None, gt=0.0, le=1000.0)
    budget_period_seconds: float | None = Field(default=None, ge=3600.0, le=31_622_400.0)
    epsilon_lifetime: float | None = Field(default=None, gt=0.0, le=1_000_000.0)
    fields: TelemetryFields = Field(default_factory=TelemetryFields)


class UpdateSettings(_Section):
    poll_interval_seconds: float | None = Field(default=None, ge=1.0, le=86_400.0)


class RuntimeSettings(_Section):
    idle_unload_seconds: float | None = Field(
        default=None, ge=0.0, le=604_800.0, description="0 = never unload"
    )


class RemoteConfig(_Section):
    """Everything an operator may set on a device from the control plane."""

    chat: ChatSettings = Field(default_factory=ChatSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    rag: RagSettings = Field(default_factory=RagSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    updates: UpdateSettings = Field(default_factory=UpdateSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None


def remote_config_json_schema() -> dict[str, Any]:
    """The published JSON Schema of :class:`RemoteConfig`."""
    schema = RemoteConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://outpost.invalid/schemas/remote-config/v1"
    return schema


@dataclass(frozen=True)
class ConfigProblem:
    """One way a config fails the schema: where (a JSON pointer) and which rule."""

    pointer: str
    rule: str

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.rule}"


def _pointer(loc: Iterable[int | str]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def _allowed_keys(loc: tuple[int | str, ...], root: type[BaseModel]) -> list[str]:
    model: type[BaseModel] = root
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def config_problems(document: Mapping[str, Any]) -> list[ConfigProblem]:
    """Every schema violation of ``document`` (empty when it is a valid RemoteConfig)."""
    try:
        RemoteConfig.model_validate(dict(document))
    except ValidationError as e:
        return problems_of(e, RemoteConfig)
    return []


def problems_of(error: ValidationError, root: type[BaseModel]) -> list[ConfigProblem]:
    """A pydantic error of ``root`` as JSON pointers and rules."""
    problems = []
    for err in error.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc, root))
            rule = f"unknown key (allowed here: {allowed})"
        else:
            rule = f"{err['msg']} ({err['type']})"
        problems.append(ConfigProblem(_pointer(loc), rule))
    return problems


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``patch`` applied to ``target`` (neither is changed)."""
    if not isinstance(patch, Mapping):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def effective_config(
    fleet: Mapping[str, Any] | None,
    tags: Mapping[str, Mapping[str, Any]],
    device: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Fleet < tag layers (sorted by their ``key=value``) < device, by merge patch."""
    result: dict[str, Any] = {}
    layers = [fleet, *(tags[tag] for tag in sorted(tags)), device]
    for layer in layers:
        if layer:
            result = merge_patch(result, layer)
    return result


def config_digest(settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of an effective config."""
    return hashlib.sha256(canonical_json(dict(settings))).hexdigest()


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigDocument(_Message):
    """The director's signed statement: this device should apply these settings.

    ``version`` is monotonic per device (an agent never accepts a lower one than it
    has accepted); ``settings`` is the effective config, checked against
    :class:`RemoteConfig` again on the device before anything is applied.
    """

    protocol_version: int = PROTOCOL_VERSION
    device_id: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1, le=MAX_CONFIG_VERSION)
    settings: dict[str, Any]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    issued_at: datetime
    expires_at: datetime


ConfigState = Literal["applied", "rejected", "reverted"]


class ConfigReport(_Message):
    """What the device did with config ``config_version``. ``report_id`` dedupes."""

    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    device_id: str
    config_version: int = Field(ge=1, le=MAX_CONFIG_VERSION)
    state: ConfigState
    detail: str = Field(default="", max_length=2000)
    at: datetime


class ConfigReportAck(_Message):
    report_id: str
    duplicate: bool
