"""Prompt packs and policy bundles: JSON artifacts of a release, versioned and hashed
like models, so that model + prompts + index + config + policy roll back as one unit.

- ``prompt-pack``: the release's default system prompt and named prompt templates. The
  local API uses ``system_prompt`` for a chat that brings none (a remote config's
  ``chat.system_prompt`` wins over it).
- ``policy``: the abstention thresholds (the RAG evidence rule) and the telemetry policy
  the release ships with (a remote config's ``rag``/``telemetry`` keys win over them).

Both are checked against these models when uploaded (the control plane refuses an
invalid one naming the JSON pointer) and again when a device activates the release.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.remote_config import (
    MAX_SYSTEM_PROMPT_CHARS,
    ConfigProblem,
    RagSettings,
    TelemetrySettings,
    problems_of,
)

__all__ = [
    "POLICY_KIND",
    "PROMPT_PACK_KIND",
    "PolicyBundle",
    "PromptPack",
    "release_artifact_problems",
]

PROMPT_PACK_KIND = "prompt-pack"
POLICY_KIND = "policy"


class PromptPack(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    system_prompt: str | None = Field(
        default=None, min_length=1, max_length=MAX_SYSTEM_PROMPT_CHARS
    )
    templates: dict[str, str] = Field(default_factory=dict, max_length=64)


class PolicyBundle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    abstention: RagSettings = Field(default_factory=RagSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


_MODELS: Mapping[str, type[BaseModel]] = {PROMPT_PACK_KIND: PromptPack, POLICY_KIND: PolicyBundle}


def release_artifact_problems(kind: str, content: bytes) -> list[ConfigProblem] | None:
    """Schema problems of a ``prompt-pack`` or ``policy`` artifact's bytes (empty: valid);
    None for other kinds (nothing to check here)."""
    model = _MODELS.get(kind)
    if model is None:
        return None
    try:
        value: Any = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [ConfigProblem("", f"not valid JSON: {e}")]
    try:
        model.model_validate(value)
    except ValidationError as e:
        return problems_of(e, model)
    return []
