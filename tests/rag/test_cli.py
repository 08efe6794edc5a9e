"""``python -m edge_agent.rag`` as a real process: build, ingest, info, query."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def rag(minilm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.rag", "--embedding-model", str(minilm), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_ingest_info_and_query(tmp_path: Path, minilm_gguf: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tags.md").write_text("# Tags\n\nPika tags report every 30 seconds over Bluetooth.\n")
    (docs / "sub").mkdir()
    (docs / "sub" / "led.txt").write_text("Solid amber means the gateway is offline.\n")
    out = tmp_path / "index.sqlite"
    built = rag(minilm_gguf, "build-index", str(docs), "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "[1/2] sub/led.txt: added (1 chunks)" in built.stdout
    assert "[2/2] tags.md: added (1 chunks)" in built.stdout

    extra = tmp_path / "depots.txt"
    extra.write_text("The Porto depot has a pharmaceutical cold room.\n")
    ingested = rag(minilm_gguf, "ingest", str(extra), "--index", str(out))
    assert ingested.returncode == 0, ingested.stderr

    info = json.loads(rag(minilm_gguf, "info", "--index", str(out)).stdout)
    assert info["documents"] == 3 and info["dimension"] == 384
    assert info["sha256"] == hashlib.sha256(minilm_gguf.read_bytes()).hexdigest()

    answer = json.loads(
        rag(minilm_gguf, "query", "Which depot has a cold room?", "--index", str(out)).stdout
    )
    assert answer["abstained"] is False
    assert answer["citations"][0]["document"] == "depots.txt"


def test_a_failed_build_leaves_the_existing_index_untouched(
    tmp_path: Path, minilm_gguf: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("Good text about gateways.\n")
    out = tmp_path / "index.sqlite"
    assert rag(minilm_gguf, "build-index", str(docs), "--out", str(out)).returncode == 0
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    (docs / "empty.md").write_text("")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    failed = rag(minilm_gguf, "build-index", str(docs), "--out", str(out), "--force")
    assert failed.returncode == 1
    assert "binary.txt: error:" in failed.stdout and "empty.md: error:" in failed.stdout
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert not list(tmp_path.glob("*.partial"))


def test_a_corrupted_index_is_a_clear_error(tmp_path: Path, minilm_gguf: Path) -> None:
    bad = tmp_path / "index.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    result = rag(minilm_gguf, "query", "anything", "--index", str(bad))
    assert result.returncode == 2
    assert "not an SQLite database" in result.stderr and "Traceback" not in result.stderr
