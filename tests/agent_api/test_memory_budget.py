"""The memory estimate and the unload plan (pure), on the real SmolLM2 GGUF's header."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtime.memory_budget import (
    Resident,
    estimate,
    estimate_file,
    gguf_scalars,
    kv_shape,
    plan_unloads,
)


def test_kv_shape_comes_from_the_gguf_header(smollm2: Path) -> None:
    meta = gguf_scalars(smollm2)
    assert meta["general.architecture"] == "llama"
    shape = kv_shape(meta)
    assert shape is not None
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 -> 2 x 30 x 192 x 2 bytes per token
    assert (shape.layers, shape.k_width, shape.v_width) == (30, 192, 192)
    assert shape.bytes_per_token == 23_040


def test_estimate_counts_weights_kv_per_slot_and_the_prompt_cache(smollm2: Path) -> None:
    one = estimate_file(smollm2, n_ctx=2048, slots=1, prompt_cache_mb=0)
    four = estimate_file(smollm2, n_ctx=2048, slots=4, prompt_cache_mb=64)
    assert round(one.file_mb) == round(smollm2.stat().st_size / (1 << 20))
    assert four.kv_mb == 4 * one.kv_mb == 4 * 23_040 * 2048 / (1 << 20)
    assert four.total_mb - one.total_mb == 3 * one.kv_mb + 64
    assert "KV cache" in four.describe()


def test_a_file_that_is_not_gguf_counts_its_size_only(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * (3 << 20))
    got = estimate_file(path, n_ctx=2048, slots=4, prompt_cache_mb=0)
    assert (round(got.file_mb), got.kv_mb) == (3, 0.0)
    assert estimate(0, None, n_ctx=1, slots=1, prompt_cache_mb=0).total_mb == 16.0


def test_plan_unloads_least_recently_used_idle_models_until_it_fits() -> None:
    resident = [
        Resident("a", 100, idle=True, last_used=3),
        Resident("b", 100, idle=True, last_used=1),
        Resident("c", 100, idle=False, last_used=0),
    ]
    assert plan_unloads(50, 400, resident) == []
    assert plan_unloads(150, 400, resident) == ["b"]
    assert plan_unloads(250, 400, resident) == ["b", "a"]
    assert plan_unloads(350, 400, resident) is None  # c is busy: it never goes
