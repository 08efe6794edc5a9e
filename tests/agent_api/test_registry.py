"""The model registry with the real llama.cpp backends: lazy loading, idle unloading,
swaps, per-model options and the errors a caller sees."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agent.errors import (
    BadRequestError,
    BusyError,
    ConfigError,
    ContextOverflowError,
    NoModelError,
    NotFoundError,
)
from edge_agent.release import InstalledArtifact
from edge_agent.runtime import (
    ChatTurn,
    LoadedModel,
    ModelOptions,
    ModelRegistry,
    Sampling,
    is_idle,
    resolve_options,
)
from edge_agent.runtime.llama import LlamaTextGenerator
from tests.agent_api.conftest import EMBEDDER, LLM, release, settings_for_tests

GREEDY = Sampling(max_tokens=4, temperature=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- pure parts --------------------------------------------------------------------------


def test_release_config_overrides_settings_per_model() -> None:
    settings = settings_for_tests(n_ctx=1024, n_threads=None)
    config = {"models": {"a": {"n_ctx": 256, "chat_format": "chatml", "other_team_key": 1}}}
    a = resolve_options(settings, config, "a", cpu_count=6)
    b = resolve_options(settings, config, "b", cpu_count=6)
    assert (a.n_ctx, a.n_threads, a.chat_format, a.n_batch) == (
        256,
        5,
        "chatml",
        256,
    )  # all cores but one
    assert (b.n_ctx, b.chat_format) == (1024, None)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"models": {"a": {"n_ctx": "big"}}}, "n_ctx"),
        ({"models": {"a": {"n_ctx": 4}}}, "n_ctx"),
        ({"models": {"a": {"pooling": "max"}}}, "pooling"),
        ({"models": {"a": "fast"}}, "must be an object"),
        ({"models": []}, "keyed by model name"),
    ],
)
def test_invalid_release_config_is_a_config_error_naming_the_key(
    config: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_options(settings_for_tests(), config, "a")


def test_idle_rule() -> None:
    common = {"loaded": True, "admitted": 0, "last_used": 100.0, "idle_after": 10.0}
    assert is_idle(**common, now=110.0)
    assert not is_idle(**common, now=109.9)
    assert not is_idle(**{**common, "admitted": 1}, now=200.0)
    assert not is_idle(**{**common, "loaded": False}, now=200.0)
    assert not is_idle(**{**common, "idle_after": 0.0}, now=10_000.0)


def test_no_release_means_no_model_error() -> None:
    registry = ModelRegistry(settings_for_tests(), loaders={})
    with pytest.raises(NoModelError, match="no model release is active"):
        registry.lease(LLM, "llm")
    assert registry.models() == []


# --- with the real model -----------------------------------------------------------------


class CountingLoader:
    """Loads the real llama.cpp backend and records loads and frees."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.closes: list[str] = []

    def __call__(self, artifact: InstalledArtifact, options: ModelOptions) -> LoadedModel:
        model = LlamaTextGenerator.load(artifact, options)
        self.loads.append(artifact.name)
        original_close = model.close

        def close() -> None:
            self.closes.append(artifact.name)
            original_close()

        model.close = close  # type: ignore[method-assign]
        return model


@pytest.mark.slow
def test_models_load_lazily_and_unload_when_idle(smollm2: Path) -> None:
    clock, loader = FakeClock(), CountingLoader()
    registry = ModelRegistry(
        settings_for_tests(idle_unload_seconds=60), loaders={"llm": loader}, clock=clock
    )
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2)}))
        assert loader.loads == [] and not registry.models()[0].loaded
        assert registry.complete(LLM, "Hello", GREEDY).completion_tokens > 0
        assert loader.loads == [LLM] and registry.models()[0].loaded
        assert registry.unload_idle(now=clock.now + 59) == []
        assert registry.unload_idle(now=clock.now + 60) == [LLM]
        registry.warm()  # the unload ran before this job on the model's thread
        assert loader.closes == [LLM] and loader.loads == [LLM, LLM]
    finally:
        registry.close()


@pytest.mark.slow
def test_warm_runs_every_model_once_so_no_request_pays_its_first_evaluation(
    smollm2: Path, minilm: Path
) -> None:
    registry = ModelRegistry(settings_for_tests())
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2), EMBEDDER: ("embedding", minilm)}))
        registry.warm()
        engines = {m.name: m.engine for m in registry.models()}
        assert engines[LLM]["tokens_generated"] == 1, engines  # one token, no more
        assert engines[EMBEDDER]["texts_embedded"] == 1, engines
    finally:
        registry.close()


@pytest.mark.slow
def test_warm_without_the_first_run_only_loads(smollm2: Path, minilm: Path) -> None:
    registry = ModelRegistry(settings_for_tests())
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2), EMBEDDER: ("embedding", minilm)}))
        registry.warm(first_run=False)
        models = {m.name: m for m in registry.models()}
        assert all(m.loaded for m in models.values()), models
        assert models[LLM].engine["tokens_generated"] == 0, models[LLM].engine
        assert models[EMBEDDER].engine["texts_embedded"] == 0, models[EMBEDDER].engine
    finally:
        registry.close()


