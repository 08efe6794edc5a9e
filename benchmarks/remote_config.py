"""Remote config: time from ``config set`` to ``applied`` reported, with MQTT and with
polling only, and the idle network bytes of each.

Real processes on loopback: a control plane (``python -m control_plane serve``), its own
Mosquitto, one real agent (no release installed, so the config health check sends no
model request: this measures delivery, not inference). The agent reaches the control
plane and the broker through two byte-counting TCP relays in this process.

- ``mqtt``: the agent's MQTT session open, its poll interval set to 300 s by remote config
  (so a poll cannot explain the latency); ``--changes`` device-scope changes, one at a
  time; each timed from just before ``PATCH /api/v1/config/scopes/device:ID`` until
  ``GET /api/v1/devices/ID/config`` shows the device reported ``applied`` for that value
  (polled every 10 ms); each change after a random pause, so it lands at a random point
  of the poll interval;
- ``polling``: the same agent restarted without MQTT, poll interval ``--poll-interval``;
  the same changes, the same timing;
- ``idle_bytes``: TCP payload bytes both ways through each relay while nothing changes:
  the MQTT session over ``--mqtt-idle`` s (keepalive 60 s), and polling over
  ``--poll-idle`` s at ``--poll-interval``, divided by the polls seen (requests for
  ``/api/v1/device/config``), then scaled to a day: the MQTT session per day, and polling
  every 5 minutes (288 polls) per day. Payload only: TCP/IP headers add about 52 bytes per
  segment each way.

Writes ``benchmarks/results/remote_config.json``.

    .venv/bin/python benchmarks/remote_config.py [--changes 50] [--poll-interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "remote_config.json"


class CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the bytes each way (its own event loop)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # client -> server
        self.down = 0
        self.config_polls = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    if upstream:
                        self.up += len(data)
                        self.config_polls += data.count(b"GET /api/v1/device/config ")
                    else:
                        self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, target_writer, True), self._pipe(target_reader, writer, False)
        )

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.up, self.down, self.config_polls


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(percentile(seconds, 0.50), 3),
        "p95_s": round(percentile(seconds, 0.95), 3),
        "max_s": round(max(seconds), 3),
        "mean_s": round(statistics.mean(seconds), 3),
        "n": len(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--mqtt-idle", type=float, default=125.0)
    parser.add_argument("--poll-idle", type=float, default=30.0)
    args = parser.parse_args()

    from tests.e2e.conftest import Agent, ControlPlane, wait_until
    from tests.remote_config.mqtt_harness import Broker

    work = Path(tempfile.mkdtemp(prefix="bench-remote-config-"))
    broker = Broker(work / "mqtt").start()
    os.environ["OUTPOST_CP_MQTT_HOST"] = "127.0.0.1"
    os.environ["OUTPOST_CP_MQTT_PORT"] = str(broker.port)
    cp = ControlPlane(work / "cp" / "data")
    http_relay = CountingRelay(cp.port)
    mqtt_relay = CountingRelay(broker.port)
    agent = Agent(cp, work / "agent" / "state", server_url=f"http://127.0.0.1:{http_relay.port}")
    mqtt_env = {
        "OUTPOST_AGENT_MQTT_HOST": "127.0.0.1",
        "OUTPOST_AGENT_MQTT_PORT": str(mqtt_relay.port),
        "OUTPOST_AGENT_MAX_BACKOFF_SECONDS": "600",
    }
    scope = quote(f"device:{agent.device_id}", safe="")
    counter = [0]

    def view() -> dict[str, Any]:
        r = cp.admin.get(f"/api/v1/devices/{agent.device_id}/config")
        r.raise_for_status()
        return dict(r.json())

    def change(patch: dict[str, Any]) -> None:
        r = cp.admin.patch(f"/api/v1/config/scopes/{scope}", json=patch)
        r.raise_for_status()

    def applied(check: dict[str, Any]) -> bool:
        v = view()
        return bool(v["in_sync"]) and all(v["effective"].get(k) == x for k, x in check.items())

    def set_poll(seconds: float) -> None:
        patch = {"updates": {"poll_interval_seconds": seconds}}
        change(patch)
        wait_until(lambda: applied(patch), timeout=60, what=f"poll interval {seconds}")

    def timed_changes(n: int, offset_s: float) -> list[float]:
        """``n`` changes, each after a random pause in [0, offset_s) so that, under
        polling, a change lands at a random point of the poll interval."""
        out: list[float] = []
        rng = random.Random(7)
        for _ in range(n):
            time.sleep(rng.uniform(0, offset_s))
            counter[0] += 1
            patch = {"chat": {"max_tokens_default": counter[0]}}
            started = time.monotonic()
            change(patch)
            while not applied(patch):
                if time.monotonic() - started > 120:
                    raise AssertionError(f"change {counter[0]} not applied in 120 s")
                time.sleep(0.01)
            out.append(time.monotonic() - started)
        return out

    try:
        agent.start(env=mqtt_env)
        wait_until(lambda: agent.status()["config"]["mqtt"] == "connected", timeout=60, what="MQTT")
        set_poll(300.0)
        mqtt_seconds = timed_changes(args.changes, 0.2)

        # idle: the MQTT session alone (no poll is due within the window)
        time.sleep(2)
        m_up0, m_down0, _ = mqtt_relay.snapshot()
        time.sleep(args.mqtt_idle)
        m_up1, m_down1, _ = mqtt_relay.snapshot()
        mqtt_idle_bytes = (m_up1 - m_up0) + (m_down1 - m_down0)

        print("mqtt:", json.dumps(summary(mqtt_seconds)), flush=True)
        set_poll(args.poll_interval)  # over MQTT still: the restarted agent restores it
        agent.terminate()
        agent.start(env={"OUTPOST_AGENT_MAX_BACKOFF_SECONDS": "600"})
        time.sleep(args.poll_interval * 1.5)  # in its stride
        polling_seconds = timed_changes(args.changes, args.poll_interval)

        time.sleep(args.poll_interval * 1.5)
        h_up0, h_down0, polls0 = http_relay.snapshot()
        time.sleep(args.poll_idle)
        h_up1, h_down1, polls1 = http_relay.snapshot()
        polls = max(1, polls1 - polls0)
        per_poll = ((h_up1 - h_up0) + (h_down1 - h_down0)) / polls
    finally:
        if agent.process is not None:
            agent.terminate()
        cp.stop()
        broker.kill()

    result = {
        "benchmark": "remote_config",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "changes": args.changes,
        "config_set_to_applied": {
            "mqtt": {**summary(mqtt_seconds), "poll_interval_s": 300.0},
            "polling_only": {**summary(polling_seconds), "poll_interval_s": args.poll_interval},
        },
        "idle_bytes": {
            "mqtt_session": {
                "window_s": args.mqtt_idle,
                "payload_bytes": mqtt_idle_bytes,
                "payload_bytes_per_day": round(mqtt_idle_bytes * 86_400 / args.mqtt_idle),
                "keepalive_s": 60,
            },
            "polling": {
                "window_s": args.poll_idle,
                "polls": polls,
                "payload_bytes_per_poll": round(per_poll),
                "payload_bytes_per_day_every_5_min": round(per_poll * 288),
                "note": "a poll: update check (assignment + TUF timestamp) and config check",
            },
        },
        "note": "payload bytes through a TCP relay; TCP/IP headers add ~52 B per segment",
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
