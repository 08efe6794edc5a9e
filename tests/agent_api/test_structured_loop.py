"""The one-sequence backend's token loop (``llama_structured.generate_pieces``) on the real
SmolLM2 model, without the API: the grammar holds, logprobs agree with the plain path's
text, and stop strings end the answer and its logprobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from edge_agent.release import InstalledArtifact
from edge_agent.runtime import ChatTurn, ModelOptions, Sampling, join_pieces
from edge_agent.runtime.grammar import SchemaLimits, json_schema_grammar
from edge_agent.runtime.llama import LlamaTextGenerator
from edge_agent.runtime.llama_structured import make_grammar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(smollm2: Path) -> Iterator[LlamaTextGenerator]:
    artifact = InstalledArtifact(
        name="smollm2",
        kind="llm",
        format="gguf",
        sha256="0" * 64,
        length=smollm2.stat().st_size,
        path=smollm2,
    )
    generator = LlamaTextGenerator.load(artifact, ModelOptions(n_ctx=512, n_threads=1))
    yield generator
    generator.close()


def test_the_grammar_holds_on_the_loop(model: LlamaTextGenerator) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    grammar = json_schema_grammar(schema, SchemaLimits())
    turns = [ChatTurn("user", "Describe a person.")]
    whole = join_pieces(model.chat(turns, Sampling(max_tokens=60, temperature=0, grammar=grammar)))
    assert whole.finish_reason == "stop"
    jsonschema.validate(json.loads(whole.text), schema)


def test_logprobs_do_not_change_the_text_and_cover_each_token(model: LlamaTextGenerator) -> None:
    turns = [ChatTurn("user", "Say hello.")]
    plain = join_pieces(model.chat(turns, Sampling(max_tokens=10, temperature=0)))
    pieces = list(model.chat(turns, Sampling(max_tokens=10, temperature=0, logprobs=3)))
    whole = join_pieces(pieces)
    assert whole.text == plain.text  # the loop samples as llama-cpp-python's chat does
    assert len(whole.logprobs) == whole.completion_tokens == plain.completion_tokens
    assert "".join(e.token for e in whole.logprobs) == whole.text
    offset = 0
    for piece in pieces:
        for entry in piece.logprobs:
            assert entry.offset == offset
            offset += len(entry.token)
            values = [lp for _, lp in entry.top]
            assert values == sorted(values, reverse=True) and len(values) == 3
            assert entry.top[0][0] == entry.token  # greedy: the likeliest token
            assert entry.top[0][1] == pytest.approx(entry.logprob)


def test_a_stop_string_ends_the_text_and_its_logprobs(model: LlamaTextGenerator) -> None:
    prompt = "The capital of France is"
    free = join_pieces(model.complete(prompt, Sampling(max_tokens=6, temperature=0, logprobs=1)))
    assert "." in free.text
    stopped = join_pieces(
        model.complete(prompt, Sampling(max_tokens=6, temperature=0, logprobs=1, stop=(".",)))
    )
    assert stopped.text == free.text[: free.text.index(".")]
    assert stopped.finish_reason == "stop"
    assert "".join(e.token for e in stopped.logprobs) == stopped.text


PATTERNS = [
    "^[A-Z]{2}-[0-9]{3}$",
    "^v[0-9]\\.[0-9]$",
    "^a\\-b\\/c$",
    "^price: [0-9]+\\$$",
    "^\\(x\\)$",
    "^(small|large)( box)?$",
    "^[a-z_]+@example\\.com$",
    "^(|a)b$",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_accepted_pattern_makes_a_grammar_llama_cpp_parses(
    model: LlamaTextGenerator, pattern: str
) -> None:
    grammar = json_schema_grammar({"type": "string", "pattern": pattern}, SchemaLimits())
    make_grammar(model._llama, grammar)  # raises when llama.cpp cannot parse it


def test_an_escaped_dot_in_a_pattern_is_generated_as_a_dot(model: LlamaTextGenerator) -> None:
    schema = {"type": "string", "pattern": "^v[0-9]\\.[0-9]$"}
    grammar = json_schema_grammar(schema, SchemaLimits())
    turns = [ChatTurn("user", "Which version?")]
    whole = join_pieces(model.chat(turns, Sampling(max_tokens=12, temperature=0, grammar=grammar)))
    value = json.loads(whole.text)
    jsonschema.validate(value, schema)
    assert value[2] == "."
