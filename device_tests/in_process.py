"""The suite in-process against a release directory (no agent running): the release the
store at ``state_dir`` serves (``current``), or a named release directory, loaded by the
agent's own runtime and measured through the agent's acceptance observer with the
suite's workload. Cold start (load and warm-up of every model) is measured here only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from device_tests.errors import DeviceTestError
from device_tests.workload import Workload
from edge_agent.errors import AgentError as RuntimeAgentError
from edge_agent.release import InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.serving import AcceptanceInputs, OnDeviceObserver, ReleaseServing
from edge_agent.settings import AgentSettings
from edge_agent.store import ReleaseFiles

__all__ = ["in_process", "load_release"]


def load_release(state_dir: Path, release_dir: str | None = None) -> InstalledRelease:
    """The verified release to measure (every blob re-hashed when named explicitly)."""
    files = ReleaseFiles(state_dir)
    try:
        release = files.current() if release_dir is None else files.verify_release(release_dir)
    except RuntimeAgentError as e:
        raise DeviceTestError(f"cannot open the release under {state_dir}: {e}") from e
    if release is None:
        raise DeviceTestError(
            f"{state_dir} serves no release (no 'current' pointer); give --release-dir"
            " assignment-<N>, or an agent's state directory that has installed one"
        )
    return release


@contextmanager
def in_process(release: InstalledRelease, workload: Workload) -> Iterator[OnDeviceObserver]:
    """The release activated in this process (its own scratch state directory, so the
    device's state is not touched); yields the observer the suite measures."""
    scratch = Path(tempfile.mkdtemp(prefix="outpost-device-tests-"))
    settings = AgentSettings(state_dir=scratch)
    serving = ReleaseServing(ModelRegistry(settings), settings)
    try:
        serving.activate(release)
        inputs = AcceptanceInputs(
            prompts=workload.chat_prompts,
            max_tokens=workload.chat_max_tokens,
            sentences=workload.sentences,
            questions=workload.questions,
            images=workload.images_for,
            rag_k=workload.rag_k,
        )
        yield serving.observer(release, inputs)
    except RuntimeAgentError as e:
        raise DeviceTestError(f"the release cannot be served in process: {e}") from e
    finally:
        serving.close()
