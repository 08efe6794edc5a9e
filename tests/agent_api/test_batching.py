"""The batching engine and prompt cache on a toy backend (pure scheduling, no llama.cpp).

The toy model is deterministic: the next token is a function of the whole sequence so
far (a hash of the KV positions of that sequence), so a wrong KV state (a reused prefix
that is not really the prompt's, a restore into the wrong sequence) changes the output.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import pytest

from edge_agent.runtime.batching import (
    BatchEngine,
    BatchItem,
    Event,
    GenerationParams,
    PrefixCache,
    Sampled,
    StopScanner,
    choose_slot,
    common_prefix,
    reusable,
)
from tests.agent_api.toy_kv import END, ToyKV

VOCAB = 50


def _next(tokens: Sequence[int]) -> int:
    h = 7
    for t in tokens:
        h = (h * 31 + t) % 1_000_003
    return 1 + h % (VOCAB - 1)  # never END unless told


class ToyBackend(ToyKV):
    """Each sequence's "KV" is the list of tokens at positions 0..n-1."""

    def __init__(self, slots: int, end_after: int | None = None) -> None:
        super().__init__(slots)
        self.batches: list[list[BatchItem]] = []
        self._logits: list[list[int]] = []
        self.end_after = end_after
        self.block = threading.Event()
        self.block.set()
        self.gate: threading.Semaphore | None = None  # set: one release per decode step
        self.decoded = threading.Semaphore(0)

    def decode(self, items: Sequence[BatchItem]) -> None:
        self.block.wait()
        if self.gate is not None:
            self.gate.acquire()
        self.batches.append(list(items))
        self._logits = []
        for item in items:
            kv = self.kv[item.seq_id]
            assert item.pos0 == len(kv), "positions must continue the sequence"
            kv.extend(item.tokens)
            if item.logits:
                self._logits.append(list(kv))
        self.decoded.release()

    def sample(self, seq_id: int, batch_index: int, logprobs: int | None) -> Sampled:
        flat = [(i, j == len(i.tokens) - 1) for i in self.batches[-1] for j in range(len(i.tokens))]
        item, is_last = flat[batch_index]  # the position of a token that asked for logits
        assert item.seq_id == seq_id and is_last and item.logits
        seen = self._logits.pop(0)
        assert seen == self.kv[seq_id]
        if self.end_after is not None and len(seen) >= self.end_after:
            return Sampled(END)
        return Sampled(_next(seen))


def reference(prompt: Sequence[int], n: int) -> str:
    """What one sequence alone generates: the toy model run greedily."""
    seq, out = list(prompt), []
    for _ in range(n):
        t = _next(seq)
        out.append(f"<{t}>")
        seq.append(t)
    return "".join(out)


def collect(events: Iterable[Event]) -> tuple[str, Event]:
    parts, last = [], None
    for event in events:
        parts.append(event.text)
        last = event
    assert last is not None and last.finish_reason is not None
    return "".join(parts), last


def engine(backend: ToyBackend, slots: int, **kw: object) -> BatchEngine:
    return BatchEngine(backend, slots=slots, n_batch=16, n_ctx_seq=256, **kw)  # type: ignore[arg-type]


def test_concurrent_requests_match_one_at_a_time_and_share_batches() -> None:
    backend = ToyBackend(4)
    backend.block.clear()  # hold the first step so that all four join
    eng = engine(backend, 4)
    prompts = [[i + 1] * (5 + 7 * i) for i in range(4)]
    requests = [eng.submit(p, GenerationParams(max_tokens=6)) for p in prompts]
    backend.block.set()
    try:
        for prompt, request in zip(prompts, requests, strict=True):
            text, last = collect(request.events())
            assert text == reference(prompt, 6)
            assert last.finish_reason == "length" and last.completion_tokens == 6
        assert max(len(b) for b in backend.batches) == 4  # decoded together
        assert eng.stats().max_batch_sequences == 4
        assert eng.stats().tokens_generated == 4 * 6
        assert all(sum(len(i.tokens) for i in b) <= 16 for b in backend.batches)
    finally:
        eng.close()


