"""The Ollama surface's pure rules: options -> sampling, keep_alive durations (no model)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edge_agent.api.ollama_wire import (
    OLLAMA_DEFAULT_TEMPERATURE,
    OLLAMA_DEFAULT_TOP_P,
    OllamaOptionError,
    keep_alive_seconds,
    sampling_from_options,
)


def test_options_map_onto_the_runtimes_sampling() -> None:
    sampling = sampling_from_options(
        {
            "temperature": 0,
            "top_p": 0.5,
            "num_predict": 7,
            "stop": ["\n\n", "User:"],
            "seed": 42,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "num_ctx": 256,
        },
        context_length=512,
    )
    assert sampling.temperature == 0.0
    assert sampling.top_p == 0.5
    assert sampling.max_tokens == 7
    assert sampling.stop == ("\n\n", "User:")
    assert sampling.seed == 42
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.5)


def test_no_options_take_ollamas_defaults_and_run_until_the_context_is_full() -> None:
    sampling = sampling_from_options(None, context_length=512)
    assert (sampling.temperature, sampling.top_p) == (
        OLLAMA_DEFAULT_TEMPERATURE,
        OLLAMA_DEFAULT_TOP_P,
    )
    assert sampling.max_tokens is None
    for unlimited in (-1, -2):
        assert (
            sampling_from_options({"num_predict": unlimited}, context_length=512).max_tokens is None
        )


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        ({"top_k": 40}, "options.top_k", "sampler setting"),
        ({"num_gpu": 1}, "options.num_gpu", "operator"),
        ({"num_thread": 8}, "options.num_thread", "operator"),
        ({"warmth": 1}, "options.warmth", "not an Ollama option"),
        ({"temperature": "hot"}, "options.temperature", "must be a number"),
        ({"temperature": True}, "options.temperature", "must be a number"),
        ({"temperature": 3}, "options.temperature", "between"),
        ({"top_p": 0}, "options.top_p", "above 0"),
        ({"num_predict": 0}, "options.num_predict", "positive"),
        ({"num_predict": -3}, "options.num_predict", "positive"),
        ({"num_predict": 1.5}, "options.num_predict", "integer"),
        ({"num_ctx": 4096}, "options.num_ctx", "context of 512"),
        ({"stop": "x" * 300}, "options.stop", "at most"),
        ({"stop": ["a"] * 17}, "options.stop", "at most"),
        ({"stop": [1]}, "options.stop", "strings"),
        ({"seed": "1"}, "options.seed", "integer"),
    ],
)
def test_a_bad_option_is_refused_by_name(options: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(OllamaOptionError) as caught:
        sampling_from_options(options, context_length=512)
    assert caught.value.param == param
    assert words in str(caught.value)
    assert param in str(caught.value)


def test_refusing_an_unsupported_option_lists_the_supported_ones() -> None:
    with pytest.raises(OllamaOptionError, match="supported options: temperature, top_p"):
        sampling_from_options({"mirostat": 2}, context_length=512)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("0", 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("300", 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("0s", 0.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-1m", math.inf),
    ],
)
def test_keep_alive_reads_what_ollama_reads(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "5x", "", "1h-30m", True, "nan"])
def test_a_keep_alive_that_is_no_duration_is_refused_with_examples(value: Any) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        keep_alive_seconds(value)
