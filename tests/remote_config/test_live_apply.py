"""What the live config changes in the local API: chat defaults fill in what a request
does not set, the request rate limit, the RAG evidence thresholds."""

from __future__ import annotations

import pytest

from edge_agent.rag.grounding import EvidencePolicy
from edge_agent.remote_config import ChatDefaults, LiveConfig, RateLimitedError
from edge_agent.remote_config.live import RequestRateLimiter
from edge_agent.remote_config.local_api import with_chat_defaults
from protocol.remote_config import RemoteConfig

DEFAULTS = ChatDefaults(max_tokens=64, temperature=0.2, system_prompt="Answer in Portuguese.")


def test_defaults_fill_only_what_the_request_leaves_out() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    filled = with_chat_defaults(body, DEFAULTS, chat=True)
    assert filled["max_tokens"] == 64 and filled["temperature"] == 0.2
    assert filled["messages"][0] == {"role": "system", "content": "Answer in Portuguese."}
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    own = {
        "model": "m",
        "max_tokens": 8,
        "temperature": 1.0,
        "messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}],
    }
    assert with_chat_defaults(own, DEFAULTS, chat=True) == own
    completion = with_chat_defaults({"model": "m", "prompt": "x"}, DEFAULTS, chat=False)
    assert "messages" not in completion and completion["max_tokens"] == 64


def test_the_rate_limit_refuses_past_the_burst_and_refills() -> None:
    now = [0.0]
    limiter = RequestRateLimiter(clock=lambda: now[0])
    limiter.configure(60, 2)
    limiter.admit()
    limiter.admit()
    with pytest.raises(RateLimitedError, match="60 requests per minute"):
        limiter.admit()
    now[0] += 1.0  # one token per second
    limiter.admit()
    limiter.configure(None, None)  # unset: unlimited
    for _ in range(100):
        limiter.admit()


def test_live_config_changes_what_readers_get_and_tells_listeners() -> None:
    live = LiveConfig()
    seen: list[str | None] = []
    live.subscribe(lambda c: seen.append(c.log_level))
    assert live.evidence_policy() == EvidencePolicy()
    live.apply(
        RemoteConfig.model_validate({"rag": {"min_similarity": 0.5}, "log_level": "DEBUG"}), 3
    )
    assert live.evidence_policy().min_similarity == 0.5
    assert live.evidence_policy().confident_similarity == EvidencePolicy().confident_similarity
    assert seen == [None, "DEBUG"] and live.version == 3
