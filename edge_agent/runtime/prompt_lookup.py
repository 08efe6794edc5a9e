"""Prompt-lookup drafting: guess the next tokens from the sequence itself (pure).

A grounded answer quotes its sources, so the tokens that follow the last few generated
tokens have often appeared already, in the prompt. The draft is what followed the most
recent earlier occurrence of the sequence's last n-gram; the engine checks the whole
draft in one decode batch and keeps the prefix the model agrees with. No second model.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DEFAULT_NGRAMS", "propose_draft"]

DEFAULT_NGRAMS = (3, 2)
"""The n-gram lengths tried, longest first: a longer match predicts better."""


def propose_draft(
    tokens: Sequence[int], max_draft: int, ngrams: Sequence[int] = DEFAULT_NGRAMS
) -> tuple[int, ...]:
    """Up to ``max_draft`` tokens that followed the most recent earlier occurrence of the
    last n-gram of ``tokens`` (each n of ``ngrams`` in turn); () when none occurs."""
    if max_draft <= 0:
        return ()
    length = len(tokens)
    for n in ngrams:
        if n <= 0 or length <= n:
            continue
        tail = tuple(tokens[length - n :])
        last = tail[-1]
        # an occurrence ending at ``end`` (exclusive) is followed by tokens[end:]
        for end in range(length - 1, n - 1, -1):
            if tokens[end - 1] == last and tuple(tokens[end - n : end]) == tail:
                return tuple(tokens[end : end + max_draft])
    return ()