def test_new_request_joins_between_steps() -> None:
    backend = ToyBackend(2)
    backend.gate = threading.Semaphore(0)
    eng = engine(backend, 2)
    try:
        long = eng.submit([3] * 4, GenerationParams(max_tokens=40))
        for _ in range(3):  # the long one's prompt and two generated tokens
            backend.gate.release()
            backend.decoded.acquire()
        short = eng.submit([9] * 4, GenerationParams(max_tokens=2))
        backend.gate.release(1000)
        text, _ = collect(short.events())
        assert text == reference([9] * 4, 2)
        rest, last = collect(long.events())
        assert rest == reference([3] * 4, 40) and last.completion_tokens == 40
        joined = [b for b in backend.batches if {i.seq_id for i in b} == {0, 1}]
        assert joined, "the short request never shared a batch with the long one"
        assert len(joined[0][1].tokens) == 4 and len(joined[0][0].tokens) == 1
    finally:
        eng.close()


def test_second_turn_reuses_the_slot_prefix() -> None:
    backend = ToyBackend(1)
    eng = engine(backend, 1)
    try:
        turn1 = list(range(1, 41))
        _text, last = collect(eng.submit(turn1, GenerationParams(max_tokens=3)).events())
        assert last.prompt_evaluated == 40
        turn2 = [*turn1, 7, 8, 9]
        text2, last2 = collect(eng.submit(turn2, GenerationParams(max_tokens=3)).events())
        assert last2.prompt_evaluated == 3  # only the new tokens
        assert text2 == reference(turn2, 3)
        same, last3 = collect(eng.submit(turn2, GenerationParams(max_tokens=3)).events())
        assert last3.prompt_evaluated == 1 and same == text2  # the last token is re-read
        stats = eng.stats()
        assert stats.prompt_tokens == 40 + 43 + 43
        assert stats.prompt_tokens_evaluated == 44
    finally:
        eng.close()


def test_interleaved_conversations_restore_from_the_ram_cache() -> None:
    backend = ToyBackend(1)
    eng = engine(backend, 1, cache_bytes=10_000, min_cache_tokens=8)
    try:
        a, b = [5] * 30, [6] * 30
        collect(eng.submit(a, GenerationParams(max_tokens=2)).events())
        collect(eng.submit(b, GenerationParams(max_tokens=2)).events())  # saves a's state
        a2 = [*a, 1, 2]
        text, last = collect(eng.submit(a2, GenerationParams(max_tokens=4)).events())
        assert last.prompt_evaluated == 2 and text == reference(a2, 4)
        b2 = [*b, 3, 4]
        text, last = collect(eng.submit(b2, GenerationParams(max_tokens=4)).events())
        assert last.prompt_evaluated == 2 and text == reference(b2, 4)
        assert eng.stats().ram_cache_restores == 2
    finally:
        eng.close()


def test_without_the_ram_cache_interleaving_rereads_history() -> None:
    backend = ToyBackend(1)
    eng = engine(backend, 1, cache_bytes=0)
    try:
        a, b = [5] * 30, [6] * 30
        collect(eng.submit(a, GenerationParams(max_tokens=2)).events())
        collect(eng.submit(b, GenerationParams(max_tokens=2)).events())
        _, last = collect(eng.submit([*a, 1, 2], GenerationParams(max_tokens=2)).events())
        assert last.prompt_evaluated == 32
    finally:
        eng.close()


