"""`make demo`: the whole Outpost path, end to end, on loopback.

A control plane and an agent start as real processes; SmolLM2 is published as a signed
release; the agent verifies, installs and serves it to the official `openai` client;
the control plane goes away and the agent keeps answering; a tampered release is
refused while the device keeps serving the good one. Then a fleet: the real agent and a
few hundred simulated devices (real keys, signed requests, verified assignments) get a
healthy release in stages, and a bad one that halts at its first judged stage and rolls
back by itself; a lab fleet's slower release halts on the p95 telemetry gate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
PY = sys.executable
QUESTION = "In one sentence: why do offline devices need signed updates?"
SIMULATED_DEVICES = int(os.environ.get("OUTPOST_DEMO_FLEET", "300"))
FLEET_TAGS = ["hw=rpi5", "store=lisbon"]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def info(text: str) -> None:
    print(f"   {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    started = time.monotonic()
    last_note = started
    problem = ""
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError) as e:
            problem = f" (last error: {e})"
        now = time.monotonic()
        if now - started > timeout:
            raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}{problem}")
        if now - last_note > 5:
            info(f"... still waiting for {what} ({now - started:.0f} s)")
            last_note = now
        time.sleep(0.3)


def smollm2_path() -> Path:
    from converters.sources import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        raise SystemExit(f"demo: {e}; run `make setup`") from e


class Process:
    """A child process whose output goes to a log file under .demo/."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = WORK / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class ControlPlane:
    def __init__(self, port: int, data_dir: Path, admin_token: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60
        )

    def post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.post(path, **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"demo: POST {path} -> {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body

    def get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def upload(self, path: Path, *, name: str, kind: str, fmt: str) -> dict[str, Any]:
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            sent = 0
            next_mark = 0.0
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    sent += len(block)
                    if sent / size >= next_mark:
                        progress = f"   uploading {path.name}: {100 * sent / size:5.1f}%"
                        if sys.stdout.isatty():
                            print(f"\r{progress}", end="", flush=True)
                        else:
                            print(progress, flush=True)
                        next_mark += 0.25
                    yield block
            if sys.stdout.isatty():
                print()

        return self.post(
            "/api/v1/artifacts",
            params={"name": name, "kind": kind, "format": fmt},
            content=chunks(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )


def installed_release_id(cp: ControlPlane, device_id: str) -> str | None:
    device = cp.get(f"/api/v1/devices/{device_id}")
    installed = device.get("installed_release") or {}
    value = installed.get("id")
    return None if value is None else str(value)


def chat(client: OpenAI, model: str, question: str, *, stream: bool) -> str:
    if not stream:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=48,
            temperature=0,
        )
        return reply.choices[0].message.content or ""
    print("   agent> ", end="", flush=True)
    parts: list[str] = []
    started = time.monotonic()
    first: float | None = None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=48,
        temperature=0,
        stream=True,
    ):
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first or time.monotonic()
            parts.append(delta)
            print(delta, end="", flush=True)
    print()
    if first is not None:
        info(f"(first token after {1000 * (first - started):.0f} ms, streamed)")
    return "".join(parts)


COLOURS = ["red", "green", "blue", "yellow"]
COLOUR_SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": COLOURS},
        "sure": {"type": "boolean"},
    },
    "required": ["colour", "sure"],
    "additionalProperties": False,
}


