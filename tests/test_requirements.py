"""Under CI=true nothing passes by not running: a missing requirement fails, and so does any
skip that does not name a platform; on a developer's machine they stay skips."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

CASES = """
import sys

import pytest

from tests.requirements import require, require_installed, require_module


def test_met():
    require(True, "nothing", "-")


def test_missing_service():
    require(False, "the flux capacitor", "apt-get install flux")


def test_missing_module():
    require_installed("no_such_module_here", "the no-such package", "pip install no-such")


def test_bare_skip():
    pytest.skip("not today")


def test_platform_skip():
    pytest.skip("Core ML predict needs macOS")


@pytest.mark.skipif(sys.platform != "nonesuch", reason="needs a GPU (CUDA)")
def test_platform_skipif():
    pass


@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""

MODULE_LEVEL = """
from tests.requirements import require_module

torch = require_module("no_such_module_here", "the no-such package", "pip install no-such")


def test_never_runs():
    pass
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.syspathinsert(REPO)
    pytester.makeconftest("from tests.conftest import *  # noqa: F403 (the hooks under test)")
    pytester.makepyfile(test_cases=CASES, test_module_level=MODULE_LEVEL)
    monkeypatch.delenv("CI", raising=False)
    return pytester


def test_on_a_developer_machine_a_missing_requirement_is_a_skip_naming_it(
    run: pytest.Pytester,
) -> None:
    result = run.runpytest("-rA", "-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, skipped=6, xfailed=1)
    result.stdout.fnmatch_lines(
        ["*needs the no-such package (pip install no-such)*", "*needs the flux capacitor*"]
    )


def test_under_ci_a_missing_requirement_or_a_bare_skip_fails_and_platform_skips_stay(
    run: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = run.runpytest("-rA", "-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=3, skipped=2, xfailed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*needs the flux capacitor (apt-get install flux): under CI=true a missing"
            " requirement fails the run*",
            "*skipped under CI=true for a reason that names no platform: 'not today'*",
        ]
    )
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 2
    assert all("macOS" in line or "GPU" in line for line in skipped), skipped
