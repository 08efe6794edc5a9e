"""MQTT nudges against a real Mosquitto: the control plane publishes "check now" when a
device's config or assignment changes; broker credentials and topic ACLs keep device A
out of device B's topic and stop any device from publishing nudges."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.nudges import MqttNudgePublisher
from protocol.nudges import nudge_topic
from tests.control_plane.conftest import ControlPlaneUnderTest, make_control_plane, small_gguf
from tests.remote_config.mqtt_harness import CP_USER, MONITOR_USER, Broker, Subscriber, publish_as

pytestmark = pytest.mark.slow

USERS = {
    CP_USER: "cp-secret-1",
    MONITOR_USER: "m-secret-1",
    "dev_a": "a-secret-1",
    "dev_b": "b-secret-1",
}


def received(sub: Subscriber, timeout: float = 3.0) -> tuple[str, bytes] | None:
    try:
        return sub.messages.get(timeout=timeout)
    except queue.Empty:
        return None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "mqtt", USERS) as b:
        yield b


def test_device_a_cannot_read_b_topic_nor_publish_nudges(broker: Broker) -> None:
    a_own = Subscriber(broker.port, nudge_topic("dev_a"), "dev_a", USERS["dev_a"])
    a_spy = Subscriber(broker.port, nudge_topic("dev_b"), "dev_a", USERS["dev_a"])
    b_own = Subscriber(broker.port, nudge_topic("dev_b"), "dev_b", USERS["dev_b"])
    a_spy.granted.get(timeout=5)
    b_own.granted.get(timeout=5)
    a_own.granted.get(timeout=5)
    try:
        publish_as(
            broker.port, nudge_topic("dev_b"), b'{"reason":"config"}', CP_USER, USERS[CP_USER]
        )
        assert received(b_own) is not None  # the control plane reaches B
        assert received(a_spy, 1.0) is None  # A, subscribed to B's topic, gets nothing
        publish_as(
            broker.port, nudge_topic("dev_b"), b'{"reason":"config"}', "dev_a", USERS["dev_a"]
        )
        publish_as(
            broker.port, nudge_topic("dev_a"), b'{"reason":"config"}', "dev_a", USERS["dev_a"]
        )
        assert received(b_own, 1.0) is None  # A cannot nudge B
        assert received(a_own, 1.0) is None  # nor itself
    finally:
        for s in (a_own, a_spy, b_own):
            s.close()


def test_wrong_credentials_are_refused_by_the_broker(broker: Broker) -> None:
    publisher = MqttNudgePublisher(
        host="127.0.0.1", port=broker.port, username=CP_USER, password="wrong"
    )
    try:
        assert not publisher.wait_connected(2.0)
    finally:
        publisher.close()


@pytest.fixture
def cp_with_broker(tmp_path: Path, broker: Broker) -> Iterator[ControlPlaneUnderTest]:
    cp = make_control_plane(
        tmp_path,
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_username=CP_USER,
        mqtt_password=USERS[CP_USER],
    )
    with cp.client:
        publisher = cp.app.state.control_plane.nudges
        assert isinstance(publisher, MqttNudgePublisher) and publisher.wait_connected(5)
        yield cp


def test_config_and_assignment_changes_nudge_exactly_the_devices_they_reach(
    cp_with_broker: ControlPlaneUnderTest, broker: Broker, tmp_path: Path
) -> None:
    cp = cp_with_broker
    lisbon, porto = cp.enroll("l", tags=["store=lisbon"]), cp.enroll("p", tags=["store=porto"])
    subs = {
        d.id: Subscriber(broker.port, nudge_topic(d.id), MONITOR_USER, USERS[MONITOR_USER])
        for d in (lisbon, porto)
    }
    for s in subs.values():
        s.granted.get(timeout=5)
    try:
        r = cp.client.patch(
            "/api/v1/config/scopes/tag%3Astore%3Dlisbon",
            json={"log_level": "DEBUG"},
            headers=cp.auth("operator"),
        )
        assert r.status_code == 200, r.text
        got = received(subs[lisbon.id])
        assert got is not None and json.loads(got[1])["reason"] == "config"
        assert received(subs[porto.id], 1.0) is None
        cp.client.patch(
            "/api/v1/config/scopes/fleet", json={"log_level": "INFO"}, headers=cp.auth("operator")
        )
        assert received(subs[lisbon.id]) is not None and received(subs[porto.id]) is not None
        artifact = cp.upload(small_gguf(tmp_path))
        release = cp.publish([artifact["id"]])
        cp.assign(porto.id, release["id"])
        got = received(subs[porto.id])
        assert got is not None and json.loads(got[1])["reason"] == "assignment"
        assert received(subs[lisbon.id], 1.0) is None
    finally:
        for s in subs.values():
            s.close()