def structured_act(client: OpenAI, api: httpx.Client, model: str) -> None:
    """Part of act 4: JSON that follows a schema (grammar-constrained), and the same model
    through Ollama's native API (docs/local-api.md)."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What colour is the clear sky? Answer in JSON."}],
        temperature=0,
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "colour", "strict": True, "schema": COLOUR_SCHEMA},
        },
    )
    parsed = json.loads(reply.choices[0].message.content or "")
    if set(parsed) != {"colour", "sure"} or parsed["colour"] not in COLOURS:
        raise SystemExit(f"structured output broke its schema: {parsed}")
    info(f"response_format json_schema -> {json.dumps(parsed)} (parses, follows the schema)")
    ollama = api.post(
        "/api/chat",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Say hello in three words."}],
            "stream": False,
            "options": {"temperature": 0, "num_predict": 16},
        },
    )
    ollama.raise_for_status()
    info(f"Ollama /api/chat -> {ollama.json()['message']['content'].strip()!r}")


def outpost_cp(cp: ControlPlane, token_file: Path, *args: str) -> dict[str, Any]:
    """Run the operator CLI against the demo's control plane; its JSON answer."""
    done = subprocess.run(
        [PY, "-m", "control_plane", *args, "--server", cp.url, "--token-file", str(token_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: outpost-cp {' '.join(args)} failed: {done.stderr.strip()}")
    body: dict[str, Any] = json.loads(done.stdout)
    return body


def fleet_act(
    cp: ControlPlane,
    cp_dir: Path,
    created: dict[str, Any],
    *,
    device_id: str,
    release_artifacts: list[str],
    config: dict[str, Any],
    client: OpenAI,
    model: str,
    summary: list[str],
) -> None:
    """Act 9: a simulated fleet around the real agent; a staged rollout that completes,
    and one that halts on failing health windows and rolls back by itself."""
    from simulator import Behaviour, Fleet, Health, TagSpec

    banner(f"9. A fleet: the real agent and {SIMULATED_DEVICES} simulated devices")
    token_file = WORK / "operator.token"
    token_file.write_text(created["admin_token"])
    token_file.chmod(0o600)
    operator = outpost_cp(
        cp,
        token_file,
        "tokens",
        "create",
        "--name",
        "demo-operator",
        "--role",
        "operator",
        "--json",
    )
    operator_file = WORK / "operator-role.token"
    operator_file.write_text(operator["token"])
    operator_file.chmod(0o600)

    def behaviour(index: int) -> Behaviour:
        # one simulated device in five cannot run 1.2.0: its health window fails
        if index % 5 == 0:
            return Behaviour(health=Health.FAILS_HEALTH, failing_releases=frozenset({"1.2.0"}))
        return Behaviour()

    sim_http = httpx.Client(base_url=cp.url, timeout=60)
    sim = Fleet.create(
        sim_http,
        size=SIMULATED_DEVICES,
        clock=lambda: datetime.now(UTC),
        operator_token=operator["token"],
        profile=TagSpec.parse(["hw=rpi5", "store=lisbon,porto"]),
        behaviour=behaviour,
        root=(cp_dir / "root.json").read_bytes(),
    )
    info(f"enrolling {SIMULATED_DEVICES} simulated devices (Ed25519 keys, one-time tokens) ...")
    first = sim.step()
    info(f"enrolled {first.enrolled}; tags hw=rpi5 and store=lisbon|porto, like the real kiosk")
    stop = threading.Event()

    def poll_forever() -> None:
        while not stop.is_set():
            sim.step()
            stop.wait(0.5)

    poller = threading.Thread(target=poll_forever, name="simulated-fleet", daemon=True)
    poller.start()

    def publish(version: str, extra: dict[str, Any]) -> None:
        cp.post(
            "/api/v1/releases",
            json={
                "name": "kiosk-assistant",
                "version": version,
                "artifacts": release_artifacts,
                "config": {**config, **extra},
            },
        )

    def roll_out(version: str) -> dict[str, Any]:
        started = outpost_cp(
            cp,
            operator_file,
            "rollout",
            "create",
            "--release",
            f"kiosk-assistant@{version}",
            "--cohort",
            "hw=rpi5",
            "--stages",
            "1,10,50,100",
            "--max-failure-rate",
            "5%",
            "--min-sample",
            "20",
            "--stage-timeout",
            "3m",
            "--json",
        )
        info(
            f"outpost-cp rollout create --release kiosk-assistant@{version} --cohort hw=rpi5"
            " --stages 1,10,50,100 --max-failure-rate 5% --min-sample 20 --stage-timeout 3m"
        )
        last_stage = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = outpost_cp(cp, operator_file, "rollout", "status", started["id"], "--json")
            if status["stage"] != last_stage:
                last_stage = status["stage"]
                percent = status["stages"][last_stage - 1]["percent"]
                info(
                    f"   stage {last_stage} of 4 ({percent:g}%):"
                    f" {status['moved']} devices moved, {status['committed']} committed"
                )
            if status["state"] not in ("running",):
                return status
            time.sleep(1)
        raise SystemExit(f"demo: rollout {started['id']} did not finish in 10 minutes")

    try:
        banner("10. Roll out a healthy release in stages (1% -> 10% -> 50% -> 100%)")
        publish("1.1.0", {"acceptance": {"max_smoke_ms": {"chat": 60000}}})
        done = roll_out("1.1.0")
        if done["state"] != "completed":
            raise SystemExit(f"demo: the healthy rollout ended {done['state']}: {done['reason']}")
        info(done["reason"])
        wait_for(
            "the real kiosk to run 1.1.0",
            lambda: (
                (cp.get(f"/api/v1/devices/{device_id}").get("installed_release") or {}).get(
                    "version"
                )
                == "1.1.0"
            ),
            timeout=180,
        )
        summary.append(
            f"staged rollout of 1.1.0 completed: {done['committed']} devices committed"
            " (the real kiosk among them)"
        )

        banner("11. Roll out a bad release: its health window fails on some devices")
        info("1.2.0 carries an acceptance threshold the real kiosk cannot meet (chat <= 1 ms),")
        info("and one simulated device in five fails its health window on it")
        publish("1.2.0", {"acceptance": {"max_smoke_ms": {"chat": 1}}})
        halted = roll_out("1.2.0")
        if halted["state"] != "halted":
            raise SystemExit(f"demo: the bad rollout ended {halted['state']}: {halted['reason']}")
        info(f"rollout halted: {halted['reason']}")
        gate = next(e for e in halted["events"] if e["kind"] == "halted")["numbers"]
        for g in gate["numbers"]["gates"]:
            info(f"   gate {g['gate']}: {g['verdict']} - {g['reason']}")
        wait_for(
            "every moved device to run 1.1.0 again",
            lambda: (
                all(d.serving_release_id in (None, done["release"]["id"]) for d in sim.devices)
                and (cp.get(f"/api/v1/devices/{device_id}").get("installed_release") or {}).get(
                    "version"
                )
                == "1.1.0"
            ),
            timeout=180,
        )
        answer = chat(client, model, "Say hello.", stream=False)
        info(f"the real kiosk serves 1.1.0: agent> {answer.strip()}")
        summary.append(
            f"bad release 1.2.0 halted at stage {halted['stage']} and rolled back"
            f" {halted['rolled_back']} devices to 1.1.0"
        )
    finally:
        stop.set()
        poller.join(timeout=30)
        sim_http.close()


def p95_act(
    cp: ControlPlane,
    cp_dir: Path,
    created: dict[str, Any],
    artifacts: list[str],
    summary: list[str],
) -> None:
    """Act 13: a slower release halts on the p95 gate (scripts/demo_p95_gate.py)."""
    from demo_p95_gate import p95_gate_act

    banner("13. A slower release halts on the p95 gate (simulated lab fleet, real telemetry)")
    token_file = WORK / "admin-p95.token"
    token_file.write_text(created["admin_token"])
    token_file.chmod(0o600)
    halted = p95_gate_act(
        cp.url,
        token_file,
        created["admin_token"],
        (cp_dir / "root.json").read_bytes(),
        artifacts,
        info,
    )
    if halted["state"] != "halted":
        raise SystemExit(f"demo: the slower release ended {halted['state']}: {halted['reason']}")
    info(f"rollout halted: {halted['reason']}")
    summary.append(
        f"lab-assistant@2.0.0 (50% slower) halted on the p95 gate at stage {halted['stage']}"
        f" and rolled back {halted['rolled_back']} devices"
    )


def broker_up(host: str = "127.0.0.1", port: int = 1883) -> bool:
    """Whether an MQTT broker listens here (the machine's Mosquitto); the demo uses it for
    nudges when it does and falls back to polling when it does not."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def config_act(
    cp: ControlPlane,
    *,
    device_id: str,
    client: OpenAI,
    model: str,
    mqtt: bool,
    summary: list[str],
) -> None:
    """Act 12: a device-scope remote config change, signed by the director, applied live by
    the real agent without a restart; then a bad one that the schema refuses."""
    banner("12. Change the kiosk's behaviour remotely (signed config, applied live)")
    token_file = WORK / "operator-role.token"
    started = time.monotonic()
    outpost_cp(
        cp,
        token_file,
        "config",
        "set",
        "--scope",
        f"device:{device_id}",
        '{"chat": {"max_tokens_default": 8}}',
        "--json",
    )

    def applied() -> bool:
        view = cp.get(f"/api/v1/devices/{device_id}/config")
        return (
            bool(view["in_sync"])
            and view["effective"].get("chat", {}).get("max_tokens_default") == 8
        )

    wait_for("the device to apply config chat.max_tokens_default=8", applied, timeout=60)
    took = time.monotonic() - started
    view = cp.get(f"/api/v1/devices/{device_id}/config")
    how = "an MQTT nudge" if mqtt else "its next poll (no broker on 127.0.0.1:1883)"
    info(
        f"config version {view['issued']['version']} applied in {took:.2f} s via {how}:"
        f" device says {view['status']['state']}"
    )
    after = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me about the sea."}]
    )
    tokens = after.usage.completion_tokens if after.usage else None
    if tokens is None or tokens > 8:
        raise SystemExit(f"demo: the new default max_tokens did not apply ({tokens} tokens)")
    info(f"after: the same chat got {tokens} tokens (no restart)")
    refused = cp.http.patch(
        f"/api/v1/config/scopes/device:{device_id}", json={"chat": {"max_token_default": 8}}
    )
    if refused.status_code != 422:
        raise SystemExit(f"demo: a misspelt key was not refused: {refused.status_code}")
    message = refused.json()["error"]["message"]
    info(f"a misspelt key is refused before it reaches any device: {message}")
    summary.append(f"remote config applied live in {took:.2f} s ({'MQTT' if mqtt else 'polling'})")


def main() -> int:
    summary: list[str] = []
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    cp_dir, agent_dir = WORK / "control-plane", WORK / "agent"
    cp_port, api_port = free_port(), free_port()
    model_file = smollm2_path()
    mqtt = broker_up()

    def mqtt_env(side: str) -> dict[str, str]:
        return {f"OUTPOST_{side}_MQTT_HOST": "127.0.0.1"} if mqtt else {}

    banner("0. Prepare the artifacts (cached after the first run)")
    from converters.demo import demo_sample_images, demo_vision_artifacts
    from converters.minilm_gguf import cached_gguf

    vision_artifacts = demo_vision_artifacts(report=info)
    images = demo_sample_images()
    embedder = cached_gguf()
    info(f"embedding model: {embedder.name} (all-MiniLM-L6-v2 converted to GGUF by our converter)")
    index_path = WORK / "outpost-docs.index.sqlite"
    subprocess.run(
        [
            PY,
            "-m",
            "edge_agent.rag",
            "--embedding-model",
            str(embedder),
            "build-index",
            str(ROOT / "evals" / "rag" / "docs"),
            "--out",
            str(index_path),
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    info(f"RAG index built centrally from evals/rag/docs: {index_path.name}")

    banner("1. Initialize the control plane (TUF keys, database, first admin token)")
    init = subprocess.run(
        [PY, "-m", "control_plane", "init", "--data-dir", str(cp_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    created = json.loads(init.stdout)
    info(f"trusted root: {created['root_path']} (sha256 {created['root_sha256'][:16]}...)")
    offline = sorted(p.name for p in (cp_dir / "keys" / "offline").glob("*"))
    info(f"offline keys to move off the server: {', '.join(offline)}")

    cp_proc = Process(
        "control-plane",
        [PY, "-m", "control_plane", "serve", "--data-dir", str(cp_dir), "--port", str(cp_port)],
        env={**os.environ, "OUTPOST_CP_ROLLOUT_TICK_SECONDS": "1", **mqtt_env("CP")},
    )
    agent_proc = Process(
        "agent",
        [
            PY,
            "-m",
            "edge_agent",
            "run",
            "--state-dir",
            str(agent_dir),
            "--port",
            str(api_port),
            "--poll-interval",
            "1",
        ],
        env={**os.environ, **mqtt_env("AGENT")},
    )
    try:
        cp_proc.start()
        cp = ControlPlane(cp_port, cp_dir, created["admin_token"])
        wait_for("the control plane", lambda: cp.http.get("/healthz").status_code == 200)
        info(f"control plane listening on {cp.url}")
        viewer = cp.post("/api/v1/tokens", json={"name": "demo-dashboard", "role": "viewer"})
        (WORK / "dashboard.token").write_text(viewer["token"])
        (WORK / "dashboard.token").chmod(0o600)
        info(f"dashboard: {cp.url}/dashboard - sign in with the viewer token {viewer['token']}")
        info(f"  (also in {WORK / 'dashboard.token'}; the dashboard lives while the demo runs)")

        banner("2. Enroll a device with a one-time token")
        enrollment = cp.post(
            "/api/v1/enrollment-tokens", json={"expires_in_seconds": 600, "tags": FLEET_TAGS}
        )
        enrolled = subprocess.run(
            [
                PY,
                "-m",
                "edge_agent",
                "enroll",
                "--server",
                cp.url,
                "--token",
                enrollment["token"],
                "--root-sha256",
                created["root_sha256"],
                "--state-dir",
                str(agent_dir),
                "--name",
                "demo-kiosk",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        device_id = json.loads(enrolled.stdout)["device_id"]
        info(f"device enrolled as {device_id}")
        agent_proc.start()
        api_token = (agent_dir / "api-token").read_text().strip()
        client = OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key=api_token)
        wait_for(
            "the agent's local API",
            lambda: httpx.get(f"http://127.0.0.1:{api_port}/healthz").status_code == 200,
        )

        banner("3. Publish one signed release: chat model, embeddings, RAG index, vision models")
        artifact = cp.upload(model_file, name="smollm2-135m-instruct", kind="llm", fmt="gguf")
        info(f"artifact sha256 {artifact['sha256'][:16]}..., {artifact['length']:,} bytes")
        shared = [
            cp.upload(embedder, name="all-minilm-l6-v2", kind="embedding", fmt="gguf"),
            cp.upload(index_path, name="outpost-docs", kind="rag-index", fmt="sqlite"),
        ]
        for v in vision_artifacts:
            shared.append(cp.upload(v.path, name=v.name, kind=v.kind, fmt=v.format))
        config = {"vision": {v.name: v.config for v in vision_artifacts}}
        release = cp.post(
            "/api/v1/releases",
            json={
                "name": "kiosk-assistant",
                "version": "1.0.0",
                "artifacts": [artifact["id"], *(a["id"] for a in shared)],
                "config": config,
            },
        )
        cp.post(f"/api/v1/devices/{device_id}/assignment", json={"release_id": release["id"]})
        info("release 1.0.0 signed (targets, snapshot, timestamp) and assigned by the director")
        wait_for(
            "the agent to verify and install release 1.0.0",
            lambda: installed_release_id(cp, device_id) == release["id"],
            timeout=300,
        )
        info("control plane reports the device runs kiosk-assistant 1.0.0")
        summary.append("signed release installed and reported to the control plane")

        banner("4. Ask the device through the official openai client")
        models = [m.id for m in client.models.list().data]
        info(f"models: {models}")
        model = models[0]
        answer = chat(client, model, QUESTION, stream=True)
        summary.append(f"chat answered, streamed ({len(answer)} characters)")
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {api_token}"},
            timeout=120,
        )
        structured_act(client, api, model)
        summary.append("structured output parsed against its schema; Ollama's /api/chat answered")

        banner("5. Ask the shipped documents (RAG with citations, and abstention)")
        for question in (
            "How long does a Kestrel K2 buffer readings when the uplink is down?",
            "What is the capital of Australia?",
        ):
            reply = api.post(
                "/v1/rag/query", json={"question": question, "k": 5, "generate": False}
            )
            reply.raise_for_status()
            body = reply.json()
            info(f"Q: {question}")
            info(f"A: {body['answer'].strip()}")
            expect_answer = "Kestrel" in question
            if body["abstained"] == expect_answer or (expect_answer and not body["citations"]):
                raise SystemExit(f"demo: unexpected RAG result for {question!r}: {body}")
            if body["abstained"]:
                info(f"   (abstained: {body['reason']})")
            for c in body["citations"][:2]:
                info(f'   [{c["document"]} chars {c["start"]}-{c["end"]}] "{c["quote"][:90]}"')
        summary.append("RAG answered with span citations and abstained when it should")

        banner("6. Classify a photo and detect a face on the device")
        with images["chelsea.png"].open("rb") as f:
            reply = api.post("/v1/vision/classify", files={"file": f}, params={"top_k": 3})
        reply.raise_for_status()
        top = reply.json()["predictions"]
        if not 281 <= top[0]["index"] <= 285:
            raise SystemExit(f"demo: chelsea.png should be a cat class (281-285), got {top[0]}")
        info("chelsea.png -> " + ", ".join(f"{t['label']} ({t['score']:.2f})" for t in top))
        with images["astronaut.png"].open("rb") as f:
            reply = api.post("/v1/vision/detect", files={"file": f})
        reply.raise_for_status()
        found = reply.json()["detections"]
        if not found:
            raise SystemExit("demo: no face found in astronaut.png")
        info(
            f"astronaut.png -> {len(found)} face(s): "
            + ", ".join(
                f"box {[round(v) for v in d['box'].values()]} score {d['score']:.2f}" for d in found
            )
        )
        summary.append("vision: cat classified, face detected")

        banner("7. Stop the control plane: the device keeps serving, offline")
        cp_proc.stop()
        answer = chat(client, model, "Name one colour of the sky.", stream=False)
        info(f"agent> {answer.strip()}")
        summary.append("answered with the control plane down")

        banner("8. Bring the control plane back; publish a release whose bytes get tampered with")
        cp_proc.start()
        wait_for("the control plane", lambda: cp.http.get("/healthz").status_code == 200)
        tampered_src = WORK / "smollm2-1.0.1.gguf"
        shutil.copyfile(model_file, tampered_src)
        with tampered_src.open("ab") as f:
            f.write(b"\0" * 64)  # a distinct but still valid GGUF file
        artifact2 = cp.upload(tampered_src, name="smollm2-135m-instruct", kind="llm", fmt="gguf")
        release2 = cp.post(
            "/api/v1/releases",
            json={
                "name": "kiosk-assistant",
                "version": "1.0.1",
                "artifacts": [artifact2["id"], *(a["id"] for a in shared)],
                "config": config,
            },
        )
        blob = cp_dir / "blobs" / "sha256" / artifact2["sha256"]
        with blob.open("r+b") as f:  # an attacker (or a bad mirror) flips bytes after signing
            # in the new tail: the bytes the device has to fetch (a delta update builds the
            # rest from the 1.0.0 model it already has, and never reads a flip there)
            f.seek(blob.stat().st_size - 48)
            f.write(hashlib.sha256(b"evil").digest())
        info("flipped 32 bytes of the stored artifact after it was signed")
        cp.post(f"/api/v1/devices/{device_id}/assignment", json={"release_id": release2["id"]})

        def refused() -> bool:
            device = cp.get(f"/api/v1/devices/{device_id}")
            last = device.get("last_status") or {}
            newest = (device.get("assignment") or {}).get("version")
            return (
                last.get("state") in ("refused", "failed")
                and last.get("assignment_version") == newest
            )

        wait_for("the agent to refuse release 1.0.1", refused, timeout=300)
        device = cp.get(f"/api/v1/devices/{device_id}")
        info(f"device says: {device['last_status']['state']}: {device['last_status']['detail']}")
        assert installed_release_id(cp, device_id) == release["id"], device
        answer = chat(client, model, "Say hello.", stream=False)
        info(f"still serving 1.0.0: agent> {answer.strip()}")
        summary.append("tampered release refused; device kept serving 1.0.0")

        fleet_act(
            cp,
            cp_dir,
            created,
            device_id=device_id,
            release_artifacts=[artifact["id"], *(a["id"] for a in shared)],
            config=config,
            client=client,
            model=model,
            summary=summary,
        )
        config_act(cp, device_id=device_id, client=client, model=model, mqtt=mqtt, summary=summary)
        p95_act(cp, cp_dir, created, [artifact["id"], *(a["id"] for a in shared)], summary)
    finally:
        agent_proc.stop()
        cp_proc.stop()

    banner("Summary")
    for line in summary:
        info(f"ok  {line}")
    info(f"the dashboard was at http://127.0.0.1:{cp_port}/dashboard (see docs/operator-guide.md)")
    info(f"logs and state in {WORK}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
