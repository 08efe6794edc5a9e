"""Prompt-lookup decoding on the real model (SmolLM2 in llama.cpp, issue 13 item 8).

A draft checked in one batch gets logits that differ slightly from decoding token by
token (another accumulation order), so greedy output is not guaranteed token-identical to
plain decoding on every prompt (benchmarks/prompt_lookup.py measures how often it is).
What is guaranteed is asserted: the counters, the same finish reason and token count at
max_tokens, and the same text on a short grounded answer checked stable (fresh prompt and
reused prefix alike).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.runtime import ChatTurn, ModelRegistry, Sampling
from tests.agent_api.conftest import LLM, release, settings_for_tests

pytestmark = pytest.mark.slow

SOURCES = (
    "[1] (logrotate(8))\nlogrotate is designed to ease administration of systems that"
    " generate large numbers of log files. It allows automatic rotation, compression,"
    " removal, and mailing of log files. Each log file may be handled daily, weekly,"
    " monthly, or when it grows too large.\n\n"
    "[2] (logrotate(8))\nNormally, logrotate is run as a daily cron job. It will not modify"
    " a log more than once in one day unless the criterion for that log is based on the"
    " log's size."
)
GROUNDED = [
    ChatTurn(
        "system",
        "Answer using only the numbered sources and quote their words.\n\n" + SOURCES,
    ),
    ChatTurn("user", "What does logrotate allow? Quote source [1]."),
]
MAX_TOKENS = 32


def _answer(registry: ModelRegistry) -> tuple[str, str, int, dict[str, int]]:
    result = registry.chat(LLM, GROUNDED, Sampling(max_tokens=MAX_TOKENS, temperature=0))
    (model,) = registry.models()
    return result.text, result.finish_reason, result.completion_tokens, model.engine


def test_a_grounded_answer_drafts_from_its_sources_and_matches_plain_decoding(
    smollm2: Path,
) -> None:
    plain = ModelRegistry(settings_for_tests())
    drafting = ModelRegistry(settings_for_tests(prompt_lookup=True))
    try:
        for registry in (plain, drafting):
            registry.activate(release("r1", {LLM: ("llm", smollm2)}))
        want = _answer(plain)
        assert want[3]["drafted_tokens"] == 0  # off by default: nothing drafted
        assert want[3]["draft_steps"] == 0
        for _fresh_then_reused in range(2):
            text, reason, tokens, engine = _answer(drafting)
            assert (text, reason, tokens) == want[:3]
            assert (reason, tokens) == ("length", MAX_TOKENS)  # never past max_tokens
        assert engine["drafted_tokens"] > 0
        assert 0 < engine["draft_tokens_accepted"] <= engine["drafted_tokens"]
    finally:
        plain.close()
        drafting.close()
