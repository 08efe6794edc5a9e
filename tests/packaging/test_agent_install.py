"""The agent installs alone: a fresh venv, local wheels only, no control plane, no toolchains."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.packaging.conftest import AGENT_TEST_EXTRAS

pytestmark = pytest.mark.slow

# What a device must never get: the control plane's stack, the converters' toolchains,
# and development tools.
NOT_ON_A_DEVICE = {
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg-binary",
    "gguf",
    "torch",
    "onnx",
    "coremltools",
    "faiss-cpu",
    "openai",
    "pytest",
    "hypothesis",
    "schemathesis",
    "ruff",
    "mypy",
    "import-linter",
    "build",
    "outpost",
}


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_agent_wheel_holds_only_the_agent_and_the_protocol(agent_wheelhouse: Path) -> None:
    (wheel,) = agent_wheelhouse.glob("outpost_agent-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/", 1)[0] for name in z.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"edge_agent", "protocol"}


def test_the_agent_installs_from_local_wheels_without_the_control_plane(
    agent_wheelhouse: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin/python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(agent_wheelhouse),
            f"outpost-agent[{AGENT_TEST_EXTRAS}]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {_normalized(d["name"]) for d in json.loads(listed.stdout)}
    assert {"outpost-agent", "llama-cpp-python", "onnxruntime", "apsw", "fastapi"} <= installed
    assert sorted(installed & NOT_ON_A_DEVICE) == []

    # the agent's code imports with what was installed, the control plane's is absent
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import edge_agent.daemon, edge_agent.runtime.llama, edge_agent.rag.index,"
            " edge_agent.vision.backends\n"
            "import importlib.util as u\n"
            "print(u.find_spec('control_plane'), u.find_spec('converters'))",
        ],
        cwd=tmp_path,  # not the checkout: nothing importable from the working tree
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["None", "None"]
    helped = subprocess.run(
        [str(venv / "bin/outpost-agent"), "--help"], capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0 and "enroll" in helped.stdout
