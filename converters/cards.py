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
