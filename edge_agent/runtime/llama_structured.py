"""The llama.cpp side of structured output, tools and logprobs, as separate functions
any generation engine can call (the one-sequence backend in ``llama.py`` and the batched
one): formatting a chat with tools through the model's own chat handler, making a
grammar llama.cpp has checked, recording each sampled token's log probabilities, and a
token loop that turns sampled tokens into pieces (stop strings, UTF-8, logprobs).
"""

from __future__ import annotations

import codecs
import inspect
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import jinja2
import jinja2.meta
import llama_cpp
import numpy as np
from llama_cpp import llama_chat_format
from llama_cpp.llama_grammar import LlamaGrammar

from edge_agent.errors import AgentError, BadRequestError
from edge_agent.runtime.backends import ChatTurn, Sampling, TextPiece, TokenLogprob

__all__ = [
    "FormattedPrompt",
    "LogprobRecorder",
    "chat_messages",
    "format_chat",
    "generate_pieces",
    "make_grammar",
    "template_takes_tools",
]


# --- formatting ------------------------------------------------------------------------


def chat_messages(turns: Sequence[ChatTurn]) -> list[dict[str, Any]]:
    """Turns as the messages a chat template reads (OpenAI shape; ``developer`` is read
    as ``system``; a call's arguments are a mapping, as Hugging Face templates expect)."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        message: dict[str, Any] = {
            "role": "system" if turn.role == "developer" else turn.role,
            "content": turn.content,
        }
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _arguments(call.arguments)},
                }
                for call in turn.tool_calls
            ]
        if turn.tool_call_id is not None:
            message["tool_call_id"] = turn.tool_call_id
        messages.append(message)
    return messages


def _arguments(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def template_takes_tools(template: str | None) -> bool:
    """Whether a Jinja chat template reads the ``tools`` variable (renders tool
    definitions); a template that never mentions it would drop them silently."""
    if not template:
        return False
    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return False
    return "tools" in jinja2.meta.find_undeclared_variables(parsed)


@dataclass(frozen=True)
class FormattedPrompt:
    """A conversation formatted by the model's chat handler, ready to generate from."""

    tokens: list[int]
    stop: tuple[str, ...]
    stopping_criteria: Any
    sampler: Mapping[str, Any]
    """The sampler settings the chat handler itself would have used (top_k, min_p,
    repeat_penalty, ...), so a generation here matches one through the handler."""


class _Capture:
    """Stands in for the Llama a chat handler generates with: it keeps the prompt and
    the settings the handler asks for, and generates nothing."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self.verbose = False
        self.captured: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, prompt: Any, **kwargs: Any) -> Iterator[Any]:
        self.captured = {"prompt": prompt, **kwargs}
        return iter(())


def format_chat(
    llama: llama_cpp.Llama,
    turns: Sequence[ChatTurn],
    sampling: Sampling,
    tools: Sequence[Mapping[str, Any]] | None,
    *,
    name: str,
) -> FormattedPrompt:
    """Format ``turns`` (and ``tools``) with ``llama``'s chat handler: the release's
    ``chat_template``, the GGUF's own template, or a named ``chat_format``."""
    chat_format = str(llama.chat_format)  # None only when a chat_handler is set
    handler = (
        llama.chat_handler
        or llama._chat_handlers.get(chat_format)  # how Llama itself picks it
        or llama_chat_format.get_chat_completion_handler(chat_format)
    )
    capture = _Capture(llama)
    extra: dict[str, Any] = {"tools": list(tools)} if tools else {}
    try:
        handler(
            llama=cast(Any, capture),
            messages=cast(Any, chat_messages(turns)),
            stream=True,
            stop=list(sampling.stop),
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            **_defaults(llama_cpp.Llama.create_chat_completion),
            **extra,
        )
    except (ValueError, TypeError, jinja2.TemplateError) as e:
        raise BadRequestError(f"model {name!r} cannot format these messages: {e}") from e
    captured = capture.captured
    if captured is None or not isinstance(captured.get("prompt"), list):
        raise AgentError(f"model {name!r}: its chat handler produced no prompt")
    stop = captured.get("stop") or []
    return FormattedPrompt(
        tokens=list(captured["prompt"]),
        stop=tuple([stop] if isinstance(stop, str) else stop),
        stopping_criteria=captured.get("stopping_criteria"),
        sampler={k: captured[k] for k in _SAMPLER_KEYS if k in captured},
    )


_SAMPLER_KEYS = ("top_k", "min_p", "typical_p", "repeat_penalty", "tfs_z")


def _defaults(method: Callable[..., Any]) -> dict[str, Any]:
    """The sampler settings ``method`` (a Llama entry point) uses by default, read from
    its signature, so a generation here matches one through it."""
    parameters = inspect.signature(method).parameters
    return {k: parameters[k].default for k in _SAMPLER_KEYS if k in parameters}


def completion_sampler() -> dict[str, Any]:
    """The sampler settings of a plain ``Llama.create_completion``."""
    return _defaults(llama_cpp.Llama.create_completion)


# --- grammar ---------------------------------------------------------------------------


