"""Delta updates on the control plane: each upload gets a chunk manifest signed into its
target's custom metadata and served beside it; ``outpost-cp releases show`` tells how many
bytes a device on each earlier release downloads."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tuf.api.metadata import Metadata, Targets

from protocol import paths
from protocol.chunking import CHUNKS_CUSTOM_KEY, decode_manifest
from tests.control_plane.cli_harness import OperatorShell, operator_shell

SIZE = 2 << 20


@pytest.fixture
def sh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[OperatorShell]:
    with operator_shell(tmp_path, capsys) as shell:
        yield shell


def big_gguf(tmp_path: Path, name: str, seed: int = 0, edits: int = 0) -> Path:
    """A real GGUF (the gguf package) of ~2 MB; ``edits`` regions of its tensor rewritten."""
    import gguf

    path = tmp_path / f"{name}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("delta")
    writer.add_context_length(256)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    values = np.random.default_rng(seed).random((SIZE // 4,), dtype=np.float32)
    rng = random.Random(edits)
    for _ in range(edits):
        at = rng.randrange(0, len(values) - 4096)
        values[at : at + 4096] = np.random.default_rng(at).random(4096, dtype=np.float32)
    writer.add_tensor("token_embd.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _upload(sh: OperatorShell, path: Path) -> dict[str, object]:
    run = sh.run(
        "artifacts", "upload", str(path), "--name", "chat", "--kind", "llm", "--format", "gguf",
        role="release-manager",
    )  # fmt: skip
    return dict(run.data)


def _release(sh: OperatorShell, version: str, artifact_id: object) -> dict[str, object]:
    run = sh.run(
        "releases", "create", "--name", "assistant", "--version", version,
        "--artifact", str(artifact_id), role="release-manager",
    )  # fmt: skip
    return dict(run.data)


def test_the_chunk_manifest_is_signed_in_the_target_and_served_beside_it(
    sh: OperatorShell,
) -> None:
    path = big_gguf(sh.tmp_path, "base")
    artifact = _upload(sh, path)
    _release(sh, "1.0.0", artifact["id"])
    # the signed targets metadata carries the manifest's sha256 and length
    timestamp = httpx.get(f"{sh.url}{paths.REPO_METADATA}/timestamp.json").json()
    snap_v = timestamp["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = httpx.get(f"{sh.url}{paths.REPO_METADATA}/{snap_v}.snapshot.json").json()
    targets_v = snapshot["signed"]["meta"]["targets.json"]["version"]
    raw = httpx.get(f"{sh.url}{paths.REPO_METADATA}/{targets_v}.targets.json").content
    target = Metadata[Targets].from_bytes(raw).signed.targets[str(artifact["target_path"])]
    entry = target.unrecognized_fields["custom"][CHUNKS_CUSTOM_KEY]
    served = httpx.get(f"{sh.url}{paths.REPO_TARGETS}/{entry['path']}")
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == entry["sha256"]
    assert len(served.content) == entry["length"]
    manifest = decode_manifest(
        served.content, artifact_sha256=str(artifact["sha256"]), length=path.stat().st_size
    )
    assert sum(c.length for c in manifest.chunks) == path.stat().st_size
    # the artifact answers ranges (what a delta fetches)
    ranged = httpx.get(
        f"{sh.url}{paths.REPO_TARGETS}/{artifact['target_path']}",
        headers={"Range": "bytes=100-199"},
    )
    assert ranged.status_code == 206 and ranged.content == path.read_bytes()[100:200]
    # an uploader cannot set the key itself
    bad = sh.run(
        "artifacts", "upload", str(big_gguf(sh.tmp_path, "other", seed=5)), "--name", "x",
        "--kind", "llm", "--format", "gguf",
        "--custom", '{"chunks": {"path": "evil"}}', role="release-manager",
    )  # fmt: skip
    assert bad.code != 0 and "chunks" in bad.err


def test_releases_show_tells_what_a_device_on_each_earlier_release_downloads(
    sh: OperatorShell,
) -> None:
    base = _upload(sh, big_gguf(sh.tmp_path, "base"))
    _release(sh, "1.0.0", base["id"])
    other = _upload(sh, big_gguf(sh.tmp_path, "unrelated", seed=9))
    _release(sh, "1.0.1", other["id"])
    new_path = big_gguf(sh.tmp_path, "new", edits=3)
    new = _upload(sh, new_path)
    _release(sh, "1.1.0", new["id"])
    shown = sh.run("releases", "show", "assistant@1.1.0")
    rows = {d["release"]: d for d in shown.data["downloads"]}
    full = new_path.stat().st_size
    near = rows["assistant@1.0.0"]
    assert near["full_bytes"] == full
    assert 3 * 4096 * 4 <= near["download_bytes"] < full // 4  # three edited regions
    assert rows["assistant@1.0.1"]["download_bytes"] == full  # nothing shared: all of it
    text = sh.run("releases", "show", "assistant@1.1.0", json_mode=False).out
    assert re.search(r"assistant@1\.0\.0\s+0\s+", text), text
    assert "downloads from earlier releases" in text
