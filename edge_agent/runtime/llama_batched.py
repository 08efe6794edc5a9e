"""The batched llama.cpp text generator: several generations at once on one model.

A thin adapter: :class:`LlamaSequences` gives :class:`~edge_agent.runtime.batching.
BatchEngine` a llama.cpp context with one KV sequence per slot (llama.cpp's low-level API
through llama-cpp-python); :class:`BatchedLlama` is a ``Llama`` whose ``create_completion``
(where every chat handler of llama-cpp-python ends, with the formatted prompt) hands the
prompt to the engine. Chat templates, tool formatting and stop strings therefore stay
exactly those of the single-sequence path; only the evaluation and sampling move here.
"""

from __future__ import annotations

import ctypes
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from edge_agent.errors import AgentError
from edge_agent.release import InstalledArtifact
from edge_agent.runtime.backends import ModelOptions, Sampling, TextPiece, TokenLogprob
from edge_agent.runtime.batching import (
    BatchEngine,
    BatchItem,
    EngineStats,
    Event,
    GenerationParams,
    Request,
    Sampled,
)
from edge_agent.runtime.llama import LlamaTextGenerator, _GuardedLlama, capped_max_tokens
from edge_agent.runtime.llama_structured import make_grammar

# the Llama object itself only tokenizes and formats chats: its own context is this small
_FORMATTER_CTX = 64


