"""The fixed, versioned workload every device runs: the same prompts, sentences, questions
and images, so numbers from two devices (or two releases) compare.

``workload/workload.json`` holds the texts and the sha256 of each image under
``workload/images``; a changed or missing image is refused (the results would not compare).
Bump ``version`` whenever anything in it changes: results carry it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_tests.errors import WorkloadError

__all__ = ["WORKLOAD_DIR", "Workload", "load_workload"]

WORKLOAD_DIR = Path(__file__).resolve().parent / "workload"


@dataclass(frozen=True)
class Workload:
    version: str
    chat_prompts: tuple[str, ...]
    chat_max_tokens: int
    sentences: tuple[str, ...]
    questions: tuple[str, ...]
    rag_k: int
    image_rules: tuple[tuple[str, tuple[str, ...]], ...]  # (model name pattern, files)
    images: dict[str, bytes]

    def images_for(self, model: str) -> tuple[bytes, ...]:
        """The images a vision model is measured on: the first rule whose pattern matches."""
        for pattern, files in self.image_rules:
            if fnmatch.fnmatchcase(model, pattern):
                return tuple(self.images[f] for f in files)
        raise WorkloadError(f"the workload has no images for vision model {model!r}")

    def pick(self, items: tuple[str, ...], i: int) -> str:
        return items[i % len(items)]


def load_workload(root: Path = WORKLOAD_DIR) -> Workload:
    """The shipped workload, with every image checked against its recorded sha256."""
    try:
        raw: dict[str, Any] = json.loads((root / "workload.json").read_text(encoding="utf-8"))
        images: dict[str, bytes] = {}
        for name, digest in raw["files"].items():
            data = (root / "images" / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise WorkloadError(
                    f"workload image {name} does not match its recorded sha256 (reinstall"
                    " device_tests, or bump the workload version if it changed on purpose)"
                )
            images[name] = data
        rules = tuple(
            (str(r["match"]), tuple(str(f) for f in r["files"])) for r in raw["vision"]["images"]
        )
        for _, files in rules:
            for f in files:
                if f not in images:
                    raise WorkloadError(f"workload rule names image {f!r}, not in its files")
        return Workload(
            version=str(raw["version"]),
            chat_prompts=tuple(raw["chat"]["prompts"]),
            chat_max_tokens=int(raw["chat"]["max_tokens"]),
            sentences=tuple(raw["embedding"]["sentences"]),
            questions=tuple(raw["rag"]["questions"]),
            rag_k=int(raw["rag"]["k"]),
            image_rules=rules,
            images=images,
        )
    except OSError as e:
        raise WorkloadError(f"the workload under {root} cannot be read: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise WorkloadError(f"the workload under {root} is damaged: {e!r}") from e
