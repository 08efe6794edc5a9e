"""The prompt pack and policy bundle of the active release (read once per artifact hash).

A release may carry one ``prompt-pack`` and one ``policy`` artifact
(:mod:`protocol.release_artifacts`). They are checked when the release is activated
(:func:`check_release_prompts`: an invalid one fails activation, so the release is rolled
back as a unit) and read by :class:`~edge_agent.remote_config.live.LiveConfig` under the
remote config, which wins where it sets a key.
"""

from __future__ import annotations

import json
import threading

from pydantic import ValidationError

from edge_agent.errors import BadUpdateError
from edge_agent.release import InstalledArtifact, InstalledRelease
from protocol.release_artifacts import POLICY_KIND, PROMPT_PACK_KIND, PolicyBundle, PromptPack

__all__ = ["ReleaseDefaults", "check_release_prompts"]


def _one(release: InstalledRelease, kind: str) -> InstalledArtifact | None:
    found = release.artifacts_of_kind(kind)
    if len(found) > 1:
        raise BadUpdateError(
            f"release {release.release_id} has {len(found)} {kind} artifacts; at most one"
        )
    return found[0] if found else None


def _read(artifact: InstalledArtifact, model: type[PromptPack] | type[PolicyBundle]) -> object:
    try:
        return model.model_validate(json.loads(artifact.path.read_bytes()))
    except (OSError, ValueError, ValidationError) as e:
        raise BadUpdateError(
            f"the release's {artifact.kind} {artifact.name!r} is invalid: {e}"
        ) from e


def check_release_prompts(release: InstalledRelease) -> None:
    """Raise :class:`BadUpdateError` if the release's prompt pack or policy is invalid."""
    ReleaseDefaults().of(release)


class ReleaseDefaults:
    """Parsed prompt pack and policy per release artifact hash (a small cache)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, object] = {}

    def _get(
        self, artifact: InstalledArtifact | None, model: type[PromptPack] | type[PolicyBundle]
    ) -> object | None:
        if artifact is None:
            return None
        with self._lock:
            if artifact.sha256 not in self._cache:
                self._cache[artifact.sha256] = _read(artifact, model)
            return self._cache[artifact.sha256]

    def of(self, release: InstalledRelease | None) -> tuple[PromptPack | None, PolicyBundle | None]:
        if release is None:
            return None, None
        pack = self._get(_one(release, PROMPT_PACK_KIND), PromptPack)
        policy = self._get(_one(release, POLICY_KIND), PolicyBundle)
        return (
            pack if isinstance(pack, PromptPack) else None,
            policy if isinstance(policy, PolicyBundle) else None,
        )