@dataclass(frozen=True)
class SamplerSpec:
    """llama-cpp-python's sampling arguments, built into the same sampler chain."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None
    grammar_root: str = "root"
    penalty_last_n: int = 64


class SamplerChain:
    """A llama.cpp sampler chain (freed by ``close``); the engine thread samples with it."""

    def __init__(self) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        self.pointer: Any = llama_cpp.llama_sampler_chain_init(params)

    def add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self.pointer, sampler)

    def close(self) -> None:
        if self.pointer is not None:
            llama_cpp.llama_sampler_free(self.pointer)  # frees the samplers it holds
            self.pointer = None

    def __del__(self) -> None:
        self.close()


def build_sampler(spec: SamplerSpec, model: Any, n_vocab: int) -> SamplerChain:
    """The chain llama-cpp-python's ``Llama._init_sampler`` builds, in the same order.

    Raises AgentError when llama.cpp cannot parse the grammar (before anything is queued)."""
    chain = SamplerChain()
    chain.add(
        llama_cpp.llama_sampler_init_penalties(
            n_vocab,
            spec.penalty_last_n,
            spec.repeat_penalty,
            spec.frequency_penalty,
            spec.presence_penalty,
        )
    )
    if spec.grammar is not None:
        grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, spec.grammar.encode("utf-8"), spec.grammar_root.encode("utf-8")
        )
        if not grammar:
            chain.close()
            raise AgentError("llama.cpp could not parse the output grammar (GBNF)")
        chain.add(grammar)
    seed = llama_cpp.LLAMA_DEFAULT_SEED if spec.seed is None else spec.seed & 0xFFFFFFFF
    if spec.temperature < 0:
        chain.add(llama_cpp.llama_sampler_init_dist(seed))
    elif spec.temperature == 0:
        chain.add(llama_cpp.llama_sampler_init_greedy())
    else:
        chain.add(llama_cpp.llama_sampler_init_top_k(spec.top_k))
        chain.add(llama_cpp.llama_sampler_init_typical(spec.typical_p, 1))
        chain.add(llama_cpp.llama_sampler_init_top_p(spec.top_p, 1))
        chain.add(llama_cpp.llama_sampler_init_min_p(spec.min_p, 1))
        chain.add(llama_cpp.llama_sampler_init_temp(spec.temperature))
        chain.add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


def log_softmax(logits: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, Any]:
    """In float32 as ``llama_structured.LogprobRecorder`` computes it (same numbers)."""
    shifted = np.asarray(logits, dtype=np.float32) - logits.max()
    result: np.ndarray[Any, Any] = shifted - np.log(np.exp(shifted).sum())
    return result


class LlamaSequences:
    """A llama.cpp context with ``slots`` KV sequences of ``n_ctx_seq`` tokens each
    (one KV stream per sequence, so a sequence's attention never sees another's cells),
    made with ``base``'s parameters otherwise (the Llama's own, for the same numerics)."""

    def __init__(
        self,
        model: Any,
        base: llama_cpp.llama_context_params,
        *,
        slots: int,
        n_ctx_seq: int,
        n_batch: int,
        n_threads: int,
        n_threads_batch: int,
    ) -> None:
        params = llama_cpp.llama_context_params()
        ctypes.pointer(params)[0] = base  # a copy: rope, attention and KV types as the Llama's
        params.n_ctx = n_ctx_seq * slots
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.no_perf = True
        self._model = model
        self._ctx: Any = internals.LlamaContext(model=model, params=params, verbose=False)
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx))
        self.n_batch = n_batch
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._samplers: dict[int, SamplerChain] = {}
        self._threads, self._batch_threads = n_threads, n_threads_batch
        self._current_threads = n_threads_batch
        self._piece = ctypes.create_string_buffer(256)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def decode(self, items: Sequence[BatchItem]) -> None:
        batch = self._batch
        n = 0
        for item in items:
            last = len(item.tokens) - 1
            for j, token in enumerate(item.tokens):
                batch.token[n] = token
                batch.pos[n] = item.pos0 + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = item.seq_id
                batch.logits[n] = 1 if item.logits and (j == last or item.all_logits) else 0
                n += 1
        batch.n_tokens = n
        # llama.cpp reads a batch of more than one token with n_threads_batch (a checked
        # draft too: its tokens' matrix work is a prompt's); a step that only decodes (one
        # token per sequence) keeps the decode threads, as one stream does
        threads = self._threads if all(len(i.tokens) == 1 for i in items) else self._batch_threads
        if threads != self._current_threads:
            llama_cpp.llama_set_n_threads(self._ctx.ctx, self._threads, threads)
            self._current_threads = threads
        rc = int(llama_cpp.llama_decode(self._ctx.ctx, batch))
        if rc != 0:
            raise RuntimeError(f"llama_decode failed (code {rc}) on a batch of {n} tokens")

    def new_sampler(self, seq_id: int, params: GenerationParams) -> None:
        old = self._samplers.pop(seq_id, None)
        if old is not None:
            old.close()
        if isinstance(params.sampler, SamplerChain):
            self._samplers[seq_id] = params.sampler

    def sample(self, seq_id: int, batch_index: int, logprobs: int | None) -> Sampled:
        sampler = self._samplers[seq_id]
        token = int(llama_cpp.llama_sampler_sample(sampler.pointer, self._ctx.ctx, batch_index))
        if logprobs is None:
            return Sampled(token)
        raw = llama_cpp.llama_get_logits_ith(self._ctx.ctx, batch_index)
        logits = np.ctypeslib.as_array(raw, shape=(self._n_vocab,))
        lp = log_softmax(logits)
        top: tuple[tuple[str, float], ...] = ()
        if logprobs > 0:
            k = min(logprobs, self._n_vocab)
            ids = np.argpartition(-lp, k - 1)[:k]
            ids = ids[np.argsort(-lp[ids])]
            top = tuple((self._special_text(int(i)), float(lp[i])) for i in ids)
        own = self.token_bytes(token)
        entry = TokenLogprob(
            own.decode("utf-8", errors="replace"), float(lp[token]), top, token_bytes=own
        )
        return Sampled(token, entry)

    def _special_text(self, token: int) -> str:
        n = int(llama_cpp.llama_token_to_piece(self._model.vocab, token, self._piece, 256, 0, True))
        return self._piece.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def truncate(self, seq_id: int, keep: int) -> None:
        memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        llama_cpp.llama_memory_seq_rm(memory, seq_id, keep, -1)

    def save(self, seq_id: int) -> bytes:
        ctx = self._ctx.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, seq_id))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq_id))
        return ctypes.string_at(buffer, written)

    def restore(self, seq_id: int, state: bytes) -> bool:
        self.truncate(seq_id, 0)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        read = int(llama_cpp.llama_state_seq_set_data(self._ctx.ctx, buffer, len(state), seq_id))
        if read == 0:
            self.truncate(seq_id, 0)
        return read > 0

    def token_bytes(self, token: int) -> bytes:
        n = int(
            llama_cpp.llama_token_to_piece(self._model.vocab, token, self._piece, 256, 0, False)
        )
        return self._piece.raw[: max(n, 0)]

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()


class BatchedLlama(_GuardedLlama):
    """A Llama whose completions run on a :class:`BatchEngine` (thread-safe)."""

    def __init__(self, *, engine_options: ModelOptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()
        options = engine_options
        self.sequences = LlamaSequences(
            self._model,
            self.context_params,
            slots=options.n_parallel,
            n_ctx_seq=options.n_ctx,
            n_batch=options.n_batch,
            n_threads=options.n_threads,
            n_threads_batch=options.batch_threads,
        )
        self._n_ctx_seq = min(self.sequences.n_ctx_seq, options.n_ctx)
        self.engine = BatchEngine(
            self.sequences,
            slots=options.n_parallel,
            n_batch=options.n_batch,
            n_ctx_seq=self._n_ctx_seq,
            cache_bytes=options.prompt_cache_mb << 20,
            max_draft=options.prompt_lookup_draft,
            name=str(kwargs.get("model_path", "model")),
        )

    @property
    def usable_context(self) -> int:
        return self._n_ctx_seq

    @property
    def last_prompt_tokens(self) -> int:
        return int(getattr(self._local, "prompt_tokens", 0))

    @last_prompt_tokens.setter
    def last_prompt_tokens(self, value: int) -> None:
        self._local.prompt_tokens = value

    def create_completion(self, prompt: str | list[int], *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("BatchedLlama.create_completion takes keyword arguments only")
        tokens = (
            self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            if isinstance(prompt, str)
            else list(prompt)
        )
        max_tokens = capped_max_tokens(
            self.served_name, len(tokens), self.usable_context, kwargs.get("max_tokens", 16)
        )
        self.last_prompt_tokens = len(tokens)
        stop = kwargs.get("stop") or []
        grammar = kwargs.get("grammar")
        spec = SamplerSpec(
            temperature=float(kwargs.get("temperature", 0.8)),
            top_k=int(kwargs.get("top_k", 40)),
            top_p=float(kwargs.get("top_p", 0.95)),
            min_p=float(kwargs.get("min_p", 0.05)),
            typical_p=float(kwargs.get("typical_p", 1.0)),
            repeat_penalty=float(kwargs.get("repeat_penalty", 1.0)),
            frequency_penalty=float(kwargs.get("frequency_penalty", 0.0)),
            presence_penalty=float(kwargs.get("presence_penalty", 0.0)),
            seed=kwargs.get("seed"),
            grammar=None if grammar is None else str(grammar._grammar),
        )
        request = self.submit(
            tokens, spec, max_tokens, (stop,) if isinstance(stop, str) else tuple(stop), None
        )
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        model = str(kwargs.get("model") or self.model_path)
        chunks = _chunks(request.events(), ident, created, model)
        if kwargs.get("stream"):
            return chunks
        return _whole(chunks, ident, created, model)

    def submit(
        self,
        tokens: Sequence[int],
        spec: SamplerSpec,
        max_tokens: int,
        stop: tuple[str, ...],
        logprobs: int | None,
    ) -> Request:
        """Queue one generation on the engine (thread-safe); its sampler is built here,
        so a grammar that does not parse fails before anything is queued."""
        spec = replace(spec, penalty_last_n=self.last_n_tokens_size)
        sampler = build_sampler(spec, self._model, self.sequences.n_vocab)
        # greedy without a grammar: the token sampled at a position depends on its logits
        # and the tokens before it only, so a checked draft samples what decoding would
        draft = spec.temperature == 0 and spec.grammar is None
        params = GenerationParams(max_tokens, stop, logprobs, sampler, draft=draft)
        return self.engine.submit(tokens, params)

    def engine_stats(self) -> EngineStats:
        return self.engine.stats()

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
            self.sequences.close()
            del self.engine
        super().close()


def _chunks(events: Iterator[Event], ident: str, created: int, model: str) -> Iterator[Any]:
    """The engine's events as llama-cpp-python's streamed completion chunks (what its
    chat handlers turn into chat chunks). As there, the finishing chunk has no text (the
    handlers drop it): the last text goes in a chunk of its own before it."""

    def chunk(text: str, reason: str | None, **extra: Any) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}
        head = {"id": ident, "object": "text_completion", "created": created, "model": model}
        return {**head, "choices": [choice], **extra}

    try:
        for event in events:
            if event.finish_reason is None:
                yield chunk(event.text, None)
                continue
            if event.text:
                yield chunk(event.text, None)
            usage = {
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "total_tokens": event.prompt_tokens + event.completion_tokens,
            }
            yield chunk("", event.finish_reason, usage=usage)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _whole(chunks: Iterator[Any], ident: str, created: int, model: str) -> Any:
    texts: list[str] = []
    reason, usage = "stop", None
    for chunk in chunks:
        choice = chunk["choices"][0]
        texts.append(choice["text"])
        if choice["finish_reason"] is not None:
            reason, usage = choice["finish_reason"], chunk.get("usage")
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"text": "".join(texts), "index": 0, "logprobs": None, "finish_reason": reason}
        ],
        "usage": usage,
    }


class BatchedTextGenerator(LlamaTextGenerator):
    """Kind ``llm`` on the batched engine: ``parallel`` generations at once (thread-safe)."""

    @classmethod
    def load(cls, artifact: InstalledArtifact, options: ModelOptions) -> BatchedTextGenerator:
        generator = cls._load_with(
            artifact,
            options,
            BatchedLlama,
            n_ctx=_FORMATTER_CTX,
            n_batch=_FORMATTER_CTX,
            engine_options=options,
        )
        assert isinstance(generator, BatchedTextGenerator)
        return generator

    @property
    def parallel(self) -> int:
        """How many generations the registry may run on this model at once."""
        return self._batched.engine.stats().slots

    @property
    def _batched(self) -> BatchedLlama:
        llama = self._llama
        assert isinstance(llama, BatchedLlama)
        return llama

    def engine_stats(self) -> EngineStats:
        return self._batched.engine_stats()

    def generate_from(
        self,
        tokens: list[int],
        sampling: Sampling,
        stop: Sequence[str],
        stopping_criteria: Any,
        sampler: Mapping[str, Any],
    ) -> Iterator[TextPiece]:
        """The structured path (grammar, logprobs, tools) on the engine: the sampler
        settings the chat handler chose, the request's grammar in the slot's sampler
        chain, log probabilities from the slot's logits. The handler's stopping criteria
        are its end-of-turn tokens, which the engine ends on already."""
        llama = self._batched
        max_tokens = capped_max_tokens(
            self._name, len(tokens), llama.usable_context, sampling.max_tokens
        )
        llama.last_prompt_tokens = len(tokens)
        if sampling.grammar is not None:
            make_grammar(llama, sampling.grammar)  # refuses a grammar llama.cpp cannot parse
        spec = SamplerSpec(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            grammar=sampling.grammar,
            top_k=int(sampler.get("top_k", 40)),
            min_p=float(sampler.get("min_p", 0.05)),
            typical_p=float(sampler.get("typical_p", 1.0)),
            repeat_penalty=float(sampler.get("repeat_penalty", 1.0)),
        )
        request = llama.submit(tokens, spec, max_tokens, tuple(stop), sampling.logprobs)
        return _pieces(request.events())


def _pieces(events: Iterator[Event]) -> Iterator[TextPiece]:
    try:
        for event in events:
            if event.finish_reason is None:
                yield TextPiece(event.text, logprobs=event.logprobs)
            else:
                yield TextPiece(
                    event.text,
                    finish_reason=event.finish_reason,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    logprobs=event.logprobs,
                )
                return
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
