"""A real Mosquitto for tests: its own process on a free port, with a generated password
file and topic ACL (the control plane may publish nudges; each device may only read its
own topic), and a small paho subscriber."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.nudges import NUDGE_TOPIC_PREFIX
from tests.requirements import missing

CP_USER = "control-plane"
MONITOR_USER = "monitor"  # test-only: reads every nudge topic, to see what was sent

ACL = f"""user {CP_USER}
topic write {NUDGE_TOPIC_PREFIX}/#

user {MONITOR_USER}
topic read {NUDGE_TOPIC_PREFIX}/#

pattern read {NUDGE_TOPIC_PREFIX}/%u
"""


def mosquitto_binaries() -> tuple[str, str]:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    passwd = shutil.which("mosquitto_passwd")
    if found is None or passwd is None:
        missing("mosquitto and mosquitto_passwd", "apt-get install mosquitto")
    return found, passwd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"mosquitto did not listen on {port} within {timeout} s")


class Broker:
    """``mosquitto -c <generated conf>``; ``users`` maps user name -> password (none:
    anonymous access allowed and no ACL)."""

    def __init__(self, directory: Path, users: dict[str, str] | None = None) -> None:
        self.binary, passwd = mosquitto_binaries()
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = users or {}
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "user root"]
        if self.users:
            password_file = directory / "passwd"
            for i, (user, password) in enumerate(self.users.items()):
                subprocess.run(
                    [passwd, *(["-c"] if i == 0 else []), "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            (directory / "acl").write_text(ACL)
            lines += [
                "allow_anonymous false",
                f"password_file {password_file}",
                f"acl_file {directory / 'acl'}",
            ]
        else:
            lines.append("allow_anonymous true")
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(self.port)
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.kill()


class Subscriber:
    """A paho client that records what arrives on ``topic`` (and whether it subscribed)."""

    def __init__(
        self, port: int, topic: str, user: str | None = None, password: str | None = None
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.granted: queue.Queue[list[int]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=0)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.granted.put(
            [int(code.value) for code in codes]
        )
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_as(port: int, topic: str, payload: bytes, user: str, password: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
