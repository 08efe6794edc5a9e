"""RAG indexes as release artifacts: an index ships beside the embedding model it was built
with, is checked against it at install, and is served from a per-release working copy so
the signed blob stays untouched and a rollback brings the old index back with its model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edge_agent.errors import BadUpdateError, NoModelError, StoreError
from edge_agent.rag.engine import ChatModel, EmbeddingModel, RagEngine
from edge_agent.rag.grounding import EvidencePolicy
from edge_agent.rag.index import EmbeddingIdentity, RagIndex, read_identity
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime import ChatTurn, ModelRegistry, Sampling
from edge_agent.runtime.backends import ChatRole

__all__ = [
    "RegistryChat",
    "RegistryEmbedder",
    "ReleaseRagEngines",
    "check_release_index",
    "embedding_identity",
    "open_release_engine",
    "working_index",
]

EMBEDDING_KIND = "embedding"
INDEX_KIND = "rag-index"


def _one(release: InstalledRelease, kind: str) -> InstalledArtifact | None:
    found = release.artifacts_of_kind(kind)
    if len(found) > 1:
        raise BadUpdateError(f"release {release.release_id} has {len(found)} {kind} artifacts")
    return found[0] if found else None


def embedding_identity(artifact: InstalledArtifact, dimension: int) -> EmbeddingIdentity:
    """The identity an index must carry to be used with this embedding artifact."""
    return EmbeddingIdentity(name=artifact.name, sha256=artifact.sha256, dimension=dimension)


def check_release_index(release: InstalledRelease) -> None:
    """Refuse a release whose RAG index was built with another embedding model than the
    one it ships (call while staging, before activation).
    """
    index = _one(release, INDEX_KIND)
    if index is None:
        return
    model = _one(release, EMBEDDING_KIND)
    if model is None:
        raise BadUpdateError(
            f"release {release.release_id} ships a RAG index but no embedding model"
        )
    try:
        built_with = read_identity(index.path)
    except StoreError as e:
        raise BadUpdateError(f"release {release.release_id}: RAG index is unusable: {e}") from e
    if built_with.sha256 != model.sha256:
        raise BadUpdateError(
            f"release {release.release_id}: RAG index {index.name} was built with embedding "
            f"model sha256 {built_with.sha256[:12]}, but the release ships {model.name} "
            f"({model.sha256[:12]}); rebuild the index with that model"
        )


def working_index(release: InstalledRelease, state_dir: Path) -> Path:
    """Path of the release's writable index copy (``<state_dir>/rag/<release_id>/``).

    The first call copies the shipped index there (temp file, fsync, rename); local
    ingests go into the copy, so the verified artifact is never modified.
    """
    target = state_dir / "rag" / release.release_id / "index.sqlite"
    shipped = _one(release, INDEX_KIND)
    if target.exists() or shipped is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, shipped.path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def open_release_engine(
    release: InstalledRelease | None,
    embedder: EmbeddingModel,
    chat: ChatModel | None,
    *,
    state_dir: Path,
) -> RagEngine:
    """The engine for the active release: its working index (an empty one when the release
    ships none), opened only if it matches ``embedder``.
    """
    if release is None:
        raise NoModelError("no verified release is installed; RAG has no embedding model yet")
    if _one(release, EMBEDDING_KIND) is None:
        raise NoModelError(f"release {release.release_id} has no embedding model for RAG")
    path = working_index(release, state_dir)
    if path.exists():
        index = RagIndex.open(path, embedder.identity)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        index = RagIndex.create(path, embedder.identity)
    return RagEngine(index, embedder, chat)


class RegistryEmbedder:
    """The release's embedding artifact, served by the runtime's model registry."""

    def __init__(self, registry: ModelRegistry, artifact: InstalledArtifact) -> None:
        self._registry = registry
        self._name = artifact.name
        probe = registry.embed(artifact.name, ["dimension probe"])
        self._identity = embedding_identity(artifact, len(probe[0]))

    @property
    def identity(self) -> EmbeddingIdentity:
        return self._identity

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._registry.embed(self._name, texts)


class RegistryChat:
    """A chat model of the release, served by the registry, decoding greedily."""

    def __init__(self, registry: ModelRegistry, name: str) -> None:
        self._registry = registry
        self._name = name

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        cancelled: threading.Event | None = None,
    ) -> str:
        turns = [
            ChatTurn(role=_role(m.get("role", "user")), content=m["content"]) for m in messages
        ]
        sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
        return self._registry.chat(self._name, turns, sampling, cancelled=cancelled).text


def _role(role: str) -> ChatRole:
    return "system" if role == "system" else "assistant" if role == "assistant" else "user"


class ReleaseRagEngines:
    """The engine provider for ``rag_router``: the RAG engine of the registry's active
    release, reopened when the release changes (so RAG rolls back with its models).

    The chat model is the release config's ``rag_chat_model`` or its first ``llm``.
    """

    def __init__(self, registry: ModelRegistry, state_dir: Path) -> None:
        self._registry = registry
        self._state_dir = state_dir
        self._lock = threading.Lock()
        self._current: tuple[str, RagEngine, EvidencePolicy] | None = None
        # the remote config's thresholds over the engine's own (set by the agent)
        self.evidence_override: Callable[[EvidencePolicy], EvidencePolicy] | None = None

    def _live(self, engine: RagEngine, base: EvidencePolicy) -> RagEngine:
        if self.evidence_override is not None:
            engine.evidence = self.evidence_override(base)
        return engine

    def __call__(self) -> RagEngine:
        release = self._registry.release
        if release is None:
            raise NoModelError("no verified release is installed; RAG is not available yet")
        with self._lock:
            if self._current is not None and self._current[0] == release.release_id:
                return self._live(self._current[1], self._current[2])
            model = _one(release, EMBEDDING_KIND)
            if model is None:
                raise NoModelError(f"release {release.release_id} has no embedding model")
            chat_name = release.config.get("rag_chat_model") or next(
                (a.name for a in release.artifacts_of_kind("llm")), None
            )
            chat = RegistryChat(self._registry, str(chat_name)) if chat_name else None
            engine = open_release_engine(
                release, RegistryEmbedder(self._registry, model), chat, state_dir=self._state_dir
            )
            if self._current is not None:
                self._current[1].index.close()
            self._current = (release.release_id, engine, engine.evidence)
            return self._live(engine, engine.evidence)

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current[1].index.close()
                self._current = None