@pytest.mark.slow
def test_warm_runs_a_model_whose_template_refuses_a_lone_user_turn_as_a_completion(
    smollm2: Path,
) -> None:
    template = (
        "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    )
    config = {"models": {LLM: {"chat_template": template}}}
    registry = ModelRegistry(settings_for_tests())
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2)}, config))
        registry.warm()  # does not fail the release: its chats need a system turn first
        assert registry.models()[0].engine["tokens_generated"] == 1
        with pytest.raises(BadRequestError, match="system first"):
            registry.chat(LLM, [ChatTurn("user", "Hi")], GREEDY)
    finally:
        registry.close()


@pytest.mark.slow
def test_swap_frees_the_old_model_after_its_last_request(smollm2: Path) -> None:
    loader = CountingLoader()
    registry = ModelRegistry(settings_for_tests(), loaders={"llm": loader})
    try:
        registry.activate(release("r1", {"old": ("llm", smollm2)}))
        lease = registry.lease_generator("old")
        started, go_on = threading.Event(), threading.Event()

        def slow_job(model: LlamaTextGenerator) -> str:
            started.set()
            go_on.wait(10)
            return "".join(p.text for p in model.complete("Hi", GREEDY))

        pending = lease.run(slow_job)  # type: ignore[arg-type]
        lease.release_when_done(pending)
        assert started.wait(10)
        registry.activate(release("r2", {"new": ("llm", smollm2)}))
        assert [m.name for m in registry.models()] == ["new"]
        assert loader.closes == []  # the old model is still busy
        go_on.set()
        assert pending.result(10)
        registry.warm()
        assert registry.complete("new", "Hi", GREEDY).text is not None
        for _ in range(100):
            if loader.closes:
                break
            threading.Event().wait(0.05)
        assert loader.closes == ["old"]
    finally:
        registry.close()


@pytest.mark.slow
def test_full_queue_is_refused_immediately(smollm2: Path) -> None:
    registry = ModelRegistry(settings_for_tests(max_queue=2))
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2)}))
        first, second = registry.lease(LLM, "llm"), registry.lease(LLM, "llm")
        with pytest.raises(BusyError, match="max_queue=2"):
            registry.lease(LLM, "llm")
        first.release()
        registry.lease(LLM, "llm").release()
        second.release()
    finally:
        registry.close()


@pytest.mark.slow
def test_prompt_longer_than_the_release_context_is_refused_with_counts(smollm2: Path) -> None:
    registry = ModelRegistry(settings_for_tests())
    try:
        config = {"models": {LLM: {"n_ctx": 128}}}
        registry.activate(release("r1", {LLM: ("llm", smollm2)}, config))
        assert registry.context_length(LLM) == 128
        with pytest.raises(ContextOverflowError, match=r"the prompt is \d+ tokens .* 128 tokens"):
            registry.chat(LLM, [ChatTurn("user", "tell me " * 100)], GREEDY)
        assert registry.chat(LLM, [ChatTurn("user", "Hi")], GREEDY).text
    finally:
        registry.close()


@pytest.mark.slow
def test_chat_template_from_release_config_is_used(smollm2: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    registry = ModelRegistry(settings_for_tests())
    try:
        config = {"models": {LLM: {"chat_template": template}}}
        registry.activate(release("r1", {LLM: ("llm", smollm2)}, config))
        plain = registry.chat(LLM, [ChatTurn("user", "The capital of France is")], GREEDY)
        assert plain.prompt_tokens == 5  # no system prompt, no role markers
        assert "paris" in plain.text.lower()
    finally:
        registry.close()


@pytest.mark.slow
def test_unknown_chat_format_fails_on_load_with_a_config_error(smollm2: Path) -> None:
    registry = ModelRegistry(settings_for_tests())
    try:
        config = {"models": {LLM: {"chat_format": "no-such-format"}}}
        registry.activate(release("r1", {LLM: ("llm", smollm2)}, config))
        with pytest.raises(ConfigError, match="unknown chat_format 'no-such-format'"):
            registry.chat(LLM, [ChatTurn("user", "Hi")], GREEDY)
    finally:
        registry.close()


@pytest.mark.slow
def test_a_chat_model_can_also_serve_as_an_embedding_artifact(smollm2: Path) -> None:
    registry = ModelRegistry(settings_for_tests())
    try:
        registry.activate(release("r1", {"smol-embed": ("embedding", smollm2)}))
        vectors = registry.embed("smol-embed", ["hello world", "goodbye"])
        assert [len(v) for v in vectors] == [576, 576]  # mean-pooled: one vector per text
        assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-4
        with pytest.raises(NotFoundError, match="is a embedding model, not an llm model"):
            registry.chat("smol-embed", [ChatTurn("user", "Hi")], GREEDY)
    finally:
        registry.close()


@pytest.mark.slow
def test_idle_models_are_unloaded_in_the_background(smollm2: Path) -> None:
    registry = ModelRegistry(settings_for_tests(idle_unload_seconds=0.2))
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2)}))
        registry.warm()
        assert registry.models()[0].loaded
        for _ in range(100):
            if not registry.models()[0].loaded:
                break
            threading.Event().wait(0.05)
        assert not registry.models()[0].loaded
        assert registry.complete(LLM, "Hello", GREEDY).completion_tokens > 0  # reloads
    finally:
        registry.close()


def test_default_threads_leave_one_core_for_the_api_and_never_drop_to_zero() -> None:
    settings = settings_for_tests(n_threads=None)
    assert resolve_options(settings, {}, "a", cpu_count=4).n_threads == 3
    assert resolve_options(settings, {}, "a", cpu_count=1).n_threads == 1
    assert resolve_options(settings_for_tests(n_threads=4), {}, "a", cpu_count=2).n_threads == 4
