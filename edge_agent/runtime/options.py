"""Per-model load options: agent settings, overridden by the release's config (pure)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import ConfigError
from edge_agent.runtime.backends import ModelOptions
from edge_agent.settings import AgentSettings


class ModelOverrides(BaseModel):
    """What a release may set per model in ``config["models"][<artifact name>]``.

    Keys not listed here are ignored (other parts of the agent may read them).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    n_ctx: int | None = Field(default=None, ge=128, le=1 << 20)
    n_threads: int | None = Field(default=None, ge=1, le=1024)
    n_threads_batch: int | None = Field(default=None, ge=1, le=1024)
    n_batch: int | None = Field(default=None, ge=8, le=1 << 16)
    n_parallel: int | None = Field(default=None, ge=1, le=64)
    prompt_cache_mb: int | None = Field(default=None, ge=0, le=1 << 20)
    prompt_lookup: bool | None = None
    chat_format: str | None = Field(default=None, min_length=1, max_length=64)
    chat_template: str | None = Field(default=None, min_length=1, max_length=100_000)
    pooling: Literal["model", "mean", "cls", "last", "none"] | None = None
    normalize: bool | None = None


def default_threads(settings: AgentSettings, cpu_count: int | None) -> int:
    """The setting if given, else every core but one: the local API, the update loop and
    vision models need a core too, and llama.cpp threads that get preempted stall each
    other (on a busy 2-core box, 2 threads decoded 9 tok/s where 1 thread did 80)."""
    if settings.n_threads is not None:
        return settings.n_threads
    return max(1, (cpu_count or 1) - 1)


def default_batch_threads(settings: AgentSettings, cpu_count: int | None) -> int:
    """The setting if given, else every core: while llama.cpp reads a prompt (or embeds)
    the API's event loop has nothing to do but wait for it, and a prompt's matrix work is
    large enough per thread that a preempted thread costs little (both cores cut a new
    prompt's first token from 148 to 94 ms on a 2-core box, issue 13)."""
    if settings.n_threads_batch is not None:
        return settings.n_threads_batch
    return max(1, cpu_count or 1)


def resolve_options(
    settings: AgentSettings,
    release_config: Mapping[str, Any],
    model_name: str,
    *,
    cpu_count: int | None = None,
) -> ModelOptions:
    """Combine agent settings with the release's overrides for ``model_name``.

    Raises ConfigError naming the model and the bad key when the release config is invalid.
    """
    models = release_config.get("models", {})
    if not isinstance(models, Mapping):
        raise ConfigError('release config "models" must be an object keyed by model name')
    raw = models.get(model_name, {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f'release config "models.{model_name}" must be an object')
    try:
        overrides = ModelOverrides.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f'release config "models.{model_name}" is invalid: {problems}') from e
    cores = cpu_count if cpu_count is not None else os.cpu_count()
    threads = default_threads(settings, cores)
    n_ctx = overrides.n_ctx or settings.n_ctx
    lookup = settings.prompt_lookup if overrides.prompt_lookup is None else overrides.prompt_lookup
    return ModelOptions(
        n_ctx=n_ctx,
        n_threads=overrides.n_threads or threads,
        n_threads_batch=overrides.n_threads_batch or default_batch_threads(settings, cores),
        n_batch=min(overrides.n_batch or 512, n_ctx),
        n_parallel=overrides.n_parallel or settings.n_parallel,
        prompt_cache_mb=(
            settings.prompt_cache_mb
            if overrides.prompt_cache_mb is None
            else overrides.prompt_cache_mb
        ),
        prompt_lookup_draft=settings.prompt_lookup_draft if lookup else 0,
        chat_format=overrides.chat_format,
        chat_template=overrides.chat_template,
        pooling=overrides.pooling or "model",
        normalize=True if overrides.normalize is None else overrides.normalize,
    )
