"""The second stage's pure scoring: the weighted rule and late interaction (MaxSim)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.rag.rerank import (
    Candidate,
    RerankWeights,
    TokenVectors,
    late_interaction,
    rerank,
)


def _tokens(words: list[str], rows: list[list[float]]) -> TokenVectors:
    return TokenVectors(tuple(words), np.array(rows, dtype=np.float32))


def test_the_late_weight_lets_the_token_match_reorder_the_candidates() -> None:
    candidates = [Candidate(1, 0.60, 0.60, 0.0, 0.1), Candidate(2, 0.55, 0.55, 0.0, 0.9)]
    assert rerank(candidates, RerankWeights()) == [1, 2]
    assert rerank(candidates, RerankWeights(late=1.0)) == [2, 1]


def test_a_chunk_with_a_token_like_the_questions_content_word_scores_higher() -> None:
    question = _tokens(
        ["", "how", "grep", ""], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    )
    matching = _tokens(["", "grep", "case"], [[1, 0, 0, 0], [0, 0, 1, 0.1], [0, 0, 0, 1]])
    other = _tokens(["", "how", "case"], [[1, 0, 0, 0], [0, 1, 0, 0.1], [0, 0, 0, 1]])
    good, bad = late_interaction(question, ["grep"], [matching, other])
    assert good > bad


def test_only_the_questions_content_words_count() -> None:
    """ "how" is not a content word: a chunk that matches it and nothing else gains nothing."""
    question = _tokens(["how", "grep"], [[0, 1, 0, 0], [0, 0, 1, 0]])
    on_how = _tokens(["how", "x"], [[0, 1, 0, 0], [0, 0, 0, 1]])
    on_grep = _tokens(["grep", "x"], [[0, 0, 1, 0], [0, 0, 0, 1]])
    by_content = late_interaction(question, ["grep"], [on_how, on_grep])
    assert by_content[1] > by_content[0]
    by_all = late_interaction(question, [], [on_how, on_grep])  # no content word: all tokens
    assert by_all[0] == pytest.approx(by_all[1])


def test_special_tokens_of_a_chunk_never_match() -> None:
    question = _tokens(["grep"], [[0, 0, 1, 0]])
    special_only = _tokens(["", "other"], [[0, 0, 1, 0], [0, 0, 0, 1]])
    real = _tokens(["grep", "other"], [[0, 0, 1, 0], [0, 0, 0, 1]])
    special, matched = late_interaction(question, ["grep"], [special_only, real])
    assert matched > special


def test_the_direction_every_token_shares_is_removed_before_matching() -> None:
    """Token vectors of a mean-pooled model lean the same way (here the first axis): by
    plain cosine the chunk that shares only that lean matches best (0.90 against 0.89),
    centered on the candidates' mean token the one that shares the question's own
    direction (the second axis) does.
    """
    question = _tokens(["grep"], [[3.0, 1.0, 0, 0]])
    shares_lean = _tokens(["a", "b"], [[3.0, 0, 1.0, 0], [3.0, 0, 0, 1.0]])
    shares_meaning = _tokens(["c", "d"], [[1.0, 1.0, 0, 0], [0, 0, 1.0, 1.0]])
    lean_score, meaning_score = late_interaction(question, ["grep"], [shares_lean, shares_meaning])
    assert meaning_score > lean_score


def test_no_tokens_score_zero() -> None:
    question = _tokens(["grep"], [[0, 0, 1, 0]])
    empty = TokenVectors((), np.zeros((0, 4), dtype=np.float32))
    assert late_interaction(question, ["grep"], [empty]) == [0.0]
    assert late_interaction(TokenVectors((), np.zeros((0, 4), np.float32)), [], [empty]) == [0.0]
