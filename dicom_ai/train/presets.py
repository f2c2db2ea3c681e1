"""The two prepared training plans: `gpu` (the one run on a lent H200) and `smoke` (the same path, tiny, CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field

CLASSIFIER_CANDIDATES = ("resnet50", "densenet121", "vgg16")
SEGMENTER_CANDIDATES = ("unet", "attention_unet", "res50_unet")


@dataclass(frozen=True)
class DetectorPlan:
    """One detector in a detection stream: which YOLO yaml, input size, batch and share of the stream's time."""

    role: str  # "comparison" (paper size) or "shipped" (fits the weights budget)
    arch: str
    imgsz: int
    batch_size: int
    time_share: float


@dataclass(frozen=True)
class Plan:
    """Sizes, caps and shares for every stream of a plan (see dicom_ai.train.plan)."""

    name: str
    classifier_size: int
    classifier_batch: int
    classifier_epochs: int
    modality_archs: tuple[str, ...]
    small_classifier_arch: str
    segmenter_size: int
    segmenter_batch: int
    segmenter_epochs: int
    segmenter_archs: tuple[str, ...]
    brain_detectors: tuple[DetectorPlan, ...]
    fracture_detectors: tuple[DetectorPlan, ...]
    detector_epochs: int
    detector_workers: int
    items_per_split: int | None = None  # smoke: cap items per split (and per class where labelled)
    max_steps_per_epoch: int | None = None
    loader_threads: int = 8
    # Share of the segmentation stream's time per architecture (same order); None = equal shares.
    segmenter_shares: tuple[float, ...] | None = None
    seed: int = 0
    # Seconds each stream keeps back for loading data, testing and exporting.
    reserve_seconds: dict[str, float] = field(default_factory=dict)


GPU = Plan(
    name="gpu",
    classifier_size=224,
    classifier_batch=128,
    classifier_epochs=40,
    modality_archs=CLASSIFIER_CANDIDATES,
    small_classifier_arch="densenet121",
    segmenter_size=256,
    segmenter_batch=32,
    segmenter_epochs=80,
    segmenter_archs=SEGMENTER_CANDIDATES,
    brain_detectors=(
        # figshare slices are 256 x 256 in this copy: train at their native size, not upsampled to 640.
        DetectorPlan("comparison", "yolov5l", 256, 64, 0.4),
        DetectorPlan("shipped", "yolo11n", 256, 128, 0.6),
    ),
    fracture_detectors=(
        DetectorPlan("comparison", "yolov5l", 640, 32, 0.4),
        DetectorPlan("shipped", "yolo11n", 640, 64, 0.6),
    ),
    detector_epochs=300,
    detector_workers=5,
    loader_threads=6,
    reserve_seconds={"classify": 45.0, "segment": 40.0, "detect_brain": 80.0, "detect_fracture": 80.0},
)

# What 2 CPU cores train in about 100 minutes (the four streams share them): the paper's classifier and segmenter
# comparisons at reduced resolution, and only the small detectors (YOLOv5-L does not fit a CPU budget).
CPU = Plan(
    name="cpu",
    classifier_size=64,
    classifier_batch=32,
    classifier_epochs=40,
    modality_archs=CLASSIFIER_CANDIDATES,
    small_classifier_arch="densenet121",
    segmenter_size=128,
    segmenter_batch=8,
    segmenter_epochs=80,
    # the paper's choice first and with half the time: it ships whatever the comparison says at this budget
    segmenter_archs=("res50_unet", "unet", "attention_unet"),
    segmenter_shares=(0.5, 0.25, 0.25),
    brain_detectors=(DetectorPlan("shipped", "yolo11n", 256, 16, 1.0),),
    fracture_detectors=(DetectorPlan("shipped", "yolo11n", 320, 16, 1.0),),
    detector_epochs=80,
    detector_workers=0,
    max_steps_per_epoch=60,
    loader_threads=2,
    reserve_seconds={"classify": 150.0, "segment": 240.0, "detect_brain": 240.0, "detect_fracture": 240.0},
)

SMOKE = Plan(
    name="smoke",
    classifier_size=64,
    classifier_batch=8,
    classifier_epochs=2,
    modality_archs=CLASSIFIER_CANDIDATES,
    small_classifier_arch="densenet121",
    segmenter_size=64,
    segmenter_batch=4,
    segmenter_epochs=2,
    segmenter_archs=SEGMENTER_CANDIDATES,
    brain_detectors=(
        DetectorPlan("comparison", "yolov5l", 64, 4, 0.5),
        DetectorPlan("shipped", "yolo11n", 64, 4, 0.5),
    ),
    fracture_detectors=(
        DetectorPlan("comparison", "yolov5l", 96, 4, 0.5),
        DetectorPlan("shipped", "yolo11n", 96, 4, 0.5),
    ),
    detector_epochs=1,
    detector_workers=0,
    items_per_split=8,
    max_steps_per_epoch=2,
    loader_threads=2,
    reserve_seconds={"classify": 0.0, "segment": 0.0, "detect_brain": 0.0, "detect_fracture": 0.0},
)

PLANS = {"gpu": GPU, "cpu": CPU, "smoke": SMOKE}
