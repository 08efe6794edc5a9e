"""The device's MQTT session: wake the update and config checks on a nudge.

A nudge carries no authority (see :mod:`protocol.nudges`): all it does is call
``on_nudge``, and the checks then fetch and verify over HTTP as on a timer. paho-mqtt's
network thread keeps the session up, reconnecting with backoff (1 s doubling to 30 s)
while the broker is away; HTTP polling goes on regardless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.nudges import nudge_topic

__all__ = ["NudgeSession"]

log = logging.getLogger(__name__)

MAX_NUDGE_BYTES = 1024


class NudgeSession:
    """Subscribes to this device's nudge topic; each nudge calls ``on_nudge``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        device_id: str,
        on_nudge: Callable[[], None],
        username: str | None = None,
        password: str | None = None,
        max_reconnect_delay: int = 30,
    ) -> None:
        self._topic = nudge_topic(device_id)
        self._on_nudge = on_nudge
        self._where = f"{host}:{port}"
        self._connected = threading.Event()
        self.nudges_received = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"outpost-{device_id}", clean_session=True
        )
        self._client.username_pw_set(username or device_id, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=max_reconnect_delay)
        self._client.on_connect = self._connect
        self._client.on_disconnect = self._disconnect
        self._client.on_message = self._message
        self._host, self._port = host, port

    def start(self) -> None:
        """Connect in the background (a broker that is down now is retried)."""
        self._client.connect_async(self._host, self._port, keepalive=60)
        self._client.loop_start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s refused this device: %s", self._where, reason)
            return
        client.subscribe(self._topic, qos=0)
        self._connected.set()
        log.info("MQTT: listening for nudges on %s at %s", self._topic, self._where)
        self._on_nudge()  # changes while disconnected sent no nudge we could hear

    def _disconnect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if self._connected.is_set():
            log.info("MQTT: lost %s (%s); HTTP polling goes on, reconnecting", self._where, reason)
        self._connected.clear()

    def _message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic != self._topic or len(message.payload) > MAX_NUDGE_BYTES:
            return
        self.nudges_received += 1
        self._on_nudge()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