def make_grammar(llama: llama_cpp.Llama, gbnf: str) -> LlamaGrammar:
    """A grammar for ``llama``'s vocabulary that llama.cpp has parsed. llama-cpp-python
    hands a grammar that does not parse to the sampler chain unchecked (a null sampler,
    which crashes the process), so it is built and freed here once first."""
    vocab = llama._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise AgentError(
            "llama.cpp could not parse the grammar made for this request (a bug in the"
            " agent's schema conversion; the request was not run)"
        )
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(gbnf, verbose=False)


# --- logprobs --------------------------------------------------------------------------


class LogprobRecorder:
    """A logits processor that keeps the log-softmax of the raw logits of each step
    (before penalties and grammar: the model's own probabilities), so the token sampled
    next can be reported with its log probability and the ``top`` most likely tokens."""

    def __init__(self, llama: llama_cpp.Llama, top: int) -> None:
        self._llama = llama
        self._top = top
        self._last: np.ndarray[Any, np.dtype[np.float32]] | None = None

    def __call__(
        self, input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, np.dtype[np.float32]]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        logits = np.asarray(scores, dtype=np.float32)
        shifted = logits - logits.max()
        self._last = shifted - np.log(np.exp(shifted).sum())
        return scores

    def take(self, token: int, token_bytes: bytes, offset: int) -> TokenLogprob:
        """The entry of ``token``, sampled from the last recorded step."""
        logprobs = self._last
        if logprobs is None:
            raise AgentError("no logits were recorded before a token was sampled")
        top: tuple[tuple[str, float], ...] = ()
        if self._top > 0:
            best = np.argpartition(-logprobs, self._top)[: self._top]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple((self._text(int(i)), float(logprobs[i])) for i in best)
        return TokenLogprob(
            token=token_bytes.decode("utf-8", errors="replace"),
            logprob=float(logprobs[token]),
            top=top,
            token_bytes=token_bytes,
            offset=offset,
        )

    def _text(self, token: int) -> str:
        piece: bytes = self._llama.detokenize([token], special=True)
        return piece.decode("utf-8", errors="replace")


# --- the token loop --------------------------------------------------------------------


def generate_pieces(
    llama: llama_cpp.Llama,
    tokens: list[int],
    sampling: Sampling,
    *,
    max_tokens: int,
    stop: Sequence[str],
    stopping_criteria: Callable[[Any, Any], bool] | None,
    sampler: Mapping[str, Any],
) -> Iterator[TextPiece]:
    """Generate from ``tokens`` with ``sampling`` (its grammar and logprobs included),
    one piece per token as soon as it cannot be part of a stop string; the last piece
    carries the finish reason and token counts. ``max_tokens`` is already capped to the
    context's room."""
    grammar = make_grammar(llama, sampling.grammar) if sampling.grammar else None
    recorder = LogprobRecorder(llama, sampling.logprobs) if sampling.logprobs is not None else None
    llama.set_seed(
        sampling.seed if sampling.seed is not None else random.Random().randint(0, 2**32)
    )
    generator = llama.generate(
        tokens,
        top_p=sampling.top_p,
        temp=sampling.temperature,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        logits_processor=llama_cpp.LogitsProcessorList([recorder]) if recorder else None,
        grammar=grammar,
        **sampler,
    )
    vocab = llama._model.vocab
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    generated: list[int] = []
    text = ""  # all text decoded so far
    sent = 0  # how much of it was handed out
    pending: list[TokenLogprob] = []
    finish = "length"
    stopped_at: int | None = None
    try:
        for token in generator:
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            piece = llama.detokenize([token], prev_tokens=tokens + generated)
            generated.append(token)
            if recorder is not None:
                pending.append(recorder.take(token, piece, len(text)))
            text += decoder.decode(piece)
            stopped_at = _first_stop(text, stop, sent)
            if stopped_at is not None:
                text, finish = text[:stopped_at], "stop"
                break
            if stopping_criteria is not None and stopping_criteria(
                np.asarray(tokens + generated, dtype=np.intc), np.empty(0, dtype=np.single)
            ):
                finish = "stop"
                break
            upto = len(text) - _held_back(text, stop, sent)
            if upto > sent:
                out = [lp for lp in pending if lp.offset < upto]
                pending = pending[len(out) :]
                yield TextPiece(text[sent:upto], logprobs=tuple(out))
                sent = upto
            if len(generated) >= max_tokens:
                break
        if stopped_at is None:
            text += decoder.decode(b"", final=True)
        else:  # tokens that begin inside the stop string are not part of the answer
            pending = [lp for lp in pending if lp.offset < stopped_at]
        yield TextPiece(
            text[sent:],
            finish_reason="stop" if finish == "stop" else "length",
            prompt_tokens=len(tokens),
            completion_tokens=len(generated),
            logprobs=tuple(pending),
        )
    finally:
        generator.close()


def _first_stop(text: str, stop: Sequence[str], start: int) -> int | None:
    """Where the first stop string in ``text`` begins. Text that could begin one is held
    back, never handed out, so none begins before ``start``."""
    found = [i for s in stop if s and (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: Sequence[str], sent: int) -> int:
    """How many trailing characters of ``text`` could begin a stop string."""
    held = 0
    tail = text[sent:]
    for s in stop:
        for n in range(min(len(s) - 1, len(tail)), 0, -1):
            if tail.endswith(s[:n]):
                held = max(held, n)
                break
    return held
