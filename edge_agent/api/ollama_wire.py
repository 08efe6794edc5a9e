"""Ollama's native API on the wire: requests in, NDJSON/JSON responses out, and the pure
rules that turn a request's ``options`` and ``keep_alive`` into the runtime's terms.

Requests ignore fields they do not know, as the OpenAI wire does; a field whose feature
this agent does not offer (images, tools, templates, token contexts, most ``options``) is
refused by name instead of being dropped, so a client never gets an answer to a request
it did not make. Nothing here touches a model or a socket.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.runtime import Sampling

__all__ = [
    "OLLAMA_DEFAULT_TEMPERATURE",
    "OLLAMA_DEFAULT_TOP_P",
    "OLLAMA_VERSION",
    "SUPPORTED_OPTIONS",
    "ChatRequest",
    "ChatStreamPart",
    "Durations",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "Message",
    "ModelDetails",
    "ModelEntry",
    "OllamaOptionError",
    "RunningModel",
    "ShowRequest",
    "created_at",
    "keep_alive_seconds",
    "sampling_from_options",
]

OLLAMA_VERSION = "0.5.0"
"""The Ollama API version this surface answers as (``GET /api/version``): the shapes of
``/api/chat``, ``/api/generate``, ``/api/embed`` and the listing routes as of that
release. Clients use it to tell a reachable server; the differences are in
docs/local-api.md."""

OLLAMA_DEFAULT_TEMPERATURE = 0.8
OLLAMA_DEFAULT_TOP_P = 0.9
"""Ollama's sampling defaults, used when a request's ``options`` do not set them (clients
written for Ollama expect them; the OpenAI routes keep OpenAI's 1.0 / 1.0)."""

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256

SUPPORTED_OPTIONS = (
    "temperature",
    "top_p",
    "num_predict",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "num_ctx",
)

# Ollama's other options: known to its clients, not offered here (refused by name).
_LOAD_TIME_OPTIONS = frozenset(
    {
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
    }
)
_SAMPLER_OPTIONS = frozenset(
    {
        "num_keep",
        "top_k",
        "min_p",
        "tfs_z",
        "typical_p",
        "repeat_last_n",
        "repeat_penalty",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
    }
)


class OllamaOptionError(ValueError):
    """One of a request's ``options`` is unknown, unsupported or out of range;
    ``param`` names it (``options.<name>``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# --- requests --------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


KeepAlive = str | int | float | None


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[Any] | None = None
    thinking: str | None = None


class _Generation(_Request):
    model: str = Field(min_length=1, max_length=128)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    think: bool | str | None = None


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Any] | None = None


class GenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(_Request):
    model: str = Field(min_length=1, max_length=128)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Request):
    """The older ``/api/embeddings``: one prompt, one vector."""

    model: str = Field(min_length=1, max_length=128)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class ShowRequest(_Request):
    model: str | None = Field(default=None, min_length=1, max_length=128)
    name: str | None = Field(default=None, min_length=1, max_length=128)  # older clients
    verbose: bool = False


# --- responses -------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelDetails(_Response):
    parent_model: str = ""
    format: str
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ModelEntry(_Response):
    """One model of ``GET /api/tags``."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class RunningModel(_Response):
    """One loaded model of ``GET /api/ps``."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int = 0


class ChatStreamPart(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class Durations(_Response):
    """The counters of a finished generation, in Ollama's units (nanoseconds, tokens)."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


def created_at(now: datetime | None = None) -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC with a ``Z``."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- options -> sampling (pure) ---------------------------------------------------------


def _number(options: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OllamaOptionError(
            f"options.{name} must be a number, got {value!r}", f"options.{name}"
        )
    if not low <= value <= high:  # exact for any int, however large
        raise OllamaOptionError(
            f"options.{name} is {value}; it must be between {low} and {high}", f"options.{name}"
        )
    return float(value)


def _integer(options: Mapping[str, Any], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OllamaOptionError(
            f"options.{name} must be an integer, got {value!r}", f"options.{name}"
        )
    return value


def _seed(options: Mapping[str, Any]) -> int | None:
    seed = _integer(options, "seed")
    if seed is not None and not 0 <= seed < 1 << 32:
        raise OllamaOptionError(
            f"options.seed is {seed}; use a whole number from 0 to {(1 << 32) - 1}",
            "options.seed",
        )
    return seed


def _stops(options: Mapping[str, Any]) -> tuple[str, ...]:
    value = options.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise OllamaOptionError("options.stop must be a list of non-empty strings", "options.stop")
    if len(stops) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise OllamaOptionError(
            f"options.stop takes at most {MAX_STOP_SEQUENCES} sequences of at most"
            f" {MAX_STOP_CHARS} characters each",
            "options.stop",
        )
    return tuple(stops)


def check_option_names(options: Mapping[str, Any]) -> None:
    """Refuse any option this agent does not act on, naming it and what is supported."""
    supported = ", ".join(SUPPORTED_OPTIONS)
    for name in options:
        if name in SUPPORTED_OPTIONS:
            continue
        if name in _LOAD_TIME_OPTIONS:
            why = "the device's operator sets how models load (release config), not a request"
        elif name in _SAMPLER_OPTIONS:
            why = "this agent does not offer that sampler setting"
        else:
            why = "it is not an Ollama option"
        raise OllamaOptionError(
            f"options.{name} is not supported: {why}; supported options: {supported}",
            f"options.{name}",
        )


def sampling_from_options(options: Mapping[str, Any] | None, *, context_length: int) -> Sampling:
    """The runtime's sampling for a request's ``options``, with Ollama's defaults.

    ``num_predict`` -1 (as long as it takes) and -2 (fill the context) both mean: until
    the context is full. ``num_ctx`` cannot resize a loaded model: it is accepted when it
    is at most the window the model is loaded with (``context_length``) and refused
    above it. Raises :class:`OllamaOptionError` naming the option.
    """
    given: Mapping[str, Any] = options or {}
    check_option_names(given)
    num_predict = _integer(given, "num_predict")
    if num_predict is not None and (num_predict == 0 or num_predict < -2):
        raise OllamaOptionError(
            f"options.num_predict is {num_predict}; use a positive number of tokens, -1 (no"
            " limit) or -2 (fill the context)",
            "options.num_predict",
        )
    num_ctx = _integer(given, "num_ctx")
    if num_ctx is not None and not 1 <= num_ctx <= context_length:
        raise OllamaOptionError(
            f"options.num_ctx is {num_ctx} but this model is loaded with a context of"
            f" {context_length} tokens (the operator's n_ctx); a request cannot change it:"
            f" send num_ctx <= {context_length} or leave it out",
            "options.num_ctx",
        )
    temperature = _number(given, "temperature", 0.0, 2.0)
    top_p = _number(given, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise OllamaOptionError(
            "options.top_p must be above 0 (use temperature 0 for greedy decoding)",
            "options.top_p",
        )
    presence = _number(given, "presence_penalty", -2.0, 2.0)
    frequency = _number(given, "frequency_penalty", -2.0, 2.0)
    return Sampling(
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        temperature=OLLAMA_DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=OLLAMA_DEFAULT_TOP_P if top_p is None else top_p,
        stop=_stops(given),
        seed=_seed(given),
        presence_penalty=presence or 0.0,
        frequency_penalty=frequency or 0.0,
    )


# --- keep_alive (pure) ------------------------------------------------------------------

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """Seconds a model stays loaded after a request: None (not given: the agent's
    ``idle_unload_seconds``), 0 (unload right after), ``math.inf`` (a negative value:
    never unload), or a duration. Accepts what Ollama does: a number of seconds, or a
    duration string such as ``"5m"``, ``"1h30m"``, ``"90s"``, ``"-1"``.

    Raises ValueError saying what a valid value looks like.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration or a number of seconds, got {value!r}")
    if isinstance(value, int):
        seconds = -math.inf if value < 0 else math.inf if value > 1 << 53 else float(value)
    elif isinstance(value, float):
        seconds = value
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif body and _DURATION.sub("", body) == "":
            seconds = sign * sum(
                float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(body)
            )
        else:
            raise ValueError(
                f"keep_alive {value!r} is not a duration: use e.g. '5m', '90s', '1h30m', a"
                " number of seconds, 0 (unload after this request) or -1 (keep loaded)"
            )
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a number, not NaN")
    if seconds < 0:
        return math.inf
    return seconds
