"""llama.cpp backends (llama-cpp-python) for artifact kinds ``llm`` and ``embedding``.

Each backend wraps one ``llama_cpp.Llama``; the registry guarantees that only one thread
at a time calls it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import llama_chat_format
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from edge_agent.errors import BadRequestError, ConfigError, ContextOverflowError
from edge_agent.release import InstalledArtifact
from edge_agent.runtime.backends import (
    ChatTurn,
    Embeddings,
    FinishReason,
    ModelOptions,
    Sampling,
    TextPiece,
)
from edge_agent.runtime.llama_structured import (
    completion_sampler,
    format_chat,
    generate_pieces,
    template_takes_tools,
)

# llama-cpp-python silences a model load by pointing file descriptors 1 and 2 at
# /dev/null and restoring them afterwards. That is process-wide state: two loads in
# different threads can interleave and leave stdout/stderr on /dev/null for good (the
# agent's logs then vanish). Every Llama construction in this process takes this lock.
NATIVE_LOAD_LOCK = threading.Lock()


def construct_llama(cls: type[Any], **kwargs: Any) -> Any:
    """``cls(**kwargs, verbose=False)`` under :data:`NATIVE_LOAD_LOCK`."""
    with NATIVE_LOAD_LOCK:
        return cls(verbose=False, **kwargs)


_POOLING = {
    "model": llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    "none": llama_cpp.LLAMA_POOLING_TYPE_NONE,
}


class _GuardedLlama(llama_cpp.Llama):
    """A Llama that refuses prompts longer than its context before generating.

    Every generation path of llama-cpp-python (plain completion and every chat handler)
    ends in ``create_completion`` with the final prompt, so the check sits there. The
    usable context is the smaller of what was asked for and what llama.cpp allocated
    (llama.cpp pads the context, llama-cpp-python's token buffer keeps the asked size).
    """

    served_name: str = ""
    last_prompt_tokens: int = 0
    chat_template_source: str | None = None
    """The Jinja chat template the chat handler renders (release override or the GGUF's
    own); None for a named chat_format. Tools need a template that reads ``tools``."""

    @property
    def usable_context(self) -> int:
        return min(int(self.n_ctx()), int(self.input_ids.shape[0]))

    def create_completion(self, prompt: str | list[int], *args: Any, **kwargs: Any) -> Any:
        if isinstance(prompt, str):
            n_prompt = len(self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        else:
            n_prompt = len(prompt)
        kwargs["max_tokens"] = capped_max_tokens(
            self.served_name, n_prompt, self.usable_context, kwargs.get("max_tokens")
        )
        self.last_prompt_tokens = n_prompt
        return super().create_completion(prompt, *args, **kwargs)


def capped_max_tokens(name: str, n_prompt: int, n_ctx: int, max_tokens: int | None) -> int:
    """How many tokens a prompt of ``n_prompt`` tokens may generate in a context of
    ``n_ctx`` (at most ``max_tokens``; None or <= 0: the whole room). Raises
    BadRequestError (empty prompt) or ContextOverflowError (no room) naming the model."""
    if n_prompt == 0:  # llama.cpp asserts on an empty batch and takes the process down
        raise BadRequestError(f"the prompt for model {name!r} is empty (0 tokens); send some text")
    if n_prompt >= n_ctx:
        raise ContextOverflowError(
            f"the prompt is {n_prompt} tokens but model {name!r} has a "
            f"context of {n_ctx} tokens (the prompt must leave room for at least one "
            f"generated token); shorten the prompt or messages"
        )
    room = n_ctx - n_prompt
    return room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)


def _finish_reason(value: object) -> FinishReason:
    return "length" if value == "length" else "stop"


class LlamaTextGenerator:
    """Backend for kind ``llm``: chat and completion on a GGUF model."""

    def __init__(self, name: str, llama: _GuardedLlama) -> None:
        self._name = name
        self._llama = llama

    @classmethod
    def load(cls, artifact: InstalledArtifact, options: ModelOptions) -> LlamaTextGenerator:
        return cls._load_with(artifact, options, _GuardedLlama)

    @classmethod
    def _load_with(
        cls,
        artifact: InstalledArtifact,
        options: ModelOptions,
        llama_class: type[_GuardedLlama],
        **construct: Any,
    ) -> LlamaTextGenerator:
        """``load`` with another Llama class; ``construct`` overrides its arguments."""
        if options.chat_format is not None:
            try:
                llama_chat_format.get_chat_completion_handler(options.chat_format)
            except llama_chat_format.LlamaChatCompletionHandlerNotFoundException as e:
                raise ConfigError(
                    f"model {artifact.name!r}: unknown chat_format {options.chat_format!r} "
                    f"(use a llama.cpp chat format name such as 'chatml', or chat_template)"
                ) from e
        try:
            arguments: dict[str, Any] = {
                "model_path": str(artifact.path),
                "n_ctx": options.n_ctx,
                "n_batch": options.n_batch,
                "n_threads": options.n_threads,
                "n_threads_batch": options.batch_threads,
                "chat_format": options.chat_format,
            }
            llama = construct_llama(llama_class, **{**arguments, **construct})
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"cannot load model {artifact.name!r} from {artifact.path}: {e}"
            ) from e
        llama.served_name = artifact.name
        llama.chat_template_source = options.chat_template or (
            llama.metadata.get("tokenizer.chat_template") if options.chat_format is None else None
        )
        if options.chat_template is not None:
            try:
                llama.chat_handler = _template_handler(options.chat_template, llama, artifact.name)
            except ConfigError:
                llama.close()
                raise
        return cls(artifact.name, llama)

    @property
    def context_length(self) -> int:
        return self._llama.usable_context

    def chat(
        self,
        turns: Sequence[ChatTurn],
        sampling: Sampling,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Iterator[TextPiece]:
        if tools is not None or sampling.grammar is not None or sampling.logprobs is not None:
            return self._structured_chat(turns, sampling, tools)
        messages: list[Any] = [
            {"role": "system" if t.role == "developer" else t.role, "content": t.content}
            for t in turns
        ]
        try:
            chunks = self._llama.create_chat_completion(
                messages=messages, stream=True, **_sampling_kwargs(sampling)
            )
        except (ValueError, TypeError) as e:  # the chat template refused the messages
            raise BadRequestError(f"model {self._name!r} cannot format these messages: {e}") from e
        return self._chat_pieces(iter(chunks), self._llama.last_prompt_tokens)

    def _structured_chat(
        self,
        turns: Sequence[ChatTurn],
        sampling: Sampling,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> Iterator[TextPiece]:
        """A chat with a grammar, logprobs or tools: formatted by the same chat handler,
        generated by the token loop of ``llama_structured``."""
        if tools is not None and not template_takes_tools(self._llama.chat_template_source):
            raise BadRequestError(
                f"model {self._name!r} cannot take tools: its chat template does not render"
                " them (it never reads 'tools'); send the request without tools, or give the"
                " model a tool-capable chat_template in the release config (docs/local-api.md)"
            )
        prompt = format_chat(self._llama, turns, sampling, tools, name=self._name)
        return self.generate_from(
            prompt.tokens, sampling, prompt.stop, prompt.stopping_criteria, prompt.sampler
        )

    def generate_from(
        self,
        tokens: list[int],
        sampling: Sampling,
        stop: Sequence[str],
        stopping_criteria: Any,
        sampler: Mapping[str, Any],
    ) -> Iterator[TextPiece]:
        """Generate from formatted prompt tokens with the token loop (grammar, logprobs);
        an engine with its own sequences overrides this. Raises before generating when
        the prompt does not fit."""
        max_tokens = capped_max_tokens(
            self._name, len(tokens), self._llama.usable_context, sampling.max_tokens
        )
        self._llama.last_prompt_tokens = len(tokens)
        return generate_pieces(
            self._llama,
            tokens,
            sampling,
            max_tokens=max_tokens,
            stop=stop,
            stopping_criteria=stopping_criteria,
            sampler=sampler,
        )

    def complete(self, prompt: str, sampling: Sampling) -> Iterator[TextPiece]:
        tokens = self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if sampling.grammar is not None or sampling.logprobs is not None:
            return self.generate_from(tokens, sampling, sampling.stop, None, completion_sampler())
        chunks = self._llama.create_completion(
            prompt=tokens, stream=True, **_sampling_kwargs(sampling)
        )
        return self._completion_pieces(iter(chunks), len(tokens))

    def _chat_pieces(self, chunks: Iterator[Any], prompt_tokens: int) -> Iterator[TextPiece]:
        generated: list[str] = []
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                reason = choice["finish_reason"]
                if reason is not None:
                    yield self._last_piece("", reason, prompt_tokens, generated)
                    return
                text = choice["delta"].get("content")
                if text:
                    generated.append(text)
                    yield TextPiece(text)
        finally:
            _close(chunks)

    def _completion_pieces(self, chunks: Iterator[Any], prompt_tokens: int) -> Iterator[TextPiece]:
        generated: list[str] = []
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice["text"]
                reason = choice["finish_reason"]
                if reason is not None:
                    yield self._last_piece(text, reason, prompt_tokens, generated)
                    return
                if text:
                    generated.append(text)
                    yield TextPiece(text)
        finally:
            _close(chunks)

    def _last_piece(
        self, text: str, reason: object, prompt_tokens: int, generated: list[str]
    ) -> TextPiece:
        generated.append(text)
        completion = "".join(generated)
        n_completion = (
            len(self._llama.tokenize(completion.encode("utf-8"), add_bos=False, special=True))
            if completion
            else 0
        )
        return TextPiece(
            text,
            finish_reason=_finish_reason(reason),
            prompt_tokens=prompt_tokens,
            completion_tokens=n_completion,
        )

    def close(self) -> None:
        self._llama.close()


@dataclass(frozen=True)
class EmbedderStats:
    texts_embedded: int
    tokens_embedded: int


class LlamaEmbedder:
    """Backend for kind ``embedding``: a GGUF embedding model, one pooled vector per text.

    Pooling is what the model declares (e.g. mean for MiniLM) unless the release config
    names another; a model that declares none is mean-pooled here.
    """

    def __init__(self, name: str, llama: llama_cpp.Llama, *, normalize: bool) -> None:
        self._name = name
        self._llama = llama
        self._normalize = normalize
        self._texts_embedded = 0
        self._tokens_embedded = 0
        pooling = int(llama_cpp.llama_pooling_type(llama.ctx))
        self._pool_here = pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE
        train_ctx = int(llama_cpp.llama_model_n_ctx_train(llama.model))
        self._max_tokens = min(int(llama.n_ctx()), llama.n_batch, train_ctx or llama.n_batch)

    @classmethod
    def load(cls, artifact: InstalledArtifact, options: ModelOptions) -> LlamaEmbedder:
        try:
            llama = construct_llama(
                llama_cpp.Llama,
                model_path=str(artifact.path),
                embedding=True,
                n_ctx=options.n_ctx,
                n_batch=options.n_ctx,
                n_ubatch=options.n_ctx,
                n_threads=options.n_threads,
                n_threads_batch=options.batch_threads,
                pooling_type=_POOLING[options.pooling],
            )
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"cannot load model {artifact.name!r} from {artifact.path}: {e}"
            ) from e
        return cls(artifact.name, llama, normalize=options.normalize)

    @property
    def dimensions(self) -> int:
        return int(self._llama.n_embd())

    def count_tokens(self, texts: Sequence[str]) -> int:
        tokenize = self._llama.tokenize
        return sum(len(tokenize(t.encode("utf-8"), add_bos=True, special=True)) for t in texts)

    def embed(self, texts: Sequence[str]) -> Embeddings:
        counts = []
        for i, text in enumerate(texts):
            n = len(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))
            if n > self._max_tokens:
                raise ContextOverflowError(
                    f"input[{i}] is {n} tokens but embedding model {self._name!r} takes at "
                    f"most {self._max_tokens} tokens per input; split the text"
                )
            counts.append(n)
        if not texts:
            return Embeddings([], 0)
        if self._pool_here:
            # llama-cpp-python 0.3.36 reads the per-token outputs of the second and later
            # texts of one unpooled call at the wrong offset: one text per call
            raw: Any = [self._llama.embed([t], truncate=False)[0] for t in texts]
        else:
            raw = self._llama.embed(list(texts), truncate=False)
        vectors = [self._pooled(v) for v in raw]
        self._texts_embedded += len(texts)
        self._tokens_embedded += sum(counts)
        return Embeddings(vectors, sum(counts))

    def engine_stats(self) -> EmbedderStats:
        """What this model has embedded since it was loaded (``/v1/status``'s ``engine``)."""
        return EmbedderStats(self._texts_embedded, self._tokens_embedded)

    def _pooled(self, value: Any) -> list[float]:
        array = np.asarray(value, dtype=np.float32)
        if self._pool_here and array.ndim == 2:
            array = array.mean(axis=0)
        if self._normalize:
            norm = float(np.linalg.norm(array))
            if norm > 0:
                array = array / norm
        return [float(x) for x in array.tolist()]

    def close(self) -> None:
        self._llama.close()


def _template_handler(template: str, llama: llama_cpp.Llama, name: str) -> Any:
    """A chat handler for a Jinja chat template given in the release config."""
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    eos = llama.detokenize([eos_id], special=True).decode("utf-8") if eos_id != -1 else ""
    bos = llama.detokenize([bos_id], special=True).decode("utf-8") if bos_id != -1 else ""
    try:
        formatter = Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
        )
    except Exception as e:  # jinja2 syntax errors have no common base we can name here
        raise ConfigError(f"chat_template of model {name!r} is invalid: {e}") from e
    return formatter.to_chat_handler()


def _sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    return {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop),
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }


def _close(chunks: Iterator[Any]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
