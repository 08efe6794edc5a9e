"""Deterministic image sets for calibration and agreement checks, cut from sample photos.

A handful of public-domain photos is too few to calibrate or to measure agreement, so
each set is made of random crops (scale, aspect, flip) drawn with a fixed seed; the
calibration and evaluation sets use different seeds so they never share an image.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_agent.vision.decode import BGRImage, decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MAX_SOURCE_PIXELS = 100_000_000


def list_images(folder: Path) -> list[Path]:
    """PNG/JPEG files directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"no PNG or JPEG images in {folder}")
    return found


def load_images(paths: Sequence[Path]) -> list[BGRImage]:
    """Decode images with the agent's own decoder (same conversions as on the device)."""
    return [decode_image(p.read_bytes(), max_pixels=_MAX_SOURCE_PIXELS).pixels for p in paths]


def random_crops(sources: Sequence[BGRImage], count: int, seed: int) -> list[BGRImage]:
    """``count`` crops covering 30-100% of a source's area, aspect 3:4..4:3, half flipped."""
    rng = random.Random(seed)
    out: list[BGRImage] = []
    for i in range(count):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = rng.uniform(3 / 4, 4 / 3)
        cw = int(min(w, max(16, round((area * aspect) ** 0.5))))
        ch = int(min(h, max(16, round((area / aspect) ** 0.5))))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
    return out


def write_image_set(
    source_folder: Path, target: Path, *, count: int, seed: int, include_sources: bool = False
) -> list[Path]:
    """Write a crop set as PNGs into ``target`` (replacing what a previous run left)."""
    sources = load_images(list_images(source_folder))
    images = list(sources) if include_sources else []
    images += random_crops(sources, count, seed)
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.png"):
        old.unlink()
    written = []
    for i, img in enumerate(images):
        path = target / f"{i:04d}.png"
        if not cv2.imwrite(str(path), img):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written
