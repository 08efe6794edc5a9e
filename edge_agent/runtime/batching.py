"""Continuous batching of several generations on one model, with a prompt cache (pure core).

llama-server's design, in-process: the model's context holds ``slots`` KV sequences; a
request takes an idle slot, the one whose sequence shares the longest prefix with its
prompt, and only the rest of the prompt is evaluated. Every decode step puts one token of
each generating slot and a chunk of each slot's remaining prompt into one batch, so a new
request joins between two steps instead of waiting for the others to finish. A bounded
RAM cache keeps the KV state of sequences a slot had to give up, so two conversations that
take turns on a busy model do not re-read their history. A greedy generation decoding
alone may draft (prompt-lookup decoding, ``edge_agent.runtime.prompt_lookup``): the
tokens that followed the last n-gram earlier in its sequence are checked in one batch,
and the prefix the model agrees with is kept.

Nothing here imports llama.cpp: :class:`SequenceBackend` is what the engine needs from a
model (the llama.cpp adapter is ``edge_agent.runtime.llama_batched``), so the scheduling is
unit-tested with a toy backend.
"""

from __future__ import annotations

import codecs
import queue
import threading
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from edge_agent.runtime.backends import TokenLogprob
from edge_agent.runtime.prompt_lookup import propose_draft

Finish = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks of the engine besides its prompt.

    ``sampler`` is opaque here: the backend builds its sampler from it (temperature,
    penalties, grammar...). ``max_tokens`` is already capped to the room the prompt leaves.
    ``draft``: the sampler is deterministic given the logits (greedy), so drafted tokens
    may be checked in one batch (prompt-lookup decoding) without changing what is sampled.
    """

    max_tokens: int
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    sampler: Any = None
    draft: bool = False


@dataclass(frozen=True)
class BatchItem:
    """Tokens of one sequence in a decode batch; ``logits`` marks the last one for sampling
    (``all_logits``: every one, to check a draft)."""

    seq_id: int
    tokens: tuple[int, ...]
    pos0: int
    logits: bool
    all_logits: bool = False


class SequenceBackend(Protocol):
    """A model context with ``slots`` KV sequences, driven from the engine thread only."""

    def decode(self, items: Sequence[BatchItem]) -> None:
        """Evaluate one batch. Raises on failure (the engine fails the requests in it)."""
        ...

    def new_sampler(self, seq_id: int, params: GenerationParams) -> None:
        """Set up sampling for the request now on ``seq_id`` (resets the previous one)."""
        ...

    def sample(self, seq_id: int, batch_index: int, logprobs: int | None) -> Sampled:
        """Pick the next token of ``seq_id`` from the logits of the token at position
        ``batch_index`` of the last batch (a token that asked for logits)."""
        ...

    def truncate(self, seq_id: int, keep: int) -> None:
        """Drop every cached position of ``seq_id`` from ``keep`` on."""
        ...

    def save(self, seq_id: int) -> bytes:
        """The KV state of ``seq_id`` (for the RAM prompt cache)."""
        ...

    def restore(self, seq_id: int, state: bytes) -> bool:
        """Replace ``seq_id``'s KV state with a saved one; False if it did not fit."""
        ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends generation (end of turn / end of text)."""
        ...


@dataclass(frozen=True)
class Sampled:
    token: int
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Event:
    """One step of a request: text (possibly empty) and, last, why it finished.

    ``prompt_evaluated`` (on the last event) is how many prompt tokens this request had
    to evaluate; the rest came from a slot or the RAM cache."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: Finish | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_evaluated: int = 0
    error: BaseException | None = None


# --- pure helpers ----------------------------------------------------------------------


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def choose_slot(
    prompt: Sequence[int], idle: Sequence[tuple[int, Sequence[int], int]], similarity: float = 0.5
) -> int:
    """The idle slot for ``prompt``: ``idle`` is (slot, cached tokens, last used tick).

    The slot sharing the longest prefix wins when that prefix is at least ``similarity``
    of what the slot holds (the prompt continues its conversation, as llama-server's
    slot similarity); otherwise an empty slot, else the least recently used one, so that
    a conversation cached in another slot survives a prompt that merely shares its system
    prompt."""
    if not idle:
        raise ValueError("no idle slot")
    best = max(idle, key=lambda s: (common_prefix(prompt, s[1]), -s[2]))
    shared = common_prefix(prompt, best[1])
    if shared > 0 and shared >= similarity * len(best[1]):
        return best[0]
    return min(idle, key=lambda s: (len(s[1]) > 0, s[2]))[0]


def reusable(prompt: Sequence[int], cached: Sequence[int]) -> int:
    """How many cached tokens a prompt can keep: the common prefix, but at least the last
    prompt token is evaluated again (its logits pick the first generated token)."""
    return min(common_prefix(prompt, cached), len(prompt) - 1)


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    state: bytes


