"""What remote config adds to the agent process, composed in one place for the daemon:
the live config and its listeners, the local API middleware, the config sync thread and
the MQTT nudge session."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI

from edge_agent.remote_config.health import ServingConfigHealth
from edge_agent.remote_config.live import LiveConfig, log_level_listener
from edge_agent.remote_config.local_api import RemoteConfigMiddleware
from edge_agent.remote_config.sync import ConfigClient, ConfigSync, director_from_metadata
from edge_agent.settings import AgentSettings
from edge_agent.store import DeviceIdentity, load_device_key, load_trusted_root
from edge_agent.store.state_db import StateDB
from edge_agent.updates.schedule import PollSchedule
from edge_agent.uplink.mqtt import NudgeSession
from protocol.remote_config import RemoteConfig

if TYPE_CHECKING:
    from edge_agent.serving import ReleaseServing
    from edge_agent.updates import UpdateLoop

log = logging.getLogger(__name__)

__all__ = ["RemoteConfigAgent"]


class RemoteConfigAgent:
    """Owns the live config for the agent's lifetime; ``start`` runs sync and MQTT."""

    def __init__(self, settings: AgentSettings, serving: ReleaseServing) -> None:
        self.settings = settings
        self.serving = serving
        self.live = LiveConfig(release=lambda: serving.registry.release)
        self.sync: ConfigSync | None = None
        self.nudges: NudgeSession | None = None
        self.loop: UpdateLoop | None = None
        local_level = logging.getLevelName(logging.getLogger("edge_agent").getEffectiveLevel())
        self.live.subscribe(log_level_listener("edge_agent", str(local_level)))
        self.live.subscribe(self._runtime_settings)
        serving.rag.evidence_override = self.live.evidence_policy

    def _runtime_settings(self, config: RemoteConfig) -> None:
        idle = config.runtime.idle_unload_seconds
        self.serving.registry.set_idle_unload(
            self.settings.idle_unload_seconds if idle is None else idle
        )
        poll = config.updates.poll_interval_seconds or self.settings.poll_interval_seconds
        if self.loop is not None:
            self.loop.set_poll_interval(poll)
        if self.sync is not None:
            self.sync.set_poll_interval(poll, self.settings.poll_interval_seconds)

    def install(self, app: FastAPI) -> None:
        """Rate limit and chat defaults around the local API."""
        app.add_middleware(
            RemoteConfigMiddleware, live=self.live, max_body_bytes=self.settings.max_request_bytes
        )

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"version": self.live.version}
        if self.sync is not None:
            body.update(self.sync.status())
        body["mqtt"] = (
            "off" if self.nudges is None else "connected" if self.nudges.connected else "connecting"
        )
        return body

    def restore(
        self, *, identity: DeviceIdentity, db: StateDB, http: httpx.Client, loop: UpdateLoop | None
    ) -> ConfigSync:
        """Make the sync for an opened store and put the last applied config in force."""
        state_dir = self.settings.state_dir
        metadata_dir = state_dir / "tuf"
        trusted_root = load_trusted_root(state_dir)
        self.loop = loop
        self.sync = ConfigSync(
            device_id=identity.device_id,
            db=db,
            source=ConfigClient(
                http, device_id=identity.device_id, device_key=load_device_key(state_dir)
            ),
            director=lambda: director_from_metadata(metadata_dir, trusted_root),
            live=self.live,
            health=ServingConfigHealth(self.serving),
            schedule=PollSchedule(
                self.settings.poll_interval_seconds, self.settings.max_backoff_seconds
            ),
        )
        try:
            version = self.sync.restore()
        except Exception:
            log.exception("the stored remote config could not be restored; local settings apply")
        else:
            if version is not None:
                log.info("remote config v%d in force (restored)", version)
        self._runtime_settings(self.live.config)
        return self.sync

    def attach_loop(self, loop: UpdateLoop) -> None:
        """The update loop now runs: nudges wake it and the poll interval applies to it."""
        self.loop = loop
        self._runtime_settings(self.live.config)

    def start(self, *, identity: DeviceIdentity, stop: threading.Event) -> threading.Thread:
        """Run the config sync in a thread; open the MQTT session if a broker is set."""
        sync = self.sync
        if sync is None:
            raise RuntimeError("restore() first")
        thread = threading.Thread(target=sync.run, args=(stop,), name="remote-config", daemon=True)
        thread.start()
        if self.settings.mqtt_host:
            password = self.settings.mqtt_password
            self.nudges = NudgeSession(
                host=self.settings.mqtt_host,
                port=self.settings.mqtt_port,
                device_id=identity.device_id,
                username=self.settings.mqtt_username,
                password=None if password is None else password.get_secret_value(),
                on_nudge=self._nudged,
            )
            self.nudges.start()
        return thread

    def _nudged(self) -> None:
        if self.sync is not None:
            self.sync.wake()
        if self.loop is not None:
            self.loop.wake()

    def close(self) -> None:
        if self.nudges is not None:
            self.nudges.close()
        if self.sync is not None:
            self.sync.wake()
