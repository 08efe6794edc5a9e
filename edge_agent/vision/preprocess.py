"""Image -> model input tensor, and model-input coordinates -> original pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.vision.decode import BGRImage
from edge_agent.vision.spec import PreprocessSpec

# names of OpenCV's flags: cv2 (about 30 MB resident) is imported on first use, so an
# agent whose release has no vision model never loads it
_INTERPOLATION = {
    "linear": "INTER_LINEAR",
    "area": "INTER_AREA",
    "cubic": "INTER_CUBIC",
    "lanczos": "INTER_LANCZOS4",
}


@dataclass(frozen=True)
class Geometry:
    """Maps model-input pixels back to the original image: ``orig = (input - offset) / scale``."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int
    height: int

    def to_original(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map ``[..., (x_min, y_min, x_max, y_max)]`` boxes to clipped original pixels."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[..., 0::2] = (boxes[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (boxes[..., 1::2] - self.offset_y) / self.scale_y
        out[..., 0::2] = np.clip(out[..., 0::2], 0.0, float(self.width))
        out[..., 1::2] = np.clip(out[..., 1::2], 0.0, float(self.height))
        return out

    def points_to_original(self, points: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map ``[..., (x, y)]`` points to original pixels (not clipped)."""
        out = np.empty_like(points, dtype=np.float32)
        out[..., 0] = (points[..., 0] - self.offset_x) / self.scale_x
        out[..., 1] = (points[..., 1] - self.offset_y) / self.scale_y
        return out


def fit_to_input(image: BGRImage, spec: PreprocessSpec) -> tuple[BGRImage, Geometry]:
    """Resize (and crop or pad) ``image`` to the model input size per ``spec.resize``."""
    h, w = image.shape[:2]
    tw, th = spec.size
    import cv2

    interp = int(getattr(cv2, _INTERPOLATION[spec.interpolation]))
    if spec.resize == "stretch":
        sx, sy = tw / w, th / h
        resized = cv2.resize(image, (tw, th), interpolation=interp)
        return np.asarray(resized, dtype=np.uint8), Geometry(sx, sy, 0.0, 0.0, w, h)
    if spec.resize == "letterbox":
        s = min(tw / w, th / h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        left, top = (tw - nw) // 2, (th - nh) // 2
        canvas = np.full((th, tw, 3), spec.pad_value, dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = resized
        return canvas, Geometry(nw / w, nh / h, float(left), float(top), w, h)
    # center_crop: scale so the crop window covers crop_fraction of the short side.
    s = max(tw / w, th / h) / spec.crop_fraction
    nw, nh = max(tw, round(w * s)), max(th, round(h * s))
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    left, top = (nw - tw) // 2, (nh - th) // 2
    crop = np.ascontiguousarray(resized[top : top + th, left : left + tw], dtype=np.uint8)
    return crop, Geometry(nw / w, nh / h, float(-left), float(-top), w, h)


def to_tensor(fitted: BGRImage, spec: PreprocessSpec) -> npt.NDArray[np.generic]:
    """Colour order, normalization, dtype and layout of a fitted image; adds the batch axis."""
    img = fitted if spec.color == "bgr" else fitted[..., ::-1]
    if spec.dtype == "uint8":
        arr: npt.NDArray[np.generic] = np.ascontiguousarray(img, dtype=np.uint8)
    else:
        mean = np.asarray(spec.mean, dtype=np.float32)
        inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
        f = (img.astype(np.float32) * np.float32(spec.scale) - mean) * inv_std
        arr = f.astype(np.float16 if spec.dtype == "float16" else np.float32, copy=False)
    if spec.layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[np.newaxis])


def prepare(image: BGRImage, spec: PreprocessSpec) -> tuple[npt.NDArray[np.generic], Geometry]:
    """The model's input tensor for ``image`` and the geometry to map results back."""
    fitted, geometry = fit_to_input(image, spec)
    return to_tensor(fitted, spec), geometry
