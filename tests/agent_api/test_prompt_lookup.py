"""Prompt-lookup decoding (issue 13 item 8): the draft function, and the engine checking
drafts on a toy backend (pure, fast).

The toy model mostly copies: after a token it has seen before, it says what followed that
token the first time, so drafts taken from the prompt are often right; every seventh
position it says something else (a hash of the sequence), so drafts are also rejected and
the rejected KV cells must be removed (the toy asserts every batch continues its sequence).
Whatever is drafted, the engine must generate what it generates without drafting, and stop
at the same place for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from edge_agent.runtime.batching import (
    BatchEngine,
    BatchItem,
    GenerationParams,
    Sampled,
)
from edge_agent.runtime.prompt_lookup import propose_draft
from tests.agent_api.test_batching import collect
from tests.agent_api.toy_kv import END, ToyKV

VOCAB = 40


def toy_next(tokens: Sequence[int]) -> int:
    if len(tokens) % 7 == 0:
        h = 11
        for t in tokens:
            h = (h * 31 + t) % 1_000_003
        return 1 + h % (VOCAB - 1)
    last = tokens[-1]
    for i, t in enumerate(tokens[:-1]):
        if t == last:
            return tokens[i + 1]
    return 1 + (last * 7) % (VOCAB - 1)


class CopyingToy(ToyKV):
    """One KV "cache" per sequence: the tokens at positions 0..n-1. Logits are kept for
    every position that asked for them (a checked draft asks for all)."""

    def __init__(self, slots: int, end_at: int | None = None) -> None:
        super().__init__(slots)
        self.end_at = end_at
        self.batches: list[list[BatchItem]] = []
        self._seen: dict[int, list[int]] = {}

    def decode(self, items: Sequence[BatchItem]) -> None:
        self.batches.append(list(items))
        self._seen = {}
        index = 0
        for item in items:
            kv = self.kv[item.seq_id]
            assert item.pos0 == len(kv), "positions must continue the sequence"
            for j, token in enumerate(item.tokens):
                kv.append(token)
                if item.logits and (item.all_logits or j == len(item.tokens) - 1):
                    self._seen[index] = list(kv)
                index += 1

    def sample(self, seq_id: int, batch_index: int, logprobs: int | None) -> Sampled:
        seen = self._seen[batch_index]  # only positions that asked for logits
        if self.end_at is not None and len(seen) >= self.end_at:
            return Sampled(END)
        return Sampled(toy_next(seen))


PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 13, 14, 15, 5, 6]


def run(
    prompt: Sequence[int],
    params: GenerationParams,
    *,
    max_draft: int,
    end_at: int | None = None,
    n_ctx_seq: int = 256,
) -> tuple[str, str | None, int, BatchEngine, CopyingToy]:
    backend = CopyingToy(2, end_at)
    eng = BatchEngine(backend, slots=2, n_batch=16, n_ctx_seq=n_ctx_seq, max_draft=max_draft)
    try:
        text, last = collect(eng.submit(prompt, params).events())
    finally:
        eng.close()
    return text, last.finish_reason, last.completion_tokens, eng, backend


# --- the draft function -------------------------------------------------------------------


def test_draft_is_what_followed_the_most_recent_earlier_trigram() -> None:
    tokens = [1, 2, 3, 4, 5, 1, 2, 3, 6, 7, 9, 1, 2, 3]
    assert propose_draft(tokens, 3) == (6, 7, 9)  # the later occurrence, not the first
    assert propose_draft(tokens, 1) == (6,)


def test_draft_falls_back_to_a_bigram_then_nothing() -> None:
    assert propose_draft([4, 8, 9, 7, 1, 8, 9], 4) == (7, 1, 8, 9)  # "8 9" only as a bigram
    assert propose_draft([1, 2, 3, 4], 4) == ()  # the last bigram never occurred before
    assert propose_draft([3], 4) == ()
    assert propose_draft([], 4) == ()


def test_draft_stops_at_the_end_of_the_sequence_and_at_max_draft() -> None:
    assert propose_draft([1, 2, 3, 1, 2], 8) == (3, 1, 2)  # what follows runs to the end
    assert propose_draft([7, 7, 7, 7], 8) == (7,)  # the most recent match is one back
    assert propose_draft([1, 2, 3, 1, 2], 0) == ()


# --- the engine -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13, 40])
def test_drafting_generates_exactly_what_plain_decoding_does(max_tokens: int) -> None:
    params = GenerationParams(max_tokens=max_tokens, draft=True)
    want = run(PROMPT, params, max_draft=0)[:3]
    text, reason, n, eng, backend = run(PROMPT, params, max_draft=4)
    assert (text, reason, n) == want
    assert reason == "length" and n == max_tokens  # never past max_tokens
    stats = eng.stats()
    if max_tokens >= 3:
        assert stats.drafted_tokens > 0 and stats.draft_steps > 0
        assert any(i.all_logits for b in backend.batches for i in b)
    if max_tokens >= 13:
        assert 0 < stats.draft_tokens_accepted < stats.drafted_tokens  # kept some, not all
    assert all(len(i.tokens) <= 5 for b in backend.batches for i in b if i.all_logits)


def test_drafting_saves_decode_steps_when_the_model_copies() -> None:
    params = GenerationParams(max_tokens=40, draft=True)
    plain = run(PROMPT, params, max_draft=0)[4]
    drafted = run(PROMPT, params, max_draft=4)[4]
    assert len(drafted.batches) < len(plain.batches)


def test_the_kv_cache_keeps_only_accepted_tokens() -> None:
    params = GenerationParams(max_tokens=30, draft=True)
    _t, _r, _n, _eng, plain = run(PROMPT, params, max_draft=0)
    _t, _r, _n, _eng, drafted = run(PROMPT, params, max_draft=4)
    assert drafted.kv[0] == plain.kv[0]  # the rejected draft positions were removed


@pytest.mark.parametrize("end_at", [17, 18, 21, 30])
def test_an_end_token_inside_a_checked_draft_ends_there(end_at: int) -> None:
    params = GenerationParams(max_tokens=50, draft=True)
    want = run(PROMPT, params, max_draft=0, end_at=end_at)[:3]
    got = run(PROMPT, params, max_draft=4, end_at=end_at)[:3]
    assert got == want
    assert got[1] == "stop" and got[2] == end_at - len(PROMPT)


def test_a_stop_string_inside_a_checked_draft_cuts_the_text_as_without_drafting() -> None:
    free = run(PROMPT, GenerationParams(max_tokens=30), max_draft=0)[0]
    stop = free[free.index(">", 30) + 1 : free.index(">", 30) + 5]  # some later token's start
    params = GenerationParams(max_tokens=30, stop=(stop,), draft=True)
    want = run(PROMPT, params, max_draft=0)[:3]
    got = run(PROMPT, params, max_draft=4)[:3]
    assert got == want and got[1] == "stop" and got[2] < 30


def test_a_full_context_ends_with_length_as_without_drafting() -> None:
    params = GenerationParams(max_tokens=100, draft=True)
    want = run(PROMPT, params, max_draft=0, n_ctx_seq=30)[:3]
    got = run(PROMPT, params, max_draft=4, n_ctx_seq=30)[:3]
    assert got == want and got[1] == "length"


def test_no_draft_for_requests_that_do_not_allow_it_or_when_it_is_off() -> None:
    for params, max_draft in (
        (GenerationParams(max_tokens=30), 4),
        (
            GenerationParams(max_tokens=30, draft=True),
            0,
        ),
    ):
        eng, backend = run(PROMPT, params, max_draft=max_draft)[3:]
        assert eng.stats().drafted_tokens == 0
        assert not any(i.all_logits for b in backend.batches for i in b)


def test_no_draft_while_another_sequence_decodes() -> None:
    backend = CopyingToy(2)
    eng = BatchEngine(backend, slots=2, n_batch=16, n_ctx_seq=256, max_draft=4)
    try:
        params = GenerationParams(max_tokens=20, draft=True)
        a, b = eng.submit(PROMPT, params), eng.submit(list(reversed(PROMPT)), params)
        text_a, _ = collect(a.events())
        text_b, _ = collect(b.events())
    finally:
        eng.close()
    assert text_a == run(PROMPT, params, max_draft=0)[0]
    assert text_b == run(list(reversed(PROMPT)), params, max_draft=0)[0]
    together = [b for b in backend.batches if len(b) == 2]
    assert together and not any(i.all_logits for b in together for i in b)


# --- the setting ----------------------------------------------------------------------------


def test_the_setting_and_a_release_override_turn_drafting_on_and_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_agent.runtime.options import resolve_options
    from edge_agent.settings import AgentSettings

    monkeypatch.delenv("OUTPOST_AGENT_PROMPT_LOOKUP", raising=False)
    assert resolve_options(AgentSettings(), {}, "m").prompt_lookup_draft == 0  # off by default
    monkeypatch.setenv("OUTPOST_AGENT_PROMPT_LOOKUP", "true")
    on = AgentSettings()
    assert resolve_options(on, {}, "m").prompt_lookup_draft == on.prompt_lookup_draft == 2
    off_here = {"models": {"m": {"prompt_lookup": False}}}
    assert resolve_options(on, off_here, "m").prompt_lookup_draft == 0
    on_here = {"models": {"m": {"prompt_lookup": True}}}
    assert resolve_options(AgentSettings(prompt_lookup=False), on_here, "m").prompt_lookup_draft