def test_cancel_frees_the_slot_for_the_next_request() -> None:
    backend = ToyBackend(1)
    backend.gate = threading.Semaphore(0)
    eng = engine(backend, 1)
    try:
        first = eng.submit([2] * 5, GenerationParams(max_tokens=10_000))
        events = first.events()
        backend.gate.release(2)
        next(events)
        events.close()  # the client went away: closing the events cancels
        second = eng.submit([4] * 5, GenerationParams(max_tokens=3))
        steps = 0
        while not second.finished and steps < 20:  # one decode step at a time
            backend.gate.release()
            if not backend.decoded.acquire(timeout=10):  # no step left to run: it finished
                break
            steps += 1
        assert second.finished, "the cancelled request kept the only slot"
        text, _ = collect(second.events())
        assert text == reference([4] * 5, 3)
        assert first.finished
    finally:
        backend.gate.release(1000)
        eng.close()


def test_end_token_and_stop_strings_finish_with_stop() -> None:
    backend = ToyBackend(1, end_after=8)
    eng = engine(backend, 1)
    try:
        text, last = collect(eng.submit([1] * 5, GenerationParams(max_tokens=50)).events())
        assert last.finish_reason == "stop" and last.completion_tokens == 3
        assert text == reference([1] * 5, 3)
        want = reference([1] * 5, 3)
        stop_at = want[: want.index(">") + 1]  # the first token's text
        text, last = collect(
            eng.submit([1] * 5, GenerationParams(max_tokens=50, stop=(stop_at[1:],))).events()
        )
        assert text == "<" and last.finish_reason == "stop"
    finally:
        eng.close()


def test_context_full_finishes_with_length() -> None:
    backend = ToyBackend(1)
    eng = BatchEngine(backend, slots=1, n_batch=8, n_ctx_seq=12)
    try:
        _, last = collect(eng.submit([1] * 10, GenerationParams(max_tokens=100)).events())
        assert last.finish_reason == "length" and last.completion_tokens == 3
        with pytest.raises(ValueError):
            eng.submit([1] * 12, GenerationParams(max_tokens=1))
    finally:
        eng.close()


def test_a_failed_decode_fails_its_requests_not_the_engine() -> None:
    class Failing(ToyBackend):
        fail = True

        def decode(self, items: Sequence[BatchItem]) -> None:
            if self.fail:
                self.fail = False
                raise RuntimeError("decode failed")
            super().decode(items)

    backend = Failing(1)
    eng = engine(backend, 1)
    try:
        with pytest.raises(RuntimeError, match="decode failed"):
            collect(eng.submit([1] * 4, GenerationParams(max_tokens=2)).events())
        text, _ = collect(eng.submit([1] * 4, GenerationParams(max_tokens=2)).events())
        assert text == reference([1] * 4, 2)
    finally:
        eng.close()


def test_pure_helpers() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert reusable([1, 2, 3], [1, 2, 3, 4]) == 2  # the last prompt token is re-read
    # longest shared prefix wins; with none, the least recently used slot
    assert choose_slot([1, 2, 3], [(0, [1], 5), (1, [1, 2], 9), (2, [], 1)]) == 1
    assert choose_slot([7], [(0, [1], 5), (1, [1, 2], 9), (2, [3], 1)]) == 2
    # sharing only a system prompt with a longer cached conversation: an empty slot
    assert choose_slot([1, 9, 9], [(0, [1, 2, 3, 4], 5), (1, [], 9)]) == 1
    cache = PrefixCache(10)
    assert cache.put([1, 2], b"abcd") and cache.put([1, 2, 3], b"abcdef")
    assert len(cache) == 1  # the longer entry replaced its prefix
    assert cache.put([9], b"xyzwv") and len(cache) == 1 and cache.bytes == 5  # oldest out
    assert not cache.put([8], b"x" * 11)
    scanner = StopScanner(["</s>"])
    assert scanner.feed("ab</") == ("ab", False)
    assert scanner.feed("s>cd") == ("", True)
    scanner = StopScanner(["</s>"])
    assert scanner.feed("a<") == ("a", False) and scanner.feed("b") == ("<b", False)
