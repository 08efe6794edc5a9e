"""A real agent for the suite to measure: the local API assembled as the daemon assembles
it, over one release with the real SmolLM2, MiniLM, a RAG index and the real
text-orientation classifier (FP32 or INT8 from the model cache), on a loopback port."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from converters.catalog import preset
from converters.demo import DEMO_ARTIFACTS
from converters.sources import cache_root
from edge_agent.api import create_local_api
from edge_agent.release import InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.serving import ReleaseServing
from edge_agent.settings import AgentSettings
from tests.fuzz.test_agent_schema import _artifact, full_release
from tests.live_server import LiveServer
from tests.requirements import require_file

TOKEN = "device-tests-token-0123456789"
VISION_NAME = "text-orientation"  # what the release calls it, whichever variant it ships


def text_orientation_path(precision: str) -> Path:
    """The FP32 original or its INT8 variant, from ``python -m converters prepare`` (run
    here when the model cache does not hold it yet: a fresh machine's first test run)."""

    def find() -> Path:
        _, relative = DEMO_ARTIFACTS[f"text-orientation-{precision}"]
        path = cache_root() / relative
        if not path.is_file():
            from converters.__main__ import main as converters_main

            converters_main(["--cache", str(cache_root()), "prepare"])
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing after python -m converters prepare")
        return path

    return require_file(
        find, f"the text-orientation {precision} model", "python -m converters prepare"
    )


def suite_release(tmp: Path, precision: str = "fp32") -> InstalledRelease:
    """Chat, embeddings, RAG and the text-orientation classifier in one release."""
    base = full_release(tmp)
    vision = _artifact(VISION_NAME, "vision-classify", "onnx", text_orientation_path(precision))
    config = dict(base.config)
    config["vision"] = {VISION_NAME: preset("text-orientation").spec.to_config()}
    return dataclasses.replace(
        base,
        release_id=f"suite-{precision}",
        artifacts=(*(a for a in base.artifacts if a.kind != "vision-classify"), vision),
        config=config,
    )


@contextmanager
def serving_release(
    release: InstalledRelease, state_dir: Path, token: str = TOKEN, **settings: Any
) -> Iterator[tuple[str, ReleaseServing]]:
    """The release served on a free loopback port as the daemon assembles its local API;
    yields the base URL and the runtime (``settings``: AgentSettings overrides)."""
    agent_settings = AgentSettings(state_dir=state_dir, **settings)
    serving = ReleaseServing(ModelRegistry(agent_settings), agent_settings)
    serving.activate(release)
    app = create_local_api(
        serving.registry,
        serving.settings,
        api_token=token,
        status=lambda: {"serving": {"release_id": release.release_id}},
        extra_routers=serving.routers(),
        chat_grounding=serving.rag,
    )
    try:
        with LiveServer(app) as server:
            yield server.url, serving
    finally:
        serving.close()


@contextmanager
def served(release: InstalledRelease, state_dir: Path) -> Iterator[str]:
    """The release served small (512-token context, 1 thread); yields the base URL."""
    with serving_release(release, state_dir, n_ctx=512, n_threads=1) as (url, _):
        yield url
