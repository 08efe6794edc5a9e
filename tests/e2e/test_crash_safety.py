"""kill -9 at each step of an install (the health window included): the store the kill left
serves a verified release (checked before anything restarts), on restart the agent serves
the old release or the new one - told apart by their models, which differ - and the
interrupted install completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from edge_agent.store import InstallStep, ReleaseStore, sha256_file
from edge_agent.updates import marker_path
from tests.e2e.conftest import (
    MODEL_NAME,
    Agent,
    ControlPlane,
    prompt_pack,
    smollm2_path,
    stop_agent,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def device(
    control_plane: ControlPlane,
    smollm2_artifact: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Agent]:
    """A device serving a first release, stopped between tests."""
    agent = Agent(control_plane, tmp_path_factory.mktemp("crash") / "state")
    agent.start()
    first = control_plane.release("crash", "1.0.0", [smollm2_artifact["id"]])
    agent.wait_installed(control_plane.assign(agent.device_id, first))
    assert agent.terminate() == 0
    yield agent
    stop_agent(agent)


def assert_store_consistent(state_dir: Path) -> None:
    store = ReleaseStore.open(state_dir)
    try:
        current, previous = store.pointers()
        assert current is not None
        referenced: set[str] = set()
        for name in (current, previous):
            if name is not None:
                referenced |= {a.sha256 for a in store.verify_release(name).artifacts}
        assert {p.name for p in store.blobs_dir.iterdir()} == referenced
        assert list(store.downloads_dir.iterdir()) == []
        assert store.db.unfinished_install() is None
    finally:
        store.close()


def variant_gguf(source: Path, target: Path, tag: str) -> Path:
    """A copy of the SmolLM2 GGUF whose ``general.name`` is rewritten in place (same length):
    still a valid model, but other bytes - another artifact for the store and the device."""
    data = bytearray(source.read_bytes())
    key = b"general.name"
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    assert int.from_bytes(data[at : at + 4], "little") == 8, "general.name is not a string"
    length = int.from_bytes(data[at + 4 : at + 12], "little")
    name = f"crash-{tag}-".encode()
    data[at + 12 : at + 12 + length] = (name * (length // len(name) + 1))[:length]
    target.write_bytes(data)
    return target


# where the kill leaves the pointers: the old release until the new one is activated.
# The new model differs from the installed one in a few header bytes, so it arrives as a
# delta (docs/delta-updates.md): its steps are killed too.
CURRENT_AFTER_KILL = {
    "delta-manifest": "old",
    "download": "old",
    "delta-fetch": "old",
    "delta-copy": "old",
    "verified": "old",
    "activate": "new",
    "health": "new",
}
PARTIAL_AFTER_KILL = ("download", "delta-fetch", "delta-copy")


def assert_store_as_the_kill_left_it(
    state_dir: Path, step: str, *, old: str, new: str, version: int, model: dict[str, Any]
) -> None:
    """The store of the killed agent, read before anything restarts: every pointer names a
    release that verifies, no blob holds unverified bytes, the install is still unfinished."""
    store = ReleaseStore.open(state_dir)
    try:
        current, previous = store.pointers()
        assert current is not None
        served = store.verify_release(current)  # its manifest and every artifact hash check
        expected = {"old": old, "new": new}[CURRENT_AFTER_KILL[step]]
        assert served.release_id == expected, (step, served.release_id)
        if CURRENT_AFTER_KILL[step] == "new":
            assert previous is not None and store.verify_release(previous).release_id == old
        for blob in store.blobs_dir.iterdir():
            assert sha256_file(blob) == blob.name, f"{blob.name} holds unverified bytes"
        partials = list(store.downloads_dir.iterdir())
        blobs = {blob.name for blob in store.blobs_dir.iterdir()}
        if step == "delta-manifest":  # the manifest is checked, nothing written yet
            assert model["sha256"] not in blobs and partials == []
        elif step in PARTIAL_AFTER_KILL:
            assert model["sha256"] not in blobs
            assert [p.name for p in partials] == [f"{model['sha256']}.part"]
            assert 0 < partials[0].stat().st_size < model["length"]
        else:
            assert partials == [] and model["sha256"] in blobs
        unfinished = store.db.unfinished_install()
        assert unfinished is not None and unfinished.assignment_version == version
        assert unfinished.release_id == new
    finally:
        store.close()


def served_models(agent: Agent) -> tuple[str | None, set[str]]:
    """(release id, model names) from one status answer: which release serves, by its model."""
    status = agent.status()
    serving = status["serving"]
    return (serving["release_id"] if serving else None), {m["name"] for m in status["models"]}


@pytest.mark.parametrize(
    "step",
    ["delta-manifest", "download", "delta-fetch", "delta-copy", "verified", "activate", "health"],
)
def test_kill_9_at_an_install_step_leaves_a_verified_release(
    step: str,
    control_plane: ControlPlane,
    device: Agent,
    tmp_path: Path,
) -> None:
    new_model = f"{MODEL_NAME}-{step}"
    model = control_plane.upload(
        variant_gguf(smollm2_path(), tmp_path / f"{step}.gguf", step),
        name=new_model,
        kind="llm",
        fmt="gguf",
    )
    pack = control_plane.upload(
        prompt_pack(tmp_path / f"{step}.json", step), name="prompts", kind="config", fmt="json"
    )
    release = control_plane.release("crash", f"2.0.0-{step}", [model["id"], pack["id"]])
    device.start(pause_at=step)
    serving_before, models_before = served_models(device)
    assert serving_before is not None and new_model not in models_before
    version = control_plane.assign(device.device_id, release)
    marker = marker_path(device.state_dir, step)
    wait_until(marker.exists, timeout=120, what=f"the agent to freeze at {step!r}")
    device.kill_9()
    marker.unlink()
    assert_store_as_the_kill_left_it(
        device.state_dir, step, old=serving_before, new=release, version=version, model=model
    )

    device.start()
    client = openai.OpenAI(base_url=f"{device.url}/v1", api_key=device.token)
    serving, models = served_models(device)  # the old release, or the new one already
    assert (serving, models) in [(serving_before, models_before), (release, {new_model})]
    reply = client.chat.completions.create(
        model=next(iter(models)),
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=2,
    )
    assert reply.choices[0].message.content is not None
    device.wait_installed(version, timeout=120)
    assert served_models(device) == (release, {new_model})
    reply = client.chat.completions.create(
        model=new_model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
    for old_name in models_before:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=old_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
            )
    assert device.terminate() == 0

    assert_store_consistent(device.state_dir)
    store = ReleaseStore.open(device.state_dir)
    try:
        attempts = [record.step for record in store.db.installs_of(version)]
    finally:
        store.close()
    assert attempts == [InstallStep.INTERRUPTED, InstallStep.ACTIVE]
