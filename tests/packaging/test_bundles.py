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
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edge_agent.errors import ExpiredUpdateError
from edge_agent.settings import AgentSettings
from edge_agent.store import sha256_file
from edge_agent.uplink import RootPin
from tests.e2e.conftest import REPO, ControlPlane, _env, smollm2_path, wait_until
from tests.packaging.idle_agent import bundle_create, install_bundle_cli, start_agent
from tests.packaging.test_install_script import scratch_root
from tests.requirements import require

pytestmark = pytest.mark.slow

RELEASE = "kiosk-assistant@1.1.0"


@dataclass(frozen=True)
class Kiosk:
    cp: ControlPlane
    bundle: Path
    created: dict[str, object]
    release_id: str


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


def _publish_and_bundle(cp: ControlPlane, out: Path) -> Kiosk:
    artifact = cp.upload(smollm2_path(), name="smollm2", kind="llm", fmt="gguf")
    name, _, version = RELEASE.partition("@")
    release_id = cp.release(name, version, [artifact["id"]])
    made = bundle_create(
        cp, "--release", RELEASE, "--device-class", "rpi5", "--out", out,
        "--model-license", "smollm2=Apache-2.0",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["root_sha256"] == cp.init["root_sha256"]
    return Kiosk(cp, out, created, release_id)


@pytest.fixture(scope="module")
def kiosk(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Kiosk:
    """A bundle from the control plane on each database (bundle create reads it, and
    enrollment adopts from it)."""
    return _publish_and_bundle(control_plane, tmp_path_factory.mktemp("bundle") / "kiosk.bundle")


@pytest.fixture(scope="module")
def offline_kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kiosk]:
    """A bundle for the device-side tests, which never touch the control plane's
    database: made once, by a control plane on its default SQLite file."""
    tmp = tmp_path_factory.mktemp("offline-cp")
    cp = ControlPlane(tmp / "data")
    try:
        yield _publish_and_bundle(cp, tmp / "kiosk.bundle")
    finally:
        cp.stop()
        cp.admin.close()


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
    offline_kiosk: Kiosk, no_network: list[str], tmp_path: Path
) -> None:
    kiosk = offline_kiosk
    state = tmp_path / "kiosk-state"
    pin = ["--device-class", "rpi5", "--root-sha256", str(kiosk.created["root_sha256"])]

    done = install_bundle_cli(no_network, kiosk.bundle, state, *pin)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["installed"] is True and result["release"] == RELEASE
    assert result["bound_to"] == "device-class:rpi5"
    serving = serves(state, tmp_path / "agent-1.log")
    assert f"{serving['release_name']}@{serving['release_version']}" == RELEASE

    # the same bundle again: nothing new, nothing reinstalled
    again = install_bundle_cli(no_network, kiosk.bundle, state, *pin)
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
        refused = install_bundle_cli(no_network, bundle, state, *args)
        assert refused.returncode == 1, (bundle.name, refused.stdout, refused.stderr)
        assert why in refused.stderr and "refused" in refused.stderr, refused.stderr
        assert not (state / "bundle-work").exists()

    serving = serves(state, tmp_path / "agent-2.log")
    assert f"{serving['release_name']}@{serving['release_version']}" == RELEASE


def test_an_expired_bundle_installs_nothing(offline_kiosk: Kiosk, tmp_path: Path) -> None:
    kiosk = offline_kiosk
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


