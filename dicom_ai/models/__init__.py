"""Models: architecture builders, the manifest of installed models, the registry that loads and runs them."""

from dicom_ai.models.architectures import build_classifier, build_detector, build_segmenter, load_detector
from dicom_ai.models.offline import ensure_ultralytics_offline

__all__ = ["build_classifier", "build_detector", "build_segmenter", "ensure_ultralytics_offline", "load_detector"]
