"""Which vision model serves a request: the seam between the API and the active release."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.errors import ConfigError, NotFoundError
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.vision.backends import open_backend
from edge_agent.vision.model import VisionModel
from edge_agent.vision.spec import VISION_TASK_OF_KIND, VisionModelSpec, VisionTask


class VisionModelProvider(Protocol):
    """Gives the loaded vision model for a name (``None``: the release's default for a task)."""

    def vision_model(self, name: str | None, task: VisionTask) -> VisionModel: ...


@dataclass(frozen=True)
class VisionEntry:
    """An artifact of the release together with its validated spec."""

    artifact: InstalledArtifact
    spec: VisionModelSpec


def vision_entries(release: InstalledRelease) -> dict[str, VisionEntry]:
    """Pair every vision artifact of ``release`` with its ``config["vision"][name]`` spec."""
    section: Any = release.config.get("vision", {})
    if not isinstance(section, Mapping):
        raise ConfigError("release config 'vision' must map artifact names to model specs")
    entries: dict[str, VisionEntry] = {}
    for artifact in release.artifacts:
        task = VISION_TASK_OF_KIND.get(artifact.kind)
        if task is None:
            continue
        raw = section.get(artifact.name)
        if raw is None:
            raise ConfigError(
                f"release {release.release_name} {release.release_version} ships vision "
                f"artifact {artifact.name!r} without config['vision'][{artifact.name!r}]"
            )
        try:
            spec = VisionModelSpec.from_config(raw)
        except ConfigError as e:
            raise ConfigError(f"vision config of {artifact.name!r}: {e}") from e
        if spec.task != task:
            raise ConfigError(
                f"artifact {artifact.name!r} is {artifact.kind} but its config says task "
                f"{spec.task!r}"
            )
        entries[artifact.name] = VisionEntry(artifact, spec)
    return entries


class ReleaseVisionModels:
    """A provider over one installed release; models load on first use and stay loaded."""

    def __init__(
        self,
        release: InstalledRelease,
        *,
        n_threads: int | None = None,
        max_in_flight: int = 8,
    ) -> None:
        self._release = release
        self._entries = vision_entries(release)
        self._n_threads = n_threads
        self._max_in_flight = max_in_flight
        self._loaded: dict[str, VisionModel] = {}
        self._lock = threading.Lock()

    @property
    def release(self) -> InstalledRelease:
        return self._release

    def tasks(self) -> dict[str, VisionTask]:
        """Name -> task of every vision model in the release."""
        return {name: e.spec.task for name, e in self._entries.items()}

    def vision_model(self, name: str | None, task: VisionTask) -> VisionModel:
        if name is None:
            name = next((n for n, e in self._entries.items() if e.spec.task == task), None)
            if name is None:
                raise NotFoundError(
                    f"the active release has no vision model for {task!r}; "
                    "install a release that ships one"
                )
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise NotFoundError(f"no vision model named {name!r} (available: {known})")
        if entry.spec.task != task:
            raise NotFoundError(f"vision model {name!r} does {entry.spec.task}, not {task}")
        with self._lock:
            model = self._loaded.get(name)
            if model is None:
                backend = open_backend(
                    entry.artifact.format, entry.artifact.path, n_threads=self._n_threads
                )
                model = VisionModel(name, entry.spec, backend, self._max_in_flight)
                self._loaded[name] = model
        return model
