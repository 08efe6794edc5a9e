"""Threads (issue 13, item 3): decode keeps all cores but one, prompt processing and
embeddings (llama.cpp's n_threads_batch) get every core; settings and release config may
override each, and the loaded llama.cpp contexts run with what was resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.release import InstalledArtifact
from edge_agent.runtime import resolve_options
from edge_agent.runtime.llama import LlamaEmbedder, LlamaTextGenerator
from edge_agent.settings import AgentSettings
from tests.agent_api.conftest import settings_for_tests


def test_prompt_processing_uses_every_core_and_decode_all_but_one() -> None:
    settings = settings_for_tests(n_threads=None)
    for cores, decode in ((4, 3), (2, 1), (1, 1)):
        options = resolve_options(settings, {}, "a", cpu_count=cores)
        assert (options.n_threads, options.batch_threads) == (decode, cores)


def test_an_explicit_decode_thread_count_leaves_the_batch_default_alone() -> None:
    options = resolve_options(settings_for_tests(n_threads=1), {}, "a", cpu_count=8)
    assert (options.n_threads, options.batch_threads) == (1, 8)


def test_the_batch_setting_and_the_release_override_take_precedence() -> None:
    settings = settings_for_tests(n_threads=None, n_threads_batch=3)
    config = {"models": {"a": {"n_threads_batch": 5}}}
    a = resolve_options(settings, config, "a", cpu_count=8)
    b = resolve_options(settings, config, "b", cpu_count=8)
    assert (a.n_threads, a.batch_threads) == (7, 5)  # the release config, per model
    assert (b.n_threads, b.batch_threads) == (7, 3)  # the agent setting


def test_the_batch_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_AGENT_N_THREADS_BATCH", "6")
    settings = AgentSettings()
    assert settings.n_threads_batch == 6
    assert resolve_options(settings, {}, "a", cpu_count=2).batch_threads == 6


def test_a_zero_batch_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="n_threads_batch"):
        settings_for_tests(n_threads_batch=0)
    with pytest.raises(ConfigError, match="n_threads_batch"):
        resolve_options(settings_for_tests(), {"models": {"a": {"n_threads_batch": 0}}}, "a")


def _artifact(kind: str, path: Path) -> InstalledArtifact:
    return InstalledArtifact("smollm2", kind, "gguf", "0" * 64, path.stat().st_size, path)


def test_loaded_models_run_with_the_resolved_thread_counts(smollm2: Path) -> None:
    import llama_cpp

    options = resolve_options(
        settings_for_tests(n_threads=1, n_ctx=256), {}, "smollm2", cpu_count=2
    )
    generator = LlamaTextGenerator.load(_artifact("llm", smollm2), options)
    try:
        ctx = generator._llama.ctx
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (1, 2)
    finally:
        generator.close()
    embedder = LlamaEmbedder.load(_artifact("embedding", smollm2), options)
    try:
        ctx = embedder._llama.ctx
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (1, 2)
    finally:
        embedder.close()
