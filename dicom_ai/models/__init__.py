"""Models: architecture builders, the manifest of installed models, weights files, the registry that loads them."""

from dicom_ai.models.architectures import build_classifier, build_detector, build_segmenter, load_detector
from dicom_ai.models.device import DeviceUnavailable, resolve_device
from dicom_ai.models.manifest import ManifestError, ModelSpec, read_manifest, upsert_model_spec
from dicom_ai.models.offline import ensure_ultralytics_offline
from dicom_ai.models.registry import LoadedModel, ModelRegistry, ModelStatus, ModelUnavailable
from dicom_ai.models.weights import WeightsError, file_sha256, load_weights, save_weights

__all__ = ["DeviceUnavailable", "LoadedModel", "ManifestError", "ModelRegistry", "ModelSpec", "ModelStatus",
           "ModelUnavailable", "WeightsError", "build_classifier", "build_detector", "build_segmenter",
           "ensure_ultralytics_offline", "file_sha256", "load_detector", "load_weights", "read_manifest",
           "resolve_device", "save_weights", "upsert_model_spec"]
