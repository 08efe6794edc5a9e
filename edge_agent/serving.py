"""Everything a release serves, activated as one unit: language and embedding models
(the registry), vision models and the RAG index.

The update loop and startup hand a verified release to :class:`ReleaseServing`; it checks
what the runtime needs before anything changes (vision specs, the index/embedding-model
pair), then switches the registry, which the vision and RAG providers follow. A release
that fails here is rolled back by the caller as a whole.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter

from edge_agent.errors import NoModelError
from edge_agent.rag.api import rag_router
from edge_agent.rag.release import ReleaseRagEngines, check_release_index
from edge_agent.release import InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.settings import AgentSettings
from edge_agent.vision.api import vision_router
from edge_agent.vision.model import VisionModel
from edge_agent.vision.provider import ReleaseVisionModels, vision_entries
from edge_agent.vision.spec import VisionTask


class ActiveVisionModels:
    """Vision models of the registry's active release, rebuilt when the release changes."""

    def __init__(self, registry: ModelRegistry, settings: AgentSettings) -> None:
        self._registry = registry
        self._settings = settings
        self._lock = threading.Lock()
        self._current: ReleaseVisionModels | None = None

    def vision_model(self, name: str | None, task: VisionTask) -> VisionModel:
        release = self._registry.release
        if release is None:
            raise NoModelError("no verified release is installed yet; vision is not available")
        with self._lock:
            if self._current is None or self._current.release is not release:
                self._current = ReleaseVisionModels(
                    release,
                    n_threads=self._settings.n_threads,
                    max_in_flight=self._settings.max_queue,
                )
            current = self._current
        return current.vision_model(name, task)


class ReleaseServing:
    """Activates a release in every runtime at once, and builds the API routes over them."""

    def __init__(self, registry: ModelRegistry, settings: AgentSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.vision = ActiveVisionModels(registry, settings)
        self.rag = ReleaseRagEngines(registry, settings.state_dir)

    def activate(self, release: InstalledRelease) -> None:
        """Check, switch and load; raises (changing nothing) if the release cannot be served."""
        vision_entries(release)  # every vision artifact has a valid spec
        check_release_index(release)  # the index was built with the shipped embedding model
        self.registry.activate(release)
        self.registry.warm()

    def routers(self) -> list[APIRouter]:
        return [
            vision_router(
                self.vision,
                max_upload_bytes=self.settings.max_upload_bytes,
                max_image_pixels=self.settings.max_image_pixels,
            ),
            rag_router(self.rag, max_upload_bytes=self.settings.max_upload_bytes),
        ]

    def close(self) -> None:
        self.rag.close()
        self.registry.close()