def test_a_kiosk_that_enrolls_later_is_adopted_without_reinstalling(
    kiosk: Kiosk, tmp_path: Path
) -> None:
    state = tmp_path / "kiosk-state"
    root_sha256 = str(kiosk.created["root_sha256"])
    done = install_bundle_cli(
        [], kiosk.bundle, state, "--device-class", "rpi5", "--root-sha256", root_sha256
    )
    assert done.returncode == 0, done.stderr
    (blob,) = [p for p in (state / "blobs").rglob("*") if p.is_file()]
    inode = blob.stat().st_ino

    enrolled = subprocess.run(
        [
            sys.executable, "-m", "edge_agent", "enroll", "--server", kiosk.cp.url,
            "--token", kiosk.cp.enrollment_token(), "--root-sha256", root_sha256,
            "--state-dir", str(state),
        ],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    device_id = json.loads(enrolled.stdout)["device_id"]
    installed = kiosk.cp.device(device_id)["installed_release"]
    assert installed is not None and installed["version"] == "1.1.0", "the release is recognized"

    agent = start_agent(state, stderr=tmp_path / "agent.log", extra_args=("--poll-interval", "0.3"))
    try:
        version = kiosk.cp.assign(device_id, kiosk.release_id)
        assert version == int(str(kiosk.created["assignment_version"])) + 1
        token = (state / "api-token").read_text().strip()
        wait_until(
            lambda: (
                httpx.get(
                    f"http://127.0.0.1:{agent.port}/v1/status",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=5,
                ).json()["updates"]["assignment_version"]
                == version
            ),
            timeout=120,
            what="the adopted kiosk to take the control plane's assignment",
        )
    finally:
        agent.stop()
    assert blob.stat().st_ino == inode, "the model was not downloaded again"


@pytest.fixture(scope="module")
def full_bundle(
    offline_kiosk: Kiosk, agent_wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, object]]:
    """The kiosk release plus the agent's wheels: everything a bare machine needs.
    ``bundle create`` refuses it if any shipped package's license is off the allow-list."""
    out = tmp_path_factory.mktemp("full-bundle") / "full.bundle"
    made = bundle_create(
        offline_kiosk.cp, "--release", RELEASE, "--device-class", "rpi5", "--out", out,
        "--model-license", "smollm2=Apache-2.0", "--agent-wheels", agent_wheelhouse,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out, json.loads(made.stdout)


def test_a_bundle_with_the_agent_wheels_lists_every_model_and_package_and_their_licenses(
    full_bundle: tuple[Path, dict[str, object]], agent_wheelhouse: Path
) -> None:
    out, _ = full_bundle
    wheels = sorted(p.name for p in agent_wheelhouse.glob("*.whl"))
    with tarfile.open(out) as tar:
        names = tar.getnames()
        sbom = json.loads(_member(tar, "outpost-bundle/sbom.cdx.json"))
        inventory = json.loads(_member(tar, "outpost-bundle/licenses.json"))["entries"]
    assert sorted(n.rsplit("/", 1)[1] for n in names if "/wheels/" in n) == wheels
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    by_type: dict[str, list[dict[str, object]]] = {}
    for component in sbom["components"]:
        by_type.setdefault(component["type"], []).append(component)
    (model,) = by_type["machine-learning-model"]
    assert model["name"] == "smollm2"
    assert model["hashes"] == [{"alg": "SHA-256", "content": sha256_file(smollm2_path())}]
    assert len(by_type["library"]) == len(wheels)
    assert all(str(c["purl"]).startswith("pkg:pypi/") for c in by_type["library"])
    packages = {e["name"].lower(): e["license"] for e in inventory if e["kind"] == "package"}
    assert packages["outpost-agent"] == "Apache-2.0"
    assert packages["llama_cpp_python"] == "MIT" or packages.get("llama-cpp-python") == "MIT"
    assert "NOASSERTION" not in packages.values()


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    extracted = tar.extractfile(name)
    assert extracted is not None
    return extracted.read()


def test_a_bare_machine_gets_the_agent_and_the_release_from_one_bundle_with_no_network(
    full_bundle: tuple[Path, dict[str, object]], no_network: list[str], tmp_path: Path
) -> None:
    bundle, created = full_bundle
    root = scratch_root(tmp_path / "root")
    done = subprocess.run(
        [
            *no_network, "sh", str(REPO / "packaging/install.sh"), "--root", str(root),
            "--bundle", str(bundle), "--bundle-sha256", str(created["sha256"]),
            "--device-class", "rpi5", "--root-sha256", str(created["root_sha256"]),
        ],
        env={**_env(), "OUTPOST_AGENT_N_CTX": "512", "OUTPOST_AGENT_N_THREADS": "2"},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"installed": true' in done.stdout
    state = root / "var/lib/outpost"
    serving = serves(state, tmp_path / "agent.log")
    assert f"{serving['release_name']}@{serving['release_version']}" == RELEASE

    (tmp_path / "other").mkdir()
    wrong = subprocess.run(
        ["sh", str(REPO / "packaging/install.sh"), "--root", str(tmp_path / "other"),
         "--bundle", str(bundle), "--bundle-sha256", "0" * 64, "--device-class", "rpi5"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert wrong.returncode == 1 and "nothing was installed" in wrong.stderr
