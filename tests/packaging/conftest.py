"""Fixtures for the packaging tests: the agent-only wheel and a local wheelhouse for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, control_plane, fresh_postgres_database
from tests.requirements import require

# the real control plane on SQLite and PostgreSQL, as the end-to-end tests start it
__all__ = ["control_plane", "fresh_postgres_database"]

# The extras a device may install (coreml is macOS-only: its coremltools is a converter's
# toolchain on Linux and stays out of the closure checked here).
AGENT_TEST_EXTRAS = "llm,rag,vision,tflite"


def llama_wheel_dir() -> Path:
    """The folder where ``scripts/bootstrap.py`` caches this CPU's llama-cpp-python wheel
    (for this CPU and build flags: another folder may hold a wheel built otherwise)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bootstrap", REPO / "scripts/bootstrap.py")
    assert spec is not None and spec.loader is not None
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    cache = Path(os.environ.get("OUTPOST_WHEEL_CACHE", Path.home() / ".cache/outpost/wheels"))
    folder: Path = bootstrap.llama_wheel_folder(cache)
    require(
        any(folder.glob("llama_cpp_python-*.whl")),
        "the cached llama-cpp-python wheel",
        "run `make setup`",
    )
    return folder


@pytest.fixture(scope="session")
def agent_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``packaging/build_agent.py --wheelhouse``: the agent wheel and every dependency."""
    out = tmp_path_factory.mktemp("wheelhouse")
    built = subprocess.run(
        [
            sys.executable,
            str(REPO / "packaging/build_agent.py"),
            "--out",
            str(out),
            "--wheelhouse",
            "--extras",
            AGENT_TEST_EXTRAS,
            "--find-links",
            str(llama_wheel_dir()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    require(
        built.returncode == 0,
        "the agent's dependency wheels (pip download from the package index)",
        f"check the package index is reachable: {built.stderr[-2000:]}",
    )
    return out