class PrefixCache:
    """A bounded RAM cache of saved sequences, least recently used out first (pure)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: Sequence[int]) -> tuple[tuple[int, ...], bytes, int] | None:
        """The entry sharing the longest prefix with ``prompt`` (tokens, state, shared)."""
        found: _Entry | None = None
        shared = 0
        for entry in self._entries.values():
            n = common_prefix(prompt, entry.tokens)
            if n > shared:
                found, shared = entry, n
        if found is None:
            return None
        self._entries.move_to_end(found.tokens)
        return found.tokens, found.state, shared

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds ``tokens`` (or a longer sequence starting so)."""
        return any(
            len(e.tokens) >= len(tokens) and common_prefix(tokens, e.tokens) == len(tokens)
            for e in self._entries.values()
        )

    def put(self, tokens: Sequence[int], state: bytes) -> bool:
        """Keep ``state``; drops entries it extends and the oldest until it fits."""
        size = len(state)
        if size > self.max_bytes or not tokens:
            return False
        key = tuple(tokens)
        for other in [k for k in self._entries if common_prefix(k, key) == len(k)]:
            self._drop(other)  # a prefix of the new entry: the new one serves it too
        while self._entries and self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = _Entry(key, state)
        self.bytes += size
        return True

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.state)


class StopScanner:
    """Cuts generated text at the first stop string, holding back a possible beginning."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text that is safe to send now, and whether a stop string was reached."""
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return buf[:cut], True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), 0, -1):
                if buf.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


# --- requests and slots ----------------------------------------------------------------


class Request:
    """One generation submitted to the engine; iterate it for its events (any thread)."""

    def __init__(self, prompt: Sequence[int], params: GenerationParams) -> None:
        self.prompt = tuple(prompt)
        self.params = params
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.finished = False

    def cancel(self) -> None:
        """Stop generating (between two decode steps); the slot keeps what it evaluated."""
        self.cancelled.set()

    def emit(self, event: Event) -> None:
        self._events.put(event)

    def events(self) -> Generator[Event, None, None]:
        """Every event up to the finishing one; cancels the request if closed early."""
        try:
            while True:
                event = self._events.get()
                if event.error is not None:
                    raise event.error
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            self.cancel()


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # in the KV sequence, in order
    request: Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    next_token: int | None = None  # sampled, not yet evaluated
    generated: int = 0
    evaluated: int = 0
    chars: int = 0  # characters of generated text decoded so far
    used: int = 0
    decoder: Any = None
    scanner: StopScanner | None = None


@dataclass(frozen=True)
class EngineStats:
    slots: int
    busy_slots: int
    waiting: int
    prompt_tokens: int
    prompt_tokens_evaluated: int
    prompt_tokens_from_cache: int
    ram_cache_entries: int
    ram_cache_bytes: int
    ram_cache_restores: int
    max_batch_sequences: int
    """The most sequences one decode step has held (above 1: requests were batched)."""
    draft_steps: int = 0
    """Decode steps that checked a prompt-lookup draft."""
    drafted_tokens: int = 0
    draft_tokens_accepted: int = 0
    """Drafted tokens the model agreed with (each saved one decode step)."""
    tokens_generated: int = 0
    """Tokens sampled for every request so far (end-of-generation tokens not counted)."""


