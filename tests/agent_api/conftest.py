"""Shared fixtures: the real SmolLM2 GGUF, a MiniLM GGUF, and a live local API on loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.api import create_local_api
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.settings import AgentSettings
from tests.live_server import LiveServer
from tests.requirements import LLAMA, MINILM, require_installed, smollm2_gguf_path

TOKEN = "test-token-0123456789abcdef"
LLM = "smollm2"
EMBEDDER = "minilm"
N_CTX = 512


def smollm2_path() -> Path:
    return smollm2_gguf_path()


def minilm_gguf_path(cache_dir: Path) -> Path:
    from converters.minilm_gguf import cached_gguf

    return cached_gguf(cache_dir)


def release(
    release_id: str,
    models: Mapping[str, tuple[str, Path]],
    config: Mapping[str, Any] | None = None,
) -> InstalledRelease:
    """An installed release whose artifacts are the given (kind, path) files."""
    artifacts = tuple(
        InstalledArtifact(
            name=name,
            kind=kind,
            format="gguf",
            sha256=hashlib.sha256(str(path).encode()).hexdigest(),  # same file, same hash
            length=path.stat().st_size,
            path=path,
        )
        for name, (kind, path) in models.items()
    )
    return InstalledRelease(
        release_id=release_id,
        release_name="test-release",
        release_version=release_id,
        assignment_version=1,
        artifacts=artifacts,
        config=dict(config or {}),
    )


@dataclass
class Served:
    registry: ModelRegistry
    settings: AgentSettings
    release: InstalledRelease
    url: str


def settings_for_tests(**overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "n_threads": 1,  # robust on a shared 2-core box; the benchmark measures speed
        "n_ctx": N_CTX,
        "max_queue": 4,
        "max_request_bytes": 64 * 1024,
    }
    values.update(overrides)
    return AgentSettings(**values)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    require_installed(*LLAMA)
    return smollm2_path()


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_installed(*MINILM)
    cache = os.environ.get("OUTPOST_MODEL_CACHE")
    cache_dir = Path(cache) if cache else tmp_path_factory.mktemp("models")
    cache_dir.mkdir(parents=True, exist_ok=True)
    return minilm_gguf_path(cache_dir)


@pytest.fixture(scope="session")
def served(smollm2: Path, minilm: Path) -> Iterator[Served]:
    """One registry and one live API for the session; the models load once."""
    settings = settings_for_tests()
    registry = ModelRegistry(settings)
    first = release("r1", {LLM: ("llm", smollm2), EMBEDDER: ("embedding", minilm)})
    registry.activate(first)
    registry.warm()
    app = create_local_api(
        registry,
        settings,
        api_token=TOKEN,
        status=lambda: {
            "release": {"id": registry.release.release_id if registry.release else None}
        },
    )
    with LiveServer(app) as server:
        yield Served(registry, settings, first, server.url)
    registry.close()
