"""The remote config contract: the schema refuses what it does not know, and the merge
rule (fleet < tag < device, JSON merge patch, null removes) as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.remote_config import (
    RemoteConfig,
    config_digest,
    config_problems,
    effective_config,
    merge_patch,
    remote_config_json_schema,
)

SCHEMA_FILE = Path(__file__).parents[2] / "docs" / "remote-config.schema.json"


def test_rfc7386_examples() -> None:
    # the example of RFC 7386 section 3
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch(["a", "b"], {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "foo"}, "bar") == "bar"
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_merge_patch_changes_neither_argument() -> None:
    target, patch = {"chat": {"max_tokens_default": 1}}, {"chat": {"max_tokens_default": None}}
    merge_patch(target, patch)
    assert target == {"chat": {"max_tokens_default": 1}}
    assert patch == {"chat": {"max_tokens_default": None}}


def test_device_beats_tag_beats_fleet() -> None:
    fleet = {"chat": {"max_tokens_default": 256, "temperature_default": 0.7}, "log_level": "INFO"}
    tags = {"store=lisbon": {"chat": {"max_tokens_default": 128}, "rag": {"min_similarity": 0.35}}}
    device = {"log_level": "DEBUG"}
    assert effective_config(fleet, tags, device) == {
        "chat": {"max_tokens_default": 128, "temperature_default": 0.7},
        "rag": {"min_similarity": 0.35},
        "log_level": "DEBUG",
    }


def test_tag_layers_apply_in_sorted_order() -> None:
    tags = {"z=1": {"log_level": "ERROR"}, "a=1": {"log_level": "DEBUG"}}
    assert effective_config(None, tags, None) == {"log_level": "ERROR"}
    assert effective_config(None, dict(reversed(list(tags.items()))), None) == {
        "log_level": "ERROR"
    }


def test_digest_ignores_key_order() -> None:
    assert config_digest({"a": 1, "b": {"c": 2}}) == config_digest({"b": {"c": 2}, "a": 1})


def test_a_valid_config_has_no_problems() -> None:
    doc = {
        "chat": {"max_tokens_default": 256, "system_prompt": "Be brief."},
        "rag": {"min_similarity": 0.35},
        "log_level": "DEBUG",
        "updates": {"poll_interval_seconds": 5},
        "runtime": {"idle_unload_seconds": 0},
    }
    assert config_problems(doc) == []
    assert RemoteConfig.model_validate(doc).chat.max_tokens_default == 256


def test_unknown_keys_are_refused_with_their_pointer() -> None:
    problems = config_problems({"chat": {"max_token_default": 256}, "colour": "red"})
    pointers = {p.pointer: p.rule for p in problems}
    assert set(pointers) == {"/chat/max_token_default", "/colour"}
    assert "unknown key" in pointers["/chat/max_token_default"]
    assert "max_tokens_default" in pointers["/chat/max_token_default"]  # says what is allowed


@pytest.mark.parametrize(
    ("doc", "pointer", "rule"),
    [
        ({"chat": {"max_tokens_default": 0}}, "/chat/max_tokens_default", "greater_than_equal"),
        ({"chat": {"max_tokens_default": "256"}}, "/chat/max_tokens_default", "int_type"),
        ({"rag": {"min_similarity": 1.5}}, "/rag/min_similarity", "less_than_equal"),
        ({"log_level": "LOUD"}, "/log_level", "literal_error"),
        ({"telemetry": {"enabled": 1}}, "/telemetry/enabled", "bool_type"),
        ({"chat": "short"}, "/chat", "model_type"),
    ],
)
def test_invalid_values_name_pointer_and_rule(
    doc: dict[str, object], pointer: str, rule: str
) -> None:
    problems = config_problems(doc)
    assert [p.pointer for p in problems] == [pointer]
    assert rule in problems[0].rule


def test_published_schema_is_current() -> None:
    """docs/remote-config.schema.json is what the code checks (regenerate: see docs)."""
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == remote_config_json_schema()
    assert published["additionalProperties"] is False
