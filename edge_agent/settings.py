"""Agent settings, read once at startup (env prefix ``OUTPOST_AGENT_``) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_AGENT_", extra="ignore")

    state_dir: Path = Field(default=Path("/var/lib/outpost"))
    server_url: str | None = None

    # local API
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8800, ge=0, le=65535)
    api_token: SecretStr | None = None  # default: <state_dir>/api-token, made at enroll
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    max_upload_bytes: int = Field(default=50_000_000, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1)  # vision decode cap
    # /v1/embeddings: inputs per request, their total characters and total tokens
    max_embedding_inputs: int = Field(default=2048, ge=1)
    max_embedding_chars: int = Field(default=262_144, ge=1)
    max_embedding_tokens: int = Field(default=32_768, ge=1)
    # structured output and tools (docs/local-api.md): a JSON Schema's size and nesting,
    # its largest repeat count (maxItems, maxLength, {m,n}), and the grammar it becomes
    max_schema_bytes: int = Field(default=32_768, ge=2)
    max_schema_depth: int = Field(default=24, ge=1)
    max_schema_repeat: int = Field(default=256, ge=1)
    max_grammar_bytes: int = Field(default=262_144, ge=1024)

    # update loop
    poll_interval_seconds: float = Field(default=30.0, gt=0)
    # MQTT nudges (docs/remote-config.md): off unless a broker host is set. The user name
    # defaults to the device id (the broker's ACL lets it read only its own topic).
    mqtt_host: str | None = None
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    download_chunk_bytes: int = Field(default=1 << 20, ge=4096)
    # free space a download must leave on the state dir's filesystem beyond the signed
    # length (for state.db, the journal and logs); a download that would not is not started
    download_free_space_margin_bytes: int = Field(default=32 << 20, ge=0)
    # delta updates (docs/delta-updates.md): rebuild a changed artifact from the chunks the
    # device already has and fetch only the rest; false: always download artifacts whole
    delta_updates: bool = True
    # how often a store that could not be written at startup is tried again
    store_retry_seconds: float = Field(default=30.0, gt=0)
    # TEST ONLY (OUTPOST_AGENT_TEST_PAUSE_AT): freeze at an install step so a test can kill
    # the agent there; see edge_agent/updates/fault_injection.py. Never set on a device.
    test_pause_at: (
        Literal[
            "download",
            "delta-manifest",
            "delta-copy",
            "delta-fetch",
            "verified",
            "activate",
            "health",
            "telemetry-charged",
        ]
        | None
    ) = None
    # telemetry (docs/telemetry.md). telemetry_enabled is the device owner's switch: false
    # and no report is built or sent, whatever the policy says. The outbox keeps at most
    # this many undelivered reports / bytes (30 days of hourly reports), dropping the oldest.
    telemetry_enabled: bool = True
    telemetry_outbox_max_reports: int = Field(default=720, ge=1)
    telemetry_outbox_max_bytes: int = Field(default=8 << 20, ge=64 << 10)
    device_class: str | None = Field(default=None, max_length=64)  # default: <arch>-<os>
    # health window: how long one smoke request may take before it counts as failed
    health_check_timeout_seconds: float = Field(default=30.0, gt=0)

    # runtime
    n_threads: int | None = None  # decode threads; default: all cores but one
    # prompt processing and embeddings (the event loop idles while a prompt is read);
    # default: every core
    n_threads_batch: int | None = Field(default=None, ge=1)
    n_ctx: int = Field(default=2048, ge=128)
    max_queue: int = Field(default=8, ge=1)
    # chat models: generations decoded together (llama-server's slots); each slot is a KV
    # sequence of n_ctx tokens, counted in the model's memory (docs/local-api.md)
    n_parallel: int = Field(default=4, ge=1, le=64)
    # chat models: RAM for the KV state of recent conversations' prefixes, per model
    prompt_cache_mb: int = Field(default=64, ge=0)
    # chat models: prompt-lookup decoding of greedy generations (docs/local-api.md): off by
    # default, it was slower on the CPUs measured; the longest draft checked per step
    prompt_lookup: bool = False
    prompt_lookup_draft: int = Field(default=2, ge=1, le=16)
    idle_unload_seconds: float = Field(default=0.0, ge=0)  # 0 = never unload
    memory_budget_mb: int | None = None
