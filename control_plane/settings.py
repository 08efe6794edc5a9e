"""Control-plane settings, read once at startup (env prefix ``OUTPOST_CP_``) and passed down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from control_plane.repository import RepositoryLifetimes
from control_plane.telemetry.limits import TelemetryLimits
from protocol.http_limits import HttpLimits

_DAY = 86_400


class ControlPlaneSettings(BaseSettings):
    """Everything the control plane reads from its environment.

    ``database_url`` defaults to a SQLite file in ``data_dir``; give
    ``postgresql+psycopg://user@host/db`` to use PostgreSQL.
    """

    model_config = SettingsConfigDict(env_prefix="OUTPOST_CP_", extra="ignore")

    data_dir: Path = Path("/var/lib/outpost-cp")
    database_url: str | None = None
    # Where the root and targets private keys live while they are on this machine.
    # Default: <data_dir>/keys/offline. Point it at removable media to keep them off the disk.
    offline_keys_dir: Path | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    log_level: str = "info"

    root_lifetime_seconds: int = Field(default=365 * _DAY, ge=1)
    targets_lifetime_seconds: int = Field(default=365 * _DAY, ge=1)
    snapshot_lifetime_seconds: int = Field(default=30 * _DAY, ge=1)
    timestamp_lifetime_seconds: int = Field(default=_DAY, ge=1)
    assignment_ttl_seconds: int = Field(default=7 * _DAY, ge=1)

    max_artifact_bytes: int = Field(default=8 * 1024**3, ge=1)
    # Any other request body (JSON), refused with 413 before authentication or parsing.
    max_request_bytes: int = Field(default=1024**2, ge=1024, le=64 * 1024**2)

    # The HTTP server (protocol.http_limits): header size and deadline, idle and
    # half-open connections, open connections (LimitNOFILE in the unit must cover them).
    http_max_header_bytes: int = Field(default=64 * 1024, ge=4096, le=1024**2)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    http_body_idle_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    http_keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    http_max_connections: int = Field(default=4096, ge=16, le=1_000_000)

    # /docs and /openapi.json: off by default; when on they need an operator API token.
    api_docs: bool = False

    # MQTT nudges (docs/remote-config.md): off unless a broker host is set.
    mqtt_host: str | None = None
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None

    # Background workers (rollouts, cohort defaults). Off only for tests that drive them.
    workers_enabled: bool = True
    rollout_tick_seconds: float = Field(default=2.0, ge=0.05, le=600)
    # how often devices are converged to their cohort's default release (a full-fleet pass)
    cohort_default_seconds: float = Field(default=30.0, ge=0.05, le=3600)

    # Telemetry (docs/telemetry.md): raw device reports are kept this many days (the
    # rollout gates read them), the hourly aggregates much longer (the dashboard's history).
    telemetry_raw_retention_days: int = Field(default=14, ge=1, le=3650)
    telemetry_aggregate_retention_days: int = Field(default=400, ge=1, le=36_500)
    # per device: at most this many reports within the window (an outbox flushing after
    # weeks offline sends its backlog at this pace; a 429 keeps the rest queued)
    telemetry_rate_limit_reports: int = Field(default=120, ge=1, le=1_000_000)
    telemetry_rate_limit_window_seconds: int = Field(default=600, ge=1, le=86_400)
    # the previous release's telemetry a p95 gate compares with: from this long before the
    # rollout began
    telemetry_baseline_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    telemetry_aggregate_seconds: float = Field(default=5.0, ge=0.05, le=3600)
    # /metrics (Prometheus): an API token with the viewer role, or this dedicated scrape
    # token (at least 32 characters). Without either, only API tokens are accepted.
    metrics_token: SecretStr | None = None

    # TEST ONLY: freeze the rollout worker at this step, inside its locked transaction,
    # until the process is killed (control_plane.rollouts.fault_injection). Never set it
    # on a real control plane.
    test_pause_at: Literal["rollout-advanced"] | None = None

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "OUTPOST_CP_METRICS_TOKEN must be at least 32 characters (e.g. the output of"
                " 'openssl rand -hex 32'); leave it unset to scrape with a viewer API token"
            )
        return value

    @property
    def telemetry_limits(self) -> TelemetryLimits:
        return TelemetryLimits(
            raw_retention=timedelta(days=self.telemetry_raw_retention_days),
            aggregate_retention=timedelta(days=self.telemetry_aggregate_retention_days),
            rate_limit_reports=self.telemetry_rate_limit_reports,
            rate_limit_window=timedelta(seconds=self.telemetry_rate_limit_window_seconds),
            baseline_window=timedelta(hours=self.telemetry_baseline_hours),
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'control-plane.db').resolve()}"

    @property
    def display_database_url(self) -> str:
        """The database URL with any password masked (safe to print and log)."""
        return make_url(self.resolved_database_url).render_as_string(hide_password=True)

    @property
    def resolved_offline_keys_dir(self) -> Path:
        return self.offline_keys_dir or self.data_dir / "keys" / "offline"

    @property
    def online_keys_dir(self) -> Path:
        return self.data_dir / "keys" / "online"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def root_file(self) -> Path:
        """The initial trusted root that devices are provisioned with."""
        return self.data_dir / "root.json"

    @property
    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_header_bytes=self.http_max_header_bytes,
            header_timeout_seconds=self.http_header_timeout_seconds,
            body_idle_timeout_seconds=self.http_body_idle_timeout_seconds,
            keep_alive_seconds=self.http_keep_alive_seconds,
            max_connections=self.http_max_connections,
        )

    @property
    def lifetimes(self) -> RepositoryLifetimes:
        return RepositoryLifetimes(
            root=timedelta(seconds=self.root_lifetime_seconds),
            targets=timedelta(seconds=self.targets_lifetime_seconds),
            snapshot=timedelta(seconds=self.snapshot_lifetime_seconds),
            timestamp=timedelta(seconds=self.timestamp_lifetime_seconds),
        )

    @property
    def assignment_ttl(self) -> timedelta:
        return timedelta(seconds=self.assignment_ttl_seconds)
