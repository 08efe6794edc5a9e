"""Pool the held-out questions of several reports that ``python -m evals.realdocs --out``
wrote, as the CI gate pools its judges (every question counted once):

    python -m evals.realdocs.pool evals/results/realdocs.json \\
        evals/results/realdocs-pack2.json evals/results/realdocs-pack4.json

It prints recall@1/5, MRR and nDCG@10 per retriever and what the gate's rule
(``beats_single_retrievers``) says of the shipped one. It runs no model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evals.realdocs.harness import beats_single_retrievers, pooled

SHOWN = ("recall@1", "recall@5", "mrr", "ndcg@10", "answerable_abstained", "unanswerable_abstained")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.realdocs.pool", description=__doc__)
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.reports]
    shipped = {r["shipped_mode"] for r in reports}
    if len(shipped) != 1:
        parser.error(f"the reports were made with different shipped modes: {sorted(shipped)}")
    results = pooled(reports)
    answerable = sum(r["questions"]["heldout"]["answerable"] for r in reports)
    print(f"{len(reports)} reports, {answerable} answerable held-out questions")
    for mode, metrics in results.items():
        print(f"{mode:8} " + "  ".join(f"{k} {metrics[k]}" for k in SHOWN if k in metrics))
    failed = beats_single_retrievers(results, shipped.pop())
    print("gate: " + ("; ".join(failed) if failed else "the shipped retriever beats both"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
