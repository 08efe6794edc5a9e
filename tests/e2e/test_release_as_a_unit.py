"""One signed release carries every kind of artifact: chat model, embedding model, RAG
index and vision models. The device installs it as one unit, serves all of it, and
refuses a release whose index was built with another embedding model than it ships.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from converters.demo import DemoArtifact, demo_sample_images, demo_vision_artifacts
from converters.minilm_gguf import cached_gguf
from tests.e2e.conftest import (
    MODEL_NAME,
    REPO,
    Agent,
    ControlPlane,
    smollm2_path,
    stop_agent,
    wait_until,
)

pytestmark = pytest.mark.slow

EMBEDDER = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def vision() -> list[DemoArtifact]:
    return demo_vision_artifacts(report=lambda _m: None)


@pytest.fixture(scope="module")
def index_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("index") / "docs.index.sqlite"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.rag",
            "--embedding-model",
            str(cached_gguf()),
            "build-index",
            str(REPO / "evals" / "rag" / "docs"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def device(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    agent = Agent(control_plane, tmp_path_factory.mktemp("unit-device") / "state")
    agent.start()
    yield agent
    stop_agent(agent)


def _release(cp: ControlPlane, version: str, ids: list[str], config: dict[str, Any]) -> str:
    r = cp.admin.post(
        "/api/v1/releases",
        json={"name": "unit", "version": version, "artifacts": ids, "config": config},
    )
    r.raise_for_status()
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def full_release(
    control_plane: ControlPlane, index_file: Path, vision: list[DemoArtifact]
) -> tuple[str, dict[str, Any]]:
    cp = control_plane
    ids = [
        cp.upload(smollm2_path(), name=MODEL_NAME, kind="llm", fmt="gguf")["id"],
        cp.upload(cached_gguf(), name=EMBEDDER, kind="embedding", fmt="gguf")["id"],
        cp.upload(index_file, name="docs", kind="rag-index", fmt="sqlite")["id"],
    ]
    ids += [cp.upload(v.path, name=v.name, kind=v.kind, fmt=v.format)["id"] for v in vision]
    config = {"vision": {v.name: v.config for v in vision}}
    return _release(cp, "1.0.0", ids, config), config


def test_one_release_serves_chat_embeddings_rag_and_vision(
    control_plane: ControlPlane, device: Agent, full_release: tuple[str, dict[str, Any]]
) -> None:
    release_id, _ = full_release
    version = control_plane.assign(device.device_id, release_id)
    status = device.wait_installed(version, timeout=120)
    assert status["updates"]["release_id"] == release_id
    assert {m["name"] for m in status["models"]} >= {MODEL_NAME, EMBEDDER}
    # loading two llama.cpp models at once must not swallow the agent's own log lines
    wait_until(
        lambda: "installed release unit 1.0.0" in device.log_path.read_text(errors="replace"),
        timeout=30,
        what="the agent to log the install after its models loaded",
    )

    client = openai.OpenAI(base_url=f"{device.url}/v1", api_key=device.token)
    vectors = client.embeddings.create(model=EMBEDDER, input=["offline kiosk", "cold chain"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]

    images = demo_sample_images()
    with device.api() as api:
        with images["chelsea.png"].open("rb") as f:
            r = api.post("/v1/vision/classify", files={"file": f}, params={"top_k": 3})
        assert r.status_code == 200, r.text
        assert 281 <= r.json()["predictions"][0]["index"] <= 285  # a domestic cat

        with images["astronaut.png"].open("rb") as f:
            r = api.post("/v1/vision/detect", files={"file": f})
        assert r.status_code == 200, r.text
        assert len(r.json()["detections"]) >= 1

        r = api.post(
            "/v1/rag/query",
            json={
                "question": "How many loading docks does the Rotterdam depot have?",
                "generate": False,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert not body["abstained"]
        assert any("38" in c["quote"] and c["document"] == "depots.md" for c in body["citations"])

        r = api.post(
            "/v1/rag/query",
            json={"question": "Who painted the Mona Lisa?", "generate": False},
        )
        assert r.status_code == 200, r.text
        assert r.json()["abstained"] is True


def test_an_index_built_with_another_embedding_model_is_refused_as_a_unit(
    control_plane: ControlPlane,
    device: Agent,
    full_release: tuple[str, dict[str, Any]],
    index_file: Path,
    tmp_path: Path,
) -> None:
    good_id, _ = full_release
    cp = control_plane
    # another GGUF shipped as the "embedding model" next to an index built with MiniLM
    # (distinct bytes: the control plane stores one artifact per content hash)
    wrong = tmp_path / "wrong-embedder.gguf"
    wrong.write_bytes(smollm2_path().read_bytes() + b"\0" * 32)
    mismatched = _release(
        cp,
        "1.0.1",
        [
            cp.upload(smollm2_path(), name=MODEL_NAME, kind="llm", fmt="gguf")["id"],
            cp.upload(wrong, name="wrong-embedder", kind="embedding", fmt="gguf")["id"],
            cp.upload(index_file, name="docs", kind="rag-index", fmt="sqlite")["id"],
        ],
        {},
    )
    version = cp.assign(device.device_id, mismatched)
    last = wait_until(
        lambda: (
            (d := cp.device(device.device_id))["last_status"]
            and d["last_status"]["assignment_version"] == version
            and d["last_status"]["state"] in ("refused", "rolled_back", "failed")
            and d["last_status"]
        ),
        timeout=120,
        what="the device to refuse the mismatched release",
    )
    assert "embedding" in last["detail"], last
    assert device.status()["updates"]["release_id"] == good_id
    with device.api() as api:  # the old index and models still answer, as one unit
        r = api.post(
            "/v1/rag/query",
            json={
                "question": "What fuse is used when wiring the gateway to the truck?",
                "generate": False,
            },
        )
        assert r.status_code == 200 and not r.json()["abstained"], r.text
    assert cp.device(device.device_id)["installed_release"]["id"] == good_id
