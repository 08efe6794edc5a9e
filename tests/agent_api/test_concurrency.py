"""Several generations at once on one real model (SmolLM2 in llama.cpp), the prompt cache
and the memory budget across models (issue 13).

Reuse is asserted on the prompt tokens the engine evaluated (its counters, also in
``/v1/status``), never on time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from edge_agent.errors import BusyError, ResourceExhaustedError
from edge_agent.runtime import ChatTurn, ModelRegistry, Sampling
from edge_agent.runtime.llama import LlamaTextGenerator
from edge_agent.runtime.llama_batched import BatchedTextGenerator
from edge_agent.runtime.memory_budget import estimate_file
from edge_agent.runtime.options import resolve_options
from tests.agent_api.conftest import LLM, TOKEN, Served, release, settings_for_tests

pytestmark = pytest.mark.slow

GREEDY = Sampling(max_tokens=24, temperature=0)
QUESTIONS = [
    "What color is the sky?",
    "Name a fruit that is yellow.",
    "What is two plus two?",
    "Say hello in French.",
]


def _status_engine(served: Served) -> dict[str, Any]:
    body = httpx.get(
        f"{served.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ).json()
    (model,) = [m for m in body["models"] if m["name"] == LLM]
    engine: dict[str, Any] = model["engine"]
    return engine


def _stream(client: openai.OpenAI, question: str) -> str:
    stream = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": question}],
        max_tokens=14,
        temperature=0,
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_four_concurrent_streamed_chats_match_the_same_chats_one_at_a_time(
    served: Served,
) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    alone = [_stream(client, q) for q in QUESTIONS]
    assert all(alone)
    together: list[str | BaseException] = [""] * len(QUESTIONS)
    start = threading.Barrier(len(QUESTIONS))

    def run(i: int) -> None:
        try:
            start.wait()
            together[i] = _stream(client, QUESTIONS[i])
        except BaseException as e:  # reported below
            together[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    engine = _status_engine(served)
    assert engine["slots"] == 4
    assert engine["max_batch_sequences"] >= 2  # the chats were decoded in shared batches


def test_second_turns_of_interleaved_conversations_reuse_their_prefixes(served: Served) -> None:
    """Two conversations take turns on the live API: each second turn evaluates only what
    is new, not the history (the /v1/status counters say how many tokens were read)."""
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
    talks: dict[str, list[Any]] = {
        "a": [{"role": "user", "content": "Tell me about the sea. " * 12}],
        "b": [{"role": "user", "content": "Tell me about mountains. " * 12}],
    }
    first: dict[str, int] = {}
    for name, messages in talks.items():
        reply = client.chat.completions.create(
            model=LLM,
            messages=messages,
            max_tokens=8,
            temperature=0,
        )
        assert reply.usage is not None
        first[name] = reply.usage.prompt_tokens
        messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
        messages.append({"role": "user", "content": "And then?"})
    for name, messages in talks.items():
        before = _status_engine(served)["prompt_tokens_evaluated"]
        reply = client.chat.completions.create(
            model=LLM,
            messages=messages,
            max_tokens=8,
            temperature=0,
        )
        assert reply.usage is not None
        evaluated = _status_engine(served)["prompt_tokens_evaluated"] - before
        assert evaluated <= reply.usage.prompt_tokens - first[name] + 1, (name, evaluated)


def _turn_tokens(registry: ModelRegistry, turns: list[ChatTurn]) -> tuple[str, int, int]:
    """(reply, prompt tokens, prompt tokens evaluated) of one chat on the registry."""
    (model,) = registry.models()
    before = model.engine.get("prompt_tokens_evaluated", 0)
    result = registry.chat(LLM, turns, Sampling(max_tokens=6, temperature=0))
    (model,) = registry.models()
    return result.text, result.prompt_tokens, model.engine["prompt_tokens_evaluated"] - before


@pytest.mark.parametrize("cache_mb", [64, 0])
def test_one_slot_interleaved_conversations_come_back_from_the_ram_cache(
    smollm2: Path, cache_mb: int
) -> None:
    """With one slot, conversation b evicts a's sequence; a's second turn is restored from
    the RAM prompt cache (without one, it reads its whole history again)."""
    registry = ModelRegistry(settings_for_tests(n_parallel=1, prompt_cache_mb=cache_mb))
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2)}))
        a = [ChatTurn("user", "Describe a quiet harbour at dawn. " * 6)]
        b = [ChatTurn("user", "List some tools a carpenter uses. " * 6)]
        reply_a, n_a, _ = _turn_tokens(registry, a)
        _turn_tokens(registry, b)
        a2 = [*a, ChatTurn("assistant", reply_a), ChatTurn("user", "Go on.")]
        _reply, n_a2, evaluated = _turn_tokens(registry, a2)
        if cache_mb:
            assert evaluated <= n_a2 - n_a + 1
            assert registry.models()[0].engine["ram_cache_restores"] == 1
        else:  # only the system prompt it shares with b is reused: its history is re-read
            assert evaluated > n_a2 - n_a + 1
            assert registry.models()[0].engine["ram_cache_restores"] == 0
    finally:
        registry.close()


def test_batched_engine_matches_the_single_sequence_path(smollm2: Path) -> None:
    """Same chat formatting and sampling (repeat penalty included) as llama-cpp-python's
    own generation: the same greedy replies and token counts."""
    settings = settings_for_tests()
    options = resolve_options(settings, {}, LLM)
    rel = release("r1", {LLM: ("llm", smollm2)})
    artifact = rel.artifacts[0]
    single = LlamaTextGenerator.load(artifact, options)
    batched = BatchedTextGenerator.load(artifact, options)
    try:
        for question in QUESTIONS[:2]:
            turns = [ChatTurn("user", question)]
            want = [(p.text, p.finish_reason, p.prompt_tokens) for p in single.chat(turns, GREEDY)]
            got = [(p.text, p.finish_reason, p.prompt_tokens) for p in batched.chat(turns, GREEDY)]
            assert "".join(t for t, _, _ in got) == "".join(t for t, _, _ in want)
            assert got[-1][1:] == want[-1][1:]
        prompt = "The capital of France is"
        want_c = "".join(p.text for p in single.complete(prompt, GREEDY))
        assert "".join(p.text for p in batched.complete(prompt, GREEDY)) == want_c
    finally:
        single.close()
        batched.close()


def test_memory_budget_unloads_the_least_recently_used_idle_model(smollm2: Path) -> None:
    """Three chat models, a budget that holds two: each load beyond it unloads the least
    recently used idle model first; a model in use is never unloaded, and the estimate of
    what is loaded never exceeds the budget."""
    base = settings_for_tests(prompt_cache_mb=8)
    one = estimate_file(smollm2, n_ctx=base.n_ctx, slots=base.n_parallel, prompt_cache_mb=8)
    budget = int(one.total_mb * 2.5)
    registry = ModelRegistry(settings_for_tests(prompt_cache_mb=8, memory_budget_mb=budget))
    names = ["m1", "m2", "m3"]
    try:
        registry.activate(release("r1", {n: ("llm", smollm2) for n in names}))
        hi = [ChatTurn("user", "Hi")]
        quick = Sampling(max_tokens=2, temperature=0)

        def loaded() -> set[str]:
            return {m.name for m in registry.models() if m.loaded}

        for name in names[:2]:
            registry.chat(name, hi, quick)
        assert loaded() == {"m1", "m2"}
        registry.chat("m1", hi, quick)  # m2 is now the least recently used
        registry.chat("m3", hi, quick)
        assert loaded() == {"m1", "m3"}
        report = registry.memory_report()
        assert report["estimated_mb"] <= budget
        (unloaded,) = report["unloaded"]
        assert (unloaded["model"], unloaded["for_model"]) == ("m2", "m3")
        assert "memory_budget_mb" in unloaded["reason"]
        with (
            registry.lease_generator("m1"),
            registry.lease_generator("m3"),
            pytest.raises(BusyError, match="taken by models in use"),
        ):
            registry.chat("m2", hi, quick)  # both others are busy: refuse, never exceed
        assert loaded() == {"m1", "m3"}
        assert registry.memory_report()["estimated_mb"] <= budget
    finally:
        registry.close()


def test_a_model_larger_than_the_budget_is_refused_naming_the_numbers(smollm2: Path) -> None:
    registry = ModelRegistry(settings_for_tests(memory_budget_mb=20))
    try:
        registry.activate(release("r1", {LLM: ("llm", smollm2)}))
        with pytest.raises(ResourceExhaustedError, match=r"needs about \d+ MB .*budget_mb is 20"):
            registry.chat(LLM, [ChatTurn("user", "Hi")], GREEDY)
        assert not registry.models()[0].loaded
    finally:
        registry.close()


def test_status_reports_the_memory_estimates_of_loaded_models(served: Served) -> None:
    body = httpx.get(
        f"{served.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ).json()
    memory = body["memory"]
    assert memory["budget_mb"] is None and memory["unloaded"] == []
    assert memory["loaded_mb"][LLM] > 0
    assert memory["estimated_mb"] == round(sum(memory["loaded_mb"].values()), 1)
