"""``python -m evals.realdocs --set KEY=VALUE`` tries a variant of the shipped settings on
the eval: each key lands on its field, anything else is refused with a message, and a
variant can never be recorded or checked as a baseline. No model runs.
"""

from __future__ import annotations

import pytest

from edge_agent.rag import RetrievalSettings
from edge_agent.rag.grounding import EvidencePolicy
from evals.realdocs.harness import main, variant


def test_no_assignment_is_what_ships() -> None:
    assert variant([]) == (RetrievalSettings(), EvidencePolicy())


def test_each_key_lands_on_its_field_and_nothing_else() -> None:
    settings, policy = variant(
        [
            "rerank.sentence=0.5",
            "evidence.max_unknown_share=0.4",
            "retrieval.rerank_candidates=10",
        ]
    )
    shipped = RetrievalSettings()
    assert settings.rerank_weights.sentence == 0.5
    assert settings.rerank_weights.terms == shipped.rerank_weights.terms
    assert settings.rerank_candidates == 10 and isinstance(settings.rerank_candidates, int)
    assert settings.late_weights == shipped.late_weights
    assert policy.max_unknown_share == 0.4
    assert policy.min_similarity == EvidencePolicy().min_similarity


@pytest.mark.parametrize(
    "bad",
    ["rerank.nope=1", "evidence.min_similarity=high", "retrieval.mode=1", "terms", "x.y=1"],
)
def test_a_bad_assignment_is_refused_with_the_keys_it_takes(bad: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE with KEY evidence"):
        variant([bad])


def test_a_count_takes_a_whole_number() -> None:
    with pytest.raises(ValueError, match=r"retrieval\.rerank_candidates is a whole number"):
        variant(["retrieval.rerank_candidates=10.5"])


@pytest.mark.parametrize("flag", ["--check-baseline", "--write-baseline"])
def test_a_variant_is_never_a_baseline(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--split", "heldout", "--set", "rerank.terms=0.5", flag])
    assert exit_info.value.code == 2
    assert "baselines hold for the shipped settings only" in capsys.readouterr().err
