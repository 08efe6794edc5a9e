"""Model cards: a markdown page per converter output, written into ``models/``."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.vision.spec import VisionModelSpec


@dataclass(frozen=True)
class ModelCard:
    """Facts about one artifact; ``measurements`` is free-form JSON from the converter."""

    name: str
    title: str
    artifact: str
    format: str
    kind: str
    sha256: str
    size_bytes: int
    source: str
    license: str
    spec: VisionModelSpec
    produced_by: str
    measurements: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        cfg = self.spec.to_config()
        labels = cfg.pop("labels", [])
        shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} total)" if len(labels) > 8 else "")
        lines = [
            f"# {self.name}",
            "",
            self.title,
            "",
            "| field | value |",
            "| --- | --- |",
            f"| artifact | `{self.artifact}` |",
            f"| kind / format | {self.kind} / {self.format} |",
            f"| sha256 | `{self.sha256}` |",
            f"| size | {self.size_bytes} bytes |",
            f"| source | {self.source} |",
            f"| license | {self.license} |",
            f"| labels | {shown or 'n/a'} |",
            f"| produced by | `{self.produced_by}` |",
            f"| measured on | {platform.machine()} {platform.system()}, "
            f"Python {platform.python_version()} |",
            "",
            "## Release config entry (`config.vision.<artifact name>`, labels omitted here)",
            "",
            "```json",
            json.dumps(cfg, indent=2),
            "```",
            "",
        ]
        if self.measurements:
            lines += [
                "## Measured (accuracy agreement and latency)",
                "",
                "```json",
                json.dumps(self.measurements, indent=2),
                "```",
                "",
            ]
        if self.notes:
            lines += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.md"
        path.write_text(self.render())
        return path


def card_from_search_report(report: dict[str, Any], spec: VisionModelSpec, folder: Path) -> Path:
    """The card of an INT8 model chosen by ``converters quantize --target``, made from its
    report alone (regenerate it from the report; never edit it by hand)."""
    artifact = Path(report["artifact"])
    search = report["search"]
    chosen = report["chosen"]
    measurements = {
        "target": report["target"],
        "verdict": search["verdict"],
        "chosen_recipe": chosen["recipe"],
        "agreement_top1_vs_fp32": chosen["agreement"],
        "agreement_ci95": chosen["agreement_ci95"],
        "min_agreement": search["min_agreement"],
        "evaluation_images": chosen["evaluation_images"],
        "latency_ms": chosen["latency_ms"],
        "true_top1": chosen["true_top1"],
        "held_out": chosen["held_out"],
        "per_block": chosen["per_block"],
        "search": {
            "trials": len(search["trials"]),
            "stopped": search["stopped"],
            "seconds": report.get("search_seconds"),
            "seed": search["seed"],
            "time_budget_s": report["time_budget_s"],
            "curve": search["curve"],
        },
        "machine": report["machine"],
        "opset": report["opset"],
    }
    notes = (
        f"Generated from the search report of `{report['command'] or 'converters quantize'}`; "
        "regenerate it from the report, never edit it by hand.",
        "Agreement is INT8 vs FP32 top-1 on the evaluation set (the gate), with a Wilson 95% "
        "interval; latency is the p50 of both models timed interleaved in the same trial.",
        "Blocks are groups of graph nodes (a PyTorch module, or one weighted layer); "
        "`per_block` says which stayed float.",
    )
    card = ModelCard(
        name=report["name"],
        title=report["title"],
        artifact=artifact.name,
        format=artifact.suffix.lstrip("."),
        kind=f"vision-{spec.task}",
        sha256=report["artifact_sha256"],
        size_bytes=artifact.stat().st_size,
        source=f"{report['source']}; FP32 sha256 {report['source_sha256']}",
        license=report["license"],
        spec=spec,
        produced_by=report["command"] or "python -m converters quantize",
        measurements=measurements,
        notes=notes,
    )
    return card.write(folder)
