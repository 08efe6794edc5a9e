"""The health window's verdict, as values: which checks a release needs, and when they fail."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.updates import Acceptance, SmokeCheck, SmokeResult, judge, smoke_checks

CHAT = SmokeCheck("chat", "smollm2")
EMBED = SmokeCheck("embedding", "minilm")


def release(*kinds: tuple[str, str]) -> InstalledRelease:
    return InstalledRelease(
        release_id="rel-1",
        release_name="kiosk",
        release_version="1.0.0",
        assignment_version=1,
        artifacts=tuple(
            InstalledArtifact(name, kind, "gguf", "0" * 64, 1, Path("/nowhere"))
            for name, kind in kinds
        ),
    )


def test_every_served_artifact_gets_one_smoke_check_and_configs_get_none() -> None:
    checks = smoke_checks(
        release(
            ("smollm2", "llm"),
            ("minilm", "embedding"),
            ("faces", "vision-detect"),
            ("mobilenet", "vision-classify"),
            ("docs", "rag-index"),
            ("prompts", "config"),
        )
    )
    assert checks == (
        CHAT,
        EMBED,
        SmokeCheck("vision", "faces"),
        SmokeCheck("vision", "mobilenet"),
        SmokeCheck("rag", "docs"),
    )


def test_all_checks_passing_within_the_thresholds_pass_with_the_numbers() -> None:
    acceptance = Acceptance.from_release_config({"acceptance": {"max_smoke_ms": {"chat": 500}}})
    verdict = judge([CHAT, EMBED], [SmokeResult(CHAT, 123.4), SmokeResult(EMBED, 9.0)], acceptance)
    assert verdict.passed and verdict.failures == ()
    assert (
        verdict.reason
        == "health window passed: chat 'smollm2' 123 ms (max 500), embedding 'minilm' 9 ms"
    )


def test_a_failed_smoke_request_fails_the_window_and_says_which_and_why() -> None:
    verdict = judge(
        [CHAT, EMBED],
        [SmokeResult(CHAT, 80.0, "the chat reply was empty"), SmokeResult(EMBED, 9.0)],
        Acceptance(),
    )
    assert not verdict.passed
    assert verdict.failures == (
        "chat smoke request on 'smollm2' failed after 80 ms: the chat reply was empty",
    )
    assert "docs/runbooks/agent-health-window.md" in verdict.reason


def test_a_smoke_request_slower_than_its_threshold_fails_with_both_numbers() -> None:
    acceptance = Acceptance.from_release_config({"acceptance": {"max_smoke_ms": {"chat": 1}}})
    verdict = judge([CHAT], [SmokeResult(CHAT, 84.2)], acceptance)
    assert not verdict.passed
    assert verdict.failures == (
        "chat smoke request on 'smollm2' took 84 ms, over the release's"
        " acceptance.max_smoke_ms.chat of 1 ms",
    )


def test_a_threshold_binds_only_its_own_kind() -> None:
    acceptance = Acceptance.from_release_config({"acceptance": {"max_smoke_ms": {"embedding": 10}}})
    verdict = judge(
        [CHAT, EMBED], [SmokeResult(CHAT, 4000.0), SmokeResult(EMBED, 11.0)], acceptance
    )
    assert [f.split(" smoke")[0] for f in verdict.failures] == ["embedding"]


def test_a_planned_check_that_never_ran_fails_the_window() -> None:
    verdict = judge([CHAT, EMBED], [SmokeResult(CHAT, 5.0)], Acceptance())
    assert not verdict.passed
    assert verdict.failures == ("embedding smoke request on 'minilm' did not run",)


def test_a_result_without_a_real_timing_cannot_pass_a_threshold() -> None:
    acceptance = Acceptance.from_release_config({"acceptance": {"max_smoke_ms": {"chat": 10}}})
    verdict = judge([CHAT], [SmokeResult(CHAT, math.nan)], acceptance)
    assert not verdict.passed


def test_a_release_without_models_passes_an_empty_window() -> None:
    verdict = judge(smoke_checks(release(("prompts", "config"))), [], Acceptance())
    assert verdict.passed and "serves no model" in verdict.reason


def test_no_acceptance_block_means_no_thresholds() -> None:
    assert Acceptance.from_release_config({"models": {}}).max_smoke_ms == {}


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"max_smoke_ms": {"chatt": 5000}}, "acceptance.max_smoke_ms.chatt"),  # a typo
        ({"max_smoke_ms": {"chat": 0}}, "acceptance.max_smoke_ms.chat"),
        ({"max_smoke_ms": {"chat": "fast"}}, "acceptance.max_smoke_ms.chat"),
        ({"p95_ms": {"chat": 100}}, "acceptance.p95_ms"),  # not a key (yet)
    ],
)
def test_an_acceptance_block_that_cannot_mean_what_it_says_is_refused(
    block: dict[str, object], named: str
) -> None:
    """A typo must not silently switch a threshold off: the error names the key."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        Acceptance.from_release_config({"acceptance": block})


def test_an_acceptance_block_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be an object"):
        Acceptance.from_release_config({"acceptance": [5000]})
