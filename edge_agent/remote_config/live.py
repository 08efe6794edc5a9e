"""The remote config in force, read by the parts that apply it live.

:class:`LiveConfig` holds the current :class:`~protocol.remote_config.RemoteConfig`
(thread-safe) and tells listeners when it changes. Readers ask for the value they need
at the moment they need it (chat defaults per request, the evidence policy per RAG
question), so a change takes effect at the next request, without a restart. A setting
the remote config leaves out falls back to the active release's prompt pack or policy
bundle where those have it, else to the agent's local setting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from edge_agent.errors import BadUpdateError, ResourceExhaustedError
from edge_agent.rag.grounding import EvidencePolicy
from edge_agent.release import InstalledRelease
from edge_agent.remote_config.release_defaults import ReleaseDefaults
from protocol.release_artifacts import PolicyBundle, PromptPack
from protocol.remote_config import RemoteConfig, TelemetrySettings

__all__ = ["ChatDefaults", "LiveConfig", "RateLimitedError", "RequestRateLimiter"]

Listener = Callable[[RemoteConfig], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatDefaults:
    """What a chat/completion request gets for what it does not set itself."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    system_prompt: str | None = None


class RateLimitedError(ResourceExhaustedError):
    """The local API's request rate limit (remote config ``rate_limits``) is reached."""

    http_status = 429
    error_type = "rate_limit_exceeded"


class RequestRateLimiter:
    """A token bucket: ``requests_per_minute`` refill, ``burst`` capacity (pure arithmetic
    over the ``clock`` passed in)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._at = clock()
        self._limit: tuple[int, int] | None = None

    def configure(self, requests_per_minute: int | None, burst: int | None) -> None:
        with self._lock:
            if requests_per_minute is None:
                self._limit = None
                return
            capacity = burst or max(1, requests_per_minute // 6)
            if self._limit != (requests_per_minute, capacity):
                self._limit = (requests_per_minute, capacity)
                self._tokens = float(capacity)
                self._at = self._clock()

    def admit(self) -> None:
        """Take one token or raise :class:`RateLimitedError` (nothing waits)."""
        with self._lock:
            if self._limit is None:
                return
            per_minute, capacity = self._limit
            now = self._clock()
            self._tokens = min(capacity, self._tokens + (now - self._at) * per_minute / 60.0)
            self._at = now
            if self._tokens < 1.0:
                raise RateLimitedError(
                    f"this device's local API allows {per_minute} requests per minute"
                    f" (burst {capacity}), set by its remote config; retry shortly"
                )
            self._tokens -= 1.0


class LiveConfig:
    """The remote config in force and the version it came in (None: none yet)."""

    def __init__(
        self,
        rate_limiter: RequestRateLimiter | None = None,
        *,
        release: Callable[[], InstalledRelease | None] | None = None,
    ) -> None:
        """``release``: the active release, whose prompt pack and policy bundle give the
        defaults under the remote config."""
        self._release = release or (lambda: None)
        self._release_defaults = ReleaseDefaults()
        self._lock = threading.Lock()
        self._config = RemoteConfig()
        self._version: int | None = None
        self._listeners: list[Listener] = []
        self.rate_limiter = rate_limiter or RequestRateLimiter()

    @property
    def config(self) -> RemoteConfig:
        with self._lock:
            return self._config

    @property
    def version(self) -> int | None:
        with self._lock:
            return self._version

    def subscribe(self, listener: Listener) -> None:
        """``listener`` is called with each new config (and once now, with the current)."""
        with self._lock:
            self._listeners.append(listener)
            current = self._config
        listener(current)

    def apply(self, config: RemoteConfig, version: int | None) -> None:
        """Put ``config`` in force; every listener sees it before this returns (a
        listener that raises propagates: the caller reverts)."""
        with self._lock:
            self._config = config
            self._version = version
            listeners = list(self._listeners)
        self.rate_limiter.configure(
            config.rate_limits.requests_per_minute, config.rate_limits.burst
        )
        for listener in listeners:
            listener(config)

    def _from_release(self) -> tuple[PromptPack | None, PolicyBundle | None]:
        try:
            return self._release_defaults.of(self._release())
        except BadUpdateError as e:  # activation checked it; a file gone bad since
            log.warning("ignoring the release's prompt pack / policy: %s", e)
            return None, None

    def telemetry_layers(self) -> tuple[TelemetrySettings | None, TelemetrySettings]:
        """The telemetry policy's layers: the release's policy bundle (None without one)
        and the remote config (edge_agent.telemetry.policy merges them)."""
        _, bundle = self._from_release()
        return (bundle.telemetry if bundle else None), self.config.telemetry

    def chat_defaults(self) -> ChatDefaults:
        """The remote config's chat defaults; the system prompt falls back to the
        release's prompt pack."""
        chat = self.config.chat
        pack, _ = self._from_release()
        return ChatDefaults(
            max_tokens=chat.max_tokens_default,
            temperature=chat.temperature_default,
            top_p=chat.top_p_default,
            system_prompt=chat.system_prompt or (pack.system_prompt if pack else None),
        )

    def evidence_policy(self, base: EvidencePolicy | None = None) -> EvidencePolicy:
        """``base`` (the release's or the built-in policy) with the remote thresholds."""
        policy = base or EvidencePolicy()
        _, bundle = self._from_release()
        layers = [bundle.abstention] if bundle else []
        for rag in (*layers, self.config.rag):
            changes = {
                name: value
                for name, value in (
                    ("min_similarity", rag.min_similarity),
                    ("confident_similarity", rag.confident_similarity),
                    ("paraphrase_similarity", rag.paraphrase_similarity),
                    ("min_term_coverage", rag.min_term_coverage),
                )
                if value is not None
            }
            policy = replace(policy, **changes) if changes else policy
        return policy


def log_level_listener(logger_name: str, local_level: str) -> Listener:
    """Set ``logger_name``'s level from the config, back to ``local_level`` when unset."""

    def apply(config: RemoteConfig) -> None:
        logging.getLogger(logger_name).setLevel(config.log_level or local_level)

    return apply
