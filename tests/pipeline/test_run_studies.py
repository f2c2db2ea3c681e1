"""Several studies analysed together (`analyse_studies`, a worker's cross-study batch) get the findings each gets
alone (`run_study`), with the shipped models and routing tree on real images wrapped as DICOM.

Studies of different routes share the batch: brain MR single images (honest header: detector and segmenter; bare
header: the classifiers decide, another plane), a three-slice LGG FLAIR series, and a hand radiograph (another
branch of the tree at the same depth). `batch_size` 3 makes the forward-pass chunks straddle studies.

"The same findings": every route, label, outcome, count, box and mask identical; floats (probabilities, scores,
box corners in source pixels) within FLOAT_TOLERANCE. A frame's output does not depend on the other frames of its
forward pass, but a CPU matrix product of another batch size can round differently in the last bits of float32
(seen: 7e-9 in a probability, 1.5e-5 px in a box corner of a 512-pixel image, i.e. half a float32 step there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_ai.pipeline.findings import StudyFindings
from dicom_ai.pipeline.run import analyse_studies, run_study
from tests.e2e.studies import DATA_ROOT, brain_mr_study, hand_dx_study
from tests.pipeline import trained

MODELS = trained.REPO_ROOT / "models"
FLOAT_TOLERANCE = 1e-4
CLOCKS = frozenset({"started_at", "finished_at", "timings"})
BATCH = 3


@pytest.fixture(scope="module")
def registry():
    from dicom_ai.models.registry import ModelRegistry

    return ModelRegistry(MODELS, device="cpu")


@pytest.fixture(scope="module")
def routing():
    from dicom_ai.pipeline import load_routing

    return load_routing(MODELS / "routing.toml")


def brain_image_studies(folder: Path, count: int) -> list[list[Path]]:
    """The first `count` brain tumour detection test images as one-image MR studies (honest headers), and the
    first of them once more with a bare header (Secondary Capture, nothing a router could read)."""
    from dicom_ai.train.pipeline_eval import build_study
    from dicom_ai.train.study_specs import dataset_studies

    specs = dataset_studies("brain_tumor_det", DATA_ROOT, limit=count).studies
    built = [build_study(spec, "honest", folder / f"det{i}") for i, spec in enumerate(specs)]
    built.append(build_study(specs[0], "bare", folder / "bare"))
    return [list(b.files) for b in built]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[list[Dataset]]:
    folder = tmp_path_factory.mktemp("studies")
    files = [*brain_image_studies(folder, 2), list(brain_mr_study(folder / "lgg", 20, 3).files),
             list(hand_dx_study(folder / "hand").files)]
    return [[pydicom.dcmread(path) for path in study] for study in files]


@pytest.fixture(scope="module")
def alone(studies, registry, routing) -> list[StudyFindings]:
    return [run_study(study, registry, routing, batch_size=BATCH) for study in studies]


def assert_same_findings(together: StudyFindings, alone: StudyFindings) -> None:
    """Equal but for clocks and timings, floats within FLOAT_TOLERANCE; masks pixel for pixel."""
    assert_close(together.to_dict(), alone.to_dict(), "findings")
    for series_together, series_alone in zip(together.series, alone.series, strict=True):
        for seg_together, seg_alone in zip(series_together.segmentations, series_alone.segmentations, strict=True):
            for frame_together, frame_alone in zip(seg_together.frames, seg_alone.frames, strict=True):
                assert np.array_equal(frame_together.mask, frame_alone.mask), frame_alone.sop_instance_uid


def assert_close(together: Any, alone: Any, where: str, ignore: frozenset[str] = CLOCKS) -> None:
    """JSON-like values equal, floats within FLOAT_TOLERANCE, keys in `ignore` left out."""
    if isinstance(alone, float) and isinstance(together, float):
        assert together == pytest.approx(alone, abs=FLOAT_TOLERANCE), where
    elif isinstance(alone, dict):
        assert together.keys() == alone.keys(), where
        for key in alone.keys() - ignore:
            assert_close(together[key], alone[key], f"{where}.{key}", ignore)
    elif isinstance(alone, list):
        assert len(together) == len(alone), where
        for index, (a, b) in enumerate(zip(together, alone)):
            assert_close(a, b, f"{where}[{index}]", ignore)
    else:
        assert together == alone, where


def test_studies_analysed_together_get_the_findings_each_gets_alone(studies, alone, registry, routing) -> None:
    together = analyse_studies(studies, registry, routing, batch_size=BATCH)
    assert len(together) == len(studies)
    for found, expected in zip(together, alone):
        assert isinstance(found, StudyFindings)
        assert_same_findings(found, expected)
    # The batch really mixes routes and models: boxes, masks, a classifier-decided plane, an X-ray branch.
    series = [study.series[0] for study in alone]
    assert any(s.detections for s in series) and any(s.segmentations for s in series)
    assert {s.route_labels[-1] for s in series} >= {"axial", "hand"}
    assert any(d.decided_by == "classifier" for s in series for d in s.route)
    assert all("detection:brain_tumor_det" in s.timings for s in series[:-1])


def test_a_study_that_cannot_be_read_fails_alone_while_the_others_are_analysed(studies, alone, registry,
                                                                               routing) -> None:
    two_studies = [*studies[0], *studies[2]]  # one job's files holding two studies: run_study refuses them
    with pytest.raises(ValueError, match="2 studies"):
        run_study(two_studies, registry, routing)
    together = analyse_studies([studies[1], two_studies, studies[3]], registry, routing, batch_size=BATCH)
    assert isinstance(together[1], ValueError) and "2 studies" in str(together[1])
    assert isinstance(together[0], StudyFindings) and isinstance(together[2], StudyFindings)
    assert_same_findings(together[0], alone[1])
    assert_same_findings(together[2], alone[3])


def test_a_study_without_images_is_analysed_with_the_others(studies, alone, registry, routing) -> None:
    empty, image = analyse_studies([[], studies[0]], registry, routing, batch_size=BATCH)
    assert isinstance(empty, StudyFindings) and empty.series == () and empty.study_instance_uid == ""
    assert isinstance(image, StudyFindings)
    assert_same_findings(image, alone[0])
