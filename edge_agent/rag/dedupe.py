"""Exact and near-duplicate detection: sha256 of normalized text, MinHash over word shingles."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import numpy.typing as npt

__all__ = ["MINHASH_PERMUTATIONS", "content_sha256", "estimated_jaccard", "minhash_signature"]

MINHASH_PERMUTATIONS = 64
_SHINGLE_WORDS = 5
_PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20261127)  # fixed: signatures must be comparable across runs
_A = _rng.integers(1, 1 << 28, MINHASH_PERMUTATIONS, dtype=np.uint64)
_B = _rng.integers(0, 1 << 60, MINHASH_PERMUTATIONS, dtype=np.uint64)
_WORD = re.compile(r"\w+")

Signature = npt.NDArray[np.uint64]


def content_sha256(normalized_text: str) -> str:
    """Exact-duplicate key of a normalized document."""
    return hashlib.sha256(normalized_text.encode("utf-8")).hexdigest()


def _shingle_hashes(text: str) -> npt.NDArray[np.uint64]:
    words = _WORD.findall(text.casefold())
    if len(words) < _SHINGLE_WORDS:
        grams = [" ".join(words)] if words else [text]
    else:
        grams = [" ".join(words[i : i + _SHINGLE_WORDS]) for i in range(len(words) - 4)]
    values = {
        int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in grams
    }
    return np.fromiter(values, dtype=np.uint64, count=len(values))


def minhash_signature(normalized_text: str) -> Signature:
    """MinHash signature of the document's 5-word shingles (64 universal hash functions)."""
    x = _shingle_hashes(normalized_text)
    # a < 2**28 and x < 2**32 keep a*x + b below 2**63: no uint64 overflow.
    hashed = (_A[:, None] * x[None, :] + _B[:, None]) % _PRIME
    signature: Signature = hashed.min(axis=1)
    return signature


def estimated_jaccard(a: Signature, b: Signature) -> float:
    """Share of equal MinHash slots: an unbiased estimate of the shingle-set Jaccard index."""
    return float(np.mean(a == b))
