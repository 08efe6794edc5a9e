"""Publishing nudges to the broker (paho-mqtt 2), after the change is committed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import event
from sqlalchemy.orm import Session

from protocol.nudges import Nudge, NudgeReason, nudge_topic

log = logging.getLogger("control_plane.nudges")

_PENDING = "outpost.pending_nudges"


class NudgePublisher(Protocol):
    def publish(self, device_ids: Iterable[str], reason: NudgeReason) -> None: ...

    def close(self) -> None: ...


class NullNudgePublisher:
    """No broker configured: devices learn of changes at their next poll."""

    def publish(self, device_ids: Iterable[str], reason: NudgeReason) -> None:
        return None

    def close(self) -> None:
        return None


class MqttNudgePublisher:
    """One MQTT session to the broker, kept up by paho's network thread (reconnects with
    backoff by itself). While the broker is away nudges are dropped, not queued: a
    device polls anyway, and a stale burst on reconnect would help no one."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
    ) -> None:
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._where = f"{host}:{port}"
        self._client.connect_async(host, port, keepalive=60)
        self._client.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s refused the control plane: %s", self._where, reason)
            return
        log.info("MQTT: connected to %s", self._where)
        self._connected.set()

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        self._connected.clear()
        log.info("MQTT: disconnected from %s (%s); reconnecting", self._where, reason)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, device_ids: Iterable[str], reason: NudgeReason) -> None:
        if not self._connected.is_set():
            return
        payload = Nudge(reason=reason).model_dump_json().encode()
        for device_id in dict.fromkeys(device_ids):
            try:
                self._client.publish(nudge_topic(device_id), payload, qos=0)
            except (ValueError, OSError) as e:
                log.info("MQTT: nudge to %s not sent: %s", device_id, e)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def nudge_after_commit(
    session: Session, publisher: NudgePublisher, device_ids: Iterable[str], reason: NudgeReason
) -> None:
    """Publish the nudges once ``session``'s transaction commits (never on rollback: a
    device woken before the change is visible would find nothing new)."""
    session.info.setdefault(_PENDING, []).append((publisher, list(device_ids), reason))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    for publisher, device_ids, reason in pending or ():
        try:
            publisher.publish(device_ids, reason)
        except Exception:
            log.exception("MQTT: publishing nudges failed")


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous: object) -> None:
    session.info.pop(_PENDING, None)
