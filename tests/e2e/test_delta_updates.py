"""Delta updates with real processes: a device on 1.1.0 installs 1.2.0, whose RAG index was
rebuilt after a document changed and whose vision model has a retrained classifier head,
fetching a fraction of the bytes (counted at the HTTP layer by a proxy in front of the
control plane); the installed artifacts are byte-identical to the uploaded ones. A hostile
mirror (a flipped bit in a chunk) and a server without Range each
make the device fall back to the full download while it keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converters.demo import DemoArtifact, demo_sample_images, demo_vision_artifacts
from converters.minilm_gguf import cached_gguf
from tests.e2e.byte_proxy import ByteCountingProxy
from tests.e2e.conftest import REPO, Agent, ControlPlane, stop_agent
from tests.e2e.variants import rebuilt_index, retrained_head, updated_index

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # three real models per install

DOCS = REPO / "evals" / "rag" / "docs"
EMBEDDER = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def classifier() -> DemoArtifact:
    found = [
        v for v in demo_vision_artifacts(report=lambda _m: None) if v.kind.endswith("classify")
    ]
    assert found, "no classifier among the demo vision artifacts"
    return found[0]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One control plane on SQLite (the delta's storage is one row per artifact, written by
    every upload: the PostgreSQL runs of the other e2e modules store it there too)."""
    cp = ControlPlane(tmp_path_factory.mktemp("cp-delta") / "data")
    yield cp
    cp.stop()
    cp.admin.close()


@pytest.fixture(scope="module")
def proxy(control_plane: ControlPlane) -> Iterator[ByteCountingProxy]:
    with ByteCountingProxy(control_plane.url) as p:
        yield p


