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
# Everyday photos among the sample images (the natural set), and the text images.
NATURAL_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "grace_hopper.jpg",
    "camera.png",
)
TEXT_PHOTOS = ("page.png", "text.png")


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


def _large_crops(
    sources: Sequence[BGRImage], count: int, seed: int, *, mirror: bool
) -> list[BGRImage]:
    rng = random.Random(seed)
    out: list[BGRImage] = []
    for i in range(count):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        fraction = rng.uniform(0.6, 0.95)
        cw, ch = max(16, int(w * fraction)), max(16, int(h * fraction))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img[y : y + ch, x : x + cw]
        if mirror and rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
    return out


def natural_variants(sources: Sequence[BGRImage], *, crops: int, seed: int) -> list[BGRImage]:
    """Photos as a user would send them: each source, its mirror image, and ``crops`` large
    crops (60-95% of each side, half of them mirrored) that keep the subject in view."""
    out = [np.ascontiguousarray(s) for s in sources]
    out += [np.ascontiguousarray(s[:, ::-1]) for s in sources]
    return out + _large_crops(sources, crops, seed, mirror=True)


def rotated_text_variants(sources: Sequence[BGRImage], *, crops: int, seed: int) -> list[BGRImage]:
    """Text for an orientation classifier: each source and ``crops`` large crops (never
    mirrored), every one turned by 0, 90, 180 and 270 degrees."""
    base = [np.ascontiguousarray(s) for s in sources]
    base += _large_crops(sources, crops, seed, mirror=False)
    turns = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)
    out: list[BGRImage] = []
    for img in base:
        out.append(img)
        out += [np.ascontiguousarray(cv2.rotate(img, turn)) for turn in turns]
    return out


def natural_set(images: Path, kind: str) -> list[BGRImage]:
    """The natural evaluation set from the sample images folder: ``photos`` (98 images:
    7 photos, their mirror images, 84 large crops) or ``rotated_text`` (56 images)."""
    if kind == "photos":
        sources = load_images([images / n for n in NATURAL_PHOTOS])
        return natural_variants(sources, crops=84, seed=7)
    if kind == "rotated_text":
        sources = load_images([images / n for n in TEXT_PHOTOS])
        return rotated_text_variants(sources, crops=12, seed=7)
    raise ValueError(f"unknown natural set {kind!r} (photos, rotated_text)")
