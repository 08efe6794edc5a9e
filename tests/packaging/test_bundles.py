"""Offline bundles: a release manager writes one file, an air-gapped kiosk installs it.

The control plane is the real one (``python -m control_plane``, on SQLite and on
PostgreSQL); the kiosk is ``python -m edge_agent install-bundle`` run inside a network
namespace that has no interface up, so not one byte of network is available to it. The
model is the real SmolLM2, health-checked by the real runtime before it is committed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edge_agent.errors import ExpiredUpdateError
from edge_agent.settings import AgentSettings
from edge_agent.uplink import RootPin
from tests.e2e.conftest import REPO, ControlPlane, _env, smollm2_path
from tests.packaging.idle_agent import start_agent
from tests.requirements import require

pytestmark = pytest.mark.slow

RELEASE = "kiosk-assistant@1.1.0"


@dataclass(frozen=True)
class Kiosk:
    cp: ControlPlane
    bundle: Path
    created: dict[str, object]


def bundle_create(cp: ControlPlane, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "control_plane",
            "bundle",
            "create",
            "--data-dir",
            str(cp.data_dir),
            *cp._database_args(),
            *(str(a) for a in args),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def no_network() -> Iterator[list[str]]:
    """A network namespace with no interface up: the command prefix that runs in it."""
    require(
        os.geteuid() == 0 and shutil.which("ip") is not None,
        "root and iproute2 (ip netns) for a network namespace without interfaces",
        "run the tests as root on Linux with iproute2 installed",
    )
    name = f"outpost-offline-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        links = subprocess.run(
            ["ip", "netns", "exec", name, "ip", "-o", "link", "show", "up"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert links.stdout.strip() == "", f"the namespace has interfaces up: {links.stdout}"
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def kiosk(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Kiosk:
    artifact = control_plane.upload(smollm2_path(), name="smollm2", kind="llm", fmt="gguf")
    name, _, version = RELEASE.partition("@")
    control_plane.release(name, version, [artifact["id"]])
    out = tmp_path_factory.mktemp("bundle") / "kiosk.bundle"
    made = bundle_create(
        control_plane,
        "--release",
        RELEASE,
        "--device-class",
        "rpi5",
        "--out",
        out,
        "--model-license",
        "smollm2=Apache-2.0",
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["root_sha256"] == control_plane.init["root_sha256"]
    return Kiosk(control_plane, out, created)


def install(
    prefix: list[str], bundle: Path, state: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "edge_agent",
            "install-bundle",
            str(bundle),
            "--state-dir",
            str(state),
            *args,
        ],
        cwd=REPO,
        env={**_env(), "OUTPOST_AGENT_N_CTX": "512", "OUTPOST_AGENT_N_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def serves(state: Path, log: Path) -> dict[str, object]:
    """Start the agent on ``state``; its status and one chat answer; stop it."""
    agent = start_agent(state, stderr=log)
    token = (state / "api-token").read_text().strip()
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{agent.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        ) as api:
            status = api.get("/v1/status").json()
            chat = api.post(
                "/v1/chat/completions",
                json={
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "max_tokens": 8,
                },
            )
            assert chat.status_code == 200, chat.text
            assert chat.json()["choices"][0]["message"]["content"].strip()
    finally:
        agent.stop()
    serving = status["serving"]
    assert isinstance(serving, dict)
    return serving


def test_a_kiosk_installs_a_bundle_with_no_network_then_refuses_bad_ones_and_keeps_serving(
    kiosk: Kiosk, no_network: list[str], tmp_path: Path
) -> None:
    state = tmp_path / "kiosk-state"
    pin = ["--device-class", "rpi5", "--root-sha256", str(kiosk.created["root_sha256"])]

    done = install(no_network, kiosk.bundle, state, *pin)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["installed"] is True and result["release"] == RELEASE
    assert result["bound_to"] == "device-class:rpi5"
    serving = serves(state, tmp_path / "agent-1.log")
    assert f"{serving['release_name']}@{serving['release_version']}" == RELEASE

    # the same bundle again: nothing new, nothing reinstalled
    again = install(no_network, kiosk.bundle, state, *pin)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["installed"] is False

    data = kiosk.bundle.read_bytes()
    flipped = tmp_path / "flipped.bundle"
    middle = len(data) // 2  # inside the model's bytes
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    truncated = tmp_path / "truncated.bundle"
    truncated.write_bytes(data[: len(data) // 2])
    cases = [
        (flipped, pin, "does not match the sha256"),
        (truncated, pin, "not a complete tar file"),
        (kiosk.bundle, ["--device-class", "jetson-orin-nano"], "device-class:rpi5"),
    ]
    for bundle, args, why in cases:
        refused = install(no_network, bundle, state, *args)
        assert refused.returncode == 1, (bundle.name, refused.stdout, refused.stderr)
        assert why in refused.stderr and "refused" in refused.stderr, refused.stderr
        assert not (state / "bundle-work").exists()

    serving = serves(state, tmp_path / "agent-2.log")
    assert f"{serving['release_name']}@{serving['release_version']}" == RELEASE


def test_an_expired_bundle_installs_nothing(kiosk: Kiosk, tmp_path: Path) -> None:
    from edge_agent.bundle_install import install_bundle

    expires = datetime.fromisoformat(str(kiosk.created["expires_at"]))
    state = tmp_path / "late-kiosk"
    with pytest.raises(ExpiredUpdateError, match="expired at") as refused:
        install_bundle(
            AgentSettings(state_dir=state),
            kiosk.bundle,
            device_class="rpi5",
            pin=RootPin(sha256=str(kiosk.created["root_sha256"])),
            clock=lambda: expires + timedelta(seconds=1),
        )
    assert "keeps serving" in str(refused.value)
    assert not (state / "releases").exists() or not any((state / "releases").iterdir())
    assert expires - datetime.now(UTC) > timedelta(days=170)  # long enough for a kiosk


def test_a_bundle_with_a_model_license_off_the_allow_list_is_not_written(
    kiosk: Kiosk, tmp_path: Path
) -> None:
    out = tmp_path / "gemma.bundle"
    made = bundle_create(
        kiosk.cp,
        "--release",
        RELEASE,
        "--device-class",
        "rpi5",
        "--out",
        out,
        "--model-license",
        "smollm2=LicenseRef-Gemma-Terms-of-Use",
    )
    assert made.returncode == 1
    assert "smollm2" in made.stderr and "LicenseRef-Gemma-Terms-of-Use" in made.stderr
    assert not out.exists()
