"""The torch-free MiniLM converter: llama.cpp loads its GGUF and matches the numpy reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from converters.minilm_gguf import (
    ReferenceEncoder,
    WordPieceTokenizer,
    cached_gguf,
    default_source_dir,
    source_sha256,
)

if TYPE_CHECKING:
    from edge_agent.rag.llama import LlamaEmbedder

pytestmark = pytest.mark.slow

SENTENCES = (
    "The gateway restarts its sensors after a firmware update.",
    "Zürich, São Paulo and Kraków are on the delivery route!",
    "Датчик измеряет температуру; 传感器每三十秒报告一次。",
    "unaffable tokenization of hyperconnected™ devices (v2.5)",
)


@pytest.fixture(scope="module")
def reference() -> ReferenceEncoder:
    return ReferenceEncoder(default_source_dir())


def test_the_cache_reuses_the_converted_file(minilm_gguf: Path) -> None:
    before = minilm_gguf.stat().st_mtime_ns
    assert cached_gguf(minilm_gguf.parent) == minilm_gguf
    assert minilm_gguf.stat().st_mtime_ns == before
    assert source_sha256(default_source_dir())[:16] in minilm_gguf.name


def test_the_gguf_declares_a_mean_pooled_bert_with_a_wordpiece_vocab(minilm_gguf: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(minilm_gguf)

    def scalar(key: str) -> object:
        field = reader.fields[key]
        return field.contents()

    assert scalar("general.architecture") == "bert"
    assert scalar("bert.pooling_type") == int(gguf.PoolingType.MEAN)
    assert scalar("bert.attention.causal") is False
    assert scalar("tokenizer.ggml.model") == "bert"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 30522
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert len(reader.tensors) == 5 + 6 * 16


def test_llama_cpp_tokenizes_like_the_reference_tokenizer(embedder: LlamaEmbedder) -> None:
    tokenizer = WordPieceTokenizer.from_dir(default_source_dir())
    llm = embedder._llm
    for text in SENTENCES:
        assert llm.tokenize(text.encode()) == tokenizer.encode(text), text


def test_llama_cpp_vectors_match_the_numpy_reference(
    embedder: LlamaEmbedder, reference: ReferenceEncoder
) -> None:
    got = np.asarray(embedder.embed(list(SENTENCES)))
    want = reference.embed(SENTENCES)
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_the_reference_ranks_a_paraphrase_above_an_unrelated_sentence(
    reference: ReferenceEncoder,
) -> None:
    a, b, c = reference.embed(
        ["How long does the battery last?", "Battery life is about 18 months.", "Trucks park."]
    )
    assert a @ b > a @ c + 0.2