@pytest.fixture(scope="module")
def device(
    control_plane: ControlPlane, proxy: ByteCountingProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    agent = Agent(
        control_plane, tmp_path_factory.mktemp("delta-device") / "state", server_url=proxy.url
    )
    agent.start()
    yield agent
    stop_agent(agent)


class Releases:
    """Uploads and publishes releases of one name: embedder + index + classifier."""

    def __init__(self, cp: ControlPlane, classifier: DemoArtifact, work: Path) -> None:
        self.cp = cp
        self.classifier = classifier
        self.work = work
        self.embedding_model = cached_gguf()  # hashes its sources: once
        self.embedder = cp.upload(self.embedding_model, name=EMBEDDER, kind="embedding", fmt="gguf")

    def index(self, tag: str, appended: dict[str, str] | None = None) -> Path:
        """1.1.0's index built from the docs; later ones: it, with each document in
        ``appended`` re-ingested with that text appended (updated in place)."""
        out = self.work / f"index-{tag}.sqlite"
        if appended is None:
            return rebuilt_index(self.embedding_model, DOCS, out)
        base = self.work / "index-1.1.0.sqlite"
        edited = {
            name: (DOCS / name).read_text(encoding="utf-8") + "\n\n" + text + "\n"
            for name, text in appended.items()
        }
        return updated_index(self.embedding_model, base, out, edited)

    def publish(self, version: str, index: Path, vision: Path) -> tuple[str, list[dict[str, Any]]]:
        artifacts = [
            self.embedder,
            self.cp.upload(index, name="docs", kind="rag-index", fmt="sqlite"),
            self.cp.upload(
                vision, name=self.classifier.name, kind=self.classifier.kind, fmt="onnx"
            ),
        ]
        r = self.cp.admin.post(
            "/api/v1/releases",
            json={
                "name": "delta",
                "version": version,
                "artifacts": [a["id"] for a in artifacts],
                "config": {"vision": {self.classifier.name: self.classifier.config}},
            },
        )
        r.raise_for_status()
        return str(r.json()["id"]), artifacts


@pytest.fixture(scope="module")
def releases(
    control_plane: ControlPlane, classifier: DemoArtifact, tmp_path_factory: pytest.TempPathFactory
) -> Releases:
    return Releases(control_plane, classifier, tmp_path_factory.mktemp("delta-artifacts"))


@pytest.fixture(scope="module")
def on_1_1_0(
    control_plane: ControlPlane, device: Agent, releases: Releases, classifier: DemoArtifact
) -> str:
    release_id, _ = releases.publish("1.1.0", releases.index("1.1.0"), classifier.path)
    device.wait_installed(control_plane.assign(device.device_id, release_id), timeout=180)
    return release_id


def blob(device: Agent, artifact: dict[str, Any]) -> bytes:
    return (device.state_dir / "blobs" / "sha256" / str(artifact["sha256"])).read_bytes()


def install(
    cp: ControlPlane, device: Agent, proxy: ByteCountingProxy, release_id: str
) -> tuple[int, list[Any]]:
    """Assign and wait for the install; the target bytes and requests it caused."""
    mark = proxy.mark()
    device.wait_installed(cp.assign(device.device_id, release_id), timeout=180)
    assert device.status()["updates"]["release_id"] == release_id
    return proxy.target_bytes(mark), proxy.since(mark)


def classify_works(device: Agent) -> None:
    with device.api() as api, demo_sample_images()["chelsea.png"].open("rb") as f:
        r = api.post("/v1/vision/classify", files={"file": f}, params={"top_k": 1})
    assert r.status_code == 200, r.text


def test_1_1_0_to_1_2_0_fetches_only_the_changed_chunks(
    control_plane: ControlPlane,
    device: Agent,
    proxy: ByteCountingProxy,
    releases: Releases,
    classifier: DemoArtifact,
    on_1_1_0: str,
    tmp_path: Path,
) -> None:
    index = releases.index(
        "1.2.0", {"depots.md": "The Antwerp depot opened in 2026 and has 12 loading docks."}
    )
    vision = retrained_head(classifier.path, tmp_path / "classifier-1.2.0.onnx")
    release_id, artifacts = releases.publish("1.2.0", index, vision)
    full = index.stat().st_size + vision.stat().st_size
    sent, hits = install(control_plane, device, proxy, release_id)
    print(f"1.1.0 -> 1.2.0: {sent} bytes on the wire for {full} bytes of changed artifacts")
    assert sent < full // 2, (sent, full)
    changed = {str(a["target_path"]) for a in artifacts[1:]}
    assert {h.path.split("/repo/targets/")[1] for h in hits if h.status == 206} <= changed
    assert not [h for h in hits if h.status == 200 and not h.path.endswith(".chunks")], hits
    assert not [h for h in hits if artifacts[0]["sha256"] in h.path]  # unchanged: not fetched
    assert blob(device, artifacts[1]) == index.read_bytes()  # byte-identical to a full download
    assert blob(device, artifacts[2]) == vision.read_bytes()
    classify_works(device)
    shown = control_plane.admin.get("/api/v1/releases/delta@1.2.0").json()["downloads"]
    from_1_1_0 = next(d for d in shown if d["release"] == "delta@1.1.0")
    assert from_1_1_0["download_bytes"] < full // 2


# an altered manifest is refused by the same code whatever the transport: the simulator
# tests cover it (tests/agent_updates/test_delta.py); here, what needs real HTTP
@pytest.mark.parametrize("mirror", ["flip_range_bits", "drop_range"])
def test_a_hostile_mirror_or_a_server_without_range_gets_the_full_download(
    mirror: str,
    control_plane: ControlPlane,
    device: Agent,
    proxy: ByteCountingProxy,
    releases: Releases,
    classifier: DemoArtifact,
    on_1_1_0: str,
) -> None:
    serving = device.status()["updates"]["release_id"]
    index = releases.index(mirror, {"enrollment.md": f"Revised for the {mirror} case."})
    release_id, artifacts = releases.publish(f"1.3.0-{mirror}", index, classifier.path)
    setattr(proxy, mirror, True)
    try:
        sent, hits = install(control_plane, device, proxy, release_id)
    finally:
        setattr(proxy, mirror, False)
    assert sent >= index.stat().st_size  # the index came whole
    whole = [
        h for h in hits if h.status == 200 and h.path.endswith(str(artifacts[1]["target_path"]))
    ]
    assert whole, hits
    assert blob(device, artifacts[1]) == index.read_bytes()
    log = device.log_path.read_text(errors="replace")
    assert "downloading it whole (no delta:" in log
    assert serving != release_id
