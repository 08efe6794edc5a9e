"""Rules for every test: under CI=true nothing passes by not running.

The helpers in ``tests/requirements.py`` fail under CI when a package, model or service is
missing. This file is the safety net for any skip that does not go through them: under
``CI=true`` a skip whose reason names no platform (macOS, a GPU, ...) is reported as a
failure. It also marks every test that needs the PostgreSQL server with ``postgres``.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.requirements import PLATFORM_WORDS, in_ci

_CI_SKIP = (
    "skipped under CI=true for a reason that names no platform: {reason!r}. A missing"
    " package, model or service fails a CI run (tests/requirements.py); only a platform"
    " skip (macOS, a GPU) may stay a skip."
)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_a_ci_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not in_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if PLATFORM_WORDS.search(reason):
        return
    report.outcome = "failed"
    report.longrepr = _CI_SKIP.format(reason=reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_a_ci_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_a_ci_skip(report)
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the session's PostgreSQL database needs the server."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