class BatchEngine:
    """Runs every admitted generation of one model on one thread, decoding them together.

    ``submit`` is thread-safe and returns at once; the request's events arrive as the
    engine produces them. ``n_ctx_seq`` is each sequence's context; ``cache_bytes`` bounds
    the RAM prompt cache (0: none); sequences shorter than ``min_cache_tokens`` are not
    worth saving. ``max_draft`` (0: never) is the longest prompt-lookup draft checked for
    a request that allows drafting, while it is the only one decoding.
    """

    def __init__(
        self,
        backend: SequenceBackend,
        *,
        slots: int,
        n_batch: int,
        n_ctx_seq: int,
        cache_bytes: int = 0,
        min_cache_tokens: int = 32,
        max_draft: int = 0,
        name: str = "model",
    ) -> None:
        if slots < 1 or n_batch < 1:
            raise ValueError("slots and n_batch must be at least 1")
        self._max_draft = max(0, min(max_draft, n_batch - 1))
        self._draft_steps = 0
        self._drafted = 0
        self._accepted = 0
        self._backend = backend
        self._slots = [_Slot(seq_id=i) for i in range(slots)]
        self._n_batch = n_batch
        self._n_ctx_seq = n_ctx_seq
        self._cache = PrefixCache(cache_bytes)
        self._min_cache_tokens = min_cache_tokens
        self._waiting: list[Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._tick = 0
        self._prompt_tokens = 0
        self._evaluated = 0
        self._restores = 0
        self._generated = 0
        self._max_batch = 0
        self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
        self._thread.start()

    # --- client side -------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], params: GenerationParams) -> Request:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self._n_ctx_seq:
            raise ValueError("prompt does not fit the context")
        request = Request(prompt, params)
        with self._cond:
            if self._closed:
                raise RuntimeError("engine closed")
            self._waiting.append(request)
            self._cond.notify()
        return request

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                slots=len(self._slots),
                busy_slots=sum(1 for s in self._slots if s.request is not None),
                waiting=len(self._waiting),
                prompt_tokens=self._prompt_tokens,
                prompt_tokens_evaluated=self._evaluated,
                prompt_tokens_from_cache=self._prompt_tokens - self._evaluated,
                ram_cache_entries=len(self._cache),
                ram_cache_bytes=self._cache.bytes,
                ram_cache_restores=self._restores,
                max_batch_sequences=self._max_batch,
                draft_steps=self._draft_steps,
                drafted_tokens=self._drafted,
                draft_tokens_accepted=self._accepted,
                tokens_generated=self._generated,
            )

    def close(self) -> None:
        """Fail what is left, stop the thread (waits for the step in progress)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # --- engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._busy():
                    self._cond.wait()
                if self._closed:
                    break
                waiting = self._waiting
                self._waiting = []
            leftover = self._admit(waiting)
            with self._cond:
                self._waiting[:0] = leftover
            self._drop_cancelled()
            self._step()
        gone = RuntimeError("the model was unloaded while generating")
        for slot in self._slots:
            if slot.request is not None:
                self._finish(slot, None, error=gone)
        for request in self._waiting:
            request.emit(Event("", error=gone))

    def _busy(self) -> bool:
        return any(s.request is not None for s in self._slots)

    def _admit(self, waiting: list[Request]) -> list[Request]:
        left: list[Request] = []
        for request in waiting:
            if request.cancelled.is_set():
                request.emit(Event("", finish_reason="stop"))
                continue
            idle = [(i, s.tokens, s.used) for i, s in enumerate(self._slots) if s.request is None]
            if not idle:
                left.append(request)
                continue
            self._start(self._slots[choose_slot(request.prompt, idle)], request)
        return left

    def _start(self, slot: _Slot, request: Request) -> None:
        prompt = request.prompt
        keep = reusable(prompt, slot.tokens)
        if len(slot.tokens) - keep >= self._min_cache_tokens:  # a conversation is given up
            self._save(slot)
        hit = self._cache.best(prompt) if self._cache.max_bytes > 0 else None
        if hit is not None and min(hit[2], len(prompt) - 1) > keep:
            tokens, state, _shared = hit
            if self._backend.restore(slot.seq_id, state):
                slot.tokens = list(tokens)
                keep = reusable(prompt, slot.tokens)
                self._restores += 1
        self._backend.truncate(slot.seq_id, keep)
        del slot.tokens[keep:]
        self._backend.new_sampler(slot.seq_id, request.params)
        self._tick += 1
        slot.used = self._tick
        slot.request = request
        slot.pending = list(prompt[keep:])
        slot.next_token = None
        slot.generated = 0
        slot.chars = 0
        slot.evaluated = len(slot.pending)
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.scanner = StopScanner(request.params.stop)
        with self._cond:
            self._prompt_tokens += len(prompt)
            self._evaluated += len(slot.pending)

    def _save(self, slot: _Slot) -> None:
        if (
            self._cache.max_bytes <= 0
            or len(slot.tokens) < self._min_cache_tokens
            or self._cache.covers(slot.tokens)
        ):
            return
        self._cache.put(slot.tokens, self._backend.save(slot.seq_id))

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                self._finish(slot, "stop")

    def _step(self) -> None:
        drafting = self._draft_candidate()
        if drafting is not None:
            self._draft_step(*drafting)
            return
        items: list[tuple[_Slot, BatchItem]] = []
        budget = self._n_batch
        for slot in self._slots:  # one token for every generating slot first
            if slot.request is not None and slot.next_token is not None and budget > 0:
                item = BatchItem(slot.seq_id, (slot.next_token,), len(slot.tokens), True)
                items.append((slot, item))
                budget -= 1
        for slot in sorted(self._slots, key=lambda s: s.used):  # then prompts, oldest first
            if slot.request is None or not slot.pending or budget <= 0:
                continue
            chunk = slot.pending[:budget]
            last = len(chunk) == len(slot.pending)
            items.append((slot, BatchItem(slot.seq_id, tuple(chunk), len(slot.tokens), last)))
            budget -= len(chunk)
        if not items:
            return
        self._max_batch = max(self._max_batch, len(items))
        try:
            self._backend.decode([item for _slot, item in items])
        except Exception as e:  # a failed batch fails its requests, not the engine
            for slot, _item in items:
                if slot.request is not None:
                    self._backend.truncate(slot.seq_id, 0)
                    slot.tokens = []
                    self._finish(slot, None, error=e)
            return
        position = 0  # of the item's first token in the batch
        for slot, item in items:
            slot.tokens.extend(item.tokens)
            if slot.pending:  # a prompt chunk (a generating slot has nothing pending)
                del slot.pending[: len(item.tokens)]
            position += len(item.tokens)
            if item.logits:
                self._sampled(slot, position - 1)

    def _draft_candidate(self) -> tuple[_Slot, tuple[int, ...]] | None:
        """The slot and its draft when one greedy generation decodes alone (with several
        in flight, their batch already keeps the cores busy)."""
        if self._max_draft <= 0:
            return None
        busy = [s for s in self._slots if s.request is not None]
        if len(busy) != 1:
            return None
        slot = busy[0]
        request = slot.request
        if request is None or slot.next_token is None or slot.pending or not request.params.draft:
            return None
        room = min(
            self._max_draft,
            request.params.max_tokens - slot.generated - 1,  # the last one is the model's own
            self._n_ctx_seq - len(slot.tokens) - 1,
        )
        if room <= 0:
            return None
        draft = propose_draft([*slot.tokens, slot.next_token], room)
        return (slot, draft) if draft else None

    def _draft_step(self, slot: _Slot, draft: tuple[int, ...]) -> None:
        """Evaluate the sampled token and the draft in one batch, then sample each position
        in turn while the sampled token is the drafted one: every token sampled is the
        one decoding token by token would have sampled from these logits. The KV cells of
        the rejected rest are removed."""
        assert slot.next_token is not None
        tokens = (slot.next_token, *draft)
        item = BatchItem(slot.seq_id, tokens, len(slot.tokens), True, all_logits=True)
        try:
            self._backend.decode([item])
        except Exception as e:
            self._backend.truncate(slot.seq_id, 0)
            slot.tokens = []
            self._finish(slot, None, error=e)
            return
        accepted = 0
        slot.tokens.append(tokens[0])
        for index in range(len(tokens)):
            token = self._sampled(slot, index)
            if token is None or index == len(draft) or token != draft[index]:
                break
            slot.tokens.append(token)
            accepted += 1
        self._backend.truncate(slot.seq_id, len(slot.tokens))
        with self._cond:
            self._draft_steps += 1
            self._drafted += len(draft)
            self._accepted += accepted

    def _sampled(self, slot: _Slot, index: int) -> int | None:
        """Sample the token after the one at ``index`` of the last batch and pass it on;
        the token if the generation goes on, None if it finished."""
        request = slot.request
        assert request is not None and slot.scanner is not None
        params = request.params
        got = self._backend.sample(slot.seq_id, index, params.logprobs)
        if self._backend.is_end(got.token):
            self._finish(slot, "stop", flush=True)
            return None
        slot.generated += 1
        self._generated += 1
        decoded = slot.decoder.decode(self._backend.token_bytes(got.token))
        logprobs = () if got.logprob is None else (replace(got.logprob, offset=slot.chars),)
        slot.chars += len(decoded)
        text, stopped = slot.scanner.feed(decoded)
        if stopped:
            self._finish(slot, "stop", text=text, logprobs=logprobs)
            return None
        full = len(slot.tokens) >= self._n_ctx_seq  # no position left for this token
        if slot.generated >= params.max_tokens or full:
            self._finish(slot, "length", text=text, logprobs=logprobs, flush=True)
            return None
        slot.next_token = got.token
        if text or logprobs:
            request.emit(Event(text, logprobs))
        return got.token

    def _finish(
        self,
        slot: _Slot,
        reason: Finish | None,
        *,
        text: str = "",
        logprobs: tuple[TokenLogprob, ...] = (),
        error: BaseException | None = None,
        flush: bool = False,
    ) -> None:
        request = slot.request
        assert request is not None
        if error is None:
            if flush and slot.scanner is not None:  # what was held back is no stop string
                tail, _stopped = slot.scanner.feed(slot.decoder.decode(b"", final=True))
                text += tail + slot.scanner.flush()
            request.emit(
                Event(
                    text,
                    logprobs,
                    finish_reason=reason or "stop",
                    prompt_tokens=len(request.prompt),
                    completion_tokens=slot.generated,
                    prompt_evaluated=slot.evaluated,
                )
            )
        else:
            request.emit(Event("", error=error))
        request.finished = True
        if slot.pending:  # cancelled mid-prompt: the KV holds what was evaluated
            slot.pending = []
        slot.request = None
        slot.next_token = None
        slot.scanner = None
        slot.decoder = None
