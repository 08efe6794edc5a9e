"""Vision on the device: safe image decoding, declared preprocessing, INT8-ready backends.

The API layer asks a :class:`VisionModelProvider` for a model by name; the provider built
from an installed release is :class:`ReleaseVisionModels`.
"""

from edge_agent.vision.classification import Prediction, top_k
from edge_agent.vision.decode import DecodedImage, ImageHeader, decode_image, read_header
from edge_agent.vision.detection import Detection, non_max_suppression
from edge_agent.vision.model import Classification, Detections, StageTimes, VisionModel
from edge_agent.vision.preprocess import Geometry, prepare
from edge_agent.vision.provider import ReleaseVisionModels, VisionModelProvider, vision_entries
from edge_agent.vision.spec import BlazeFaceSpec, PreprocessSpec, VisionModelSpec

__all__ = [
    "BlazeFaceSpec",
    "Classification",
    "DecodedImage",
    "Detection",
    "Detections",
    "Geometry",
    "ImageHeader",
    "Prediction",
    "PreprocessSpec",
    "ReleaseVisionModels",
    "StageTimes",
    "VisionModel",
    "VisionModelProvider",
    "VisionModelSpec",
    "decode_image",
    "non_max_suppression",
    "prepare",
    "read_header",
    "top_k",
    "vision_entries",
]
