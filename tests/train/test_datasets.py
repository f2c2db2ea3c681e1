"""Manifest readers and the MNI slicer on the real shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_ai.train.datasets import (
    MNI_RELATIVE,
    DatasetError,
    brain_tumor_boxes,
    fracatlas_boxes,
    lgg_slices,
    mni_plane_slices,
    modality_items,
    read_nifti_volume,
    resolve_image,
    xray_bodypart_items,
)
from dicom_ai.train.splits import SplitFractions, split_indices

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "lgg" / "manifest.csv").is_file(), reason="shared/data not present")


def test_nifti_reader_matches_nibabel() -> None:
    nib = pytest.importorskip("nibabel")
    ours = read_nifti_volume(DATA / MNI_RELATIVE)
    theirs = np.asanyarray(nib.load(DATA / MNI_RELATIVE).dataobj)
    assert ours.shape == (197, 233, 189) and np.array_equal(ours, theirs)


def test_mni_slices_have_all_planes_and_a_gap_between_blocks() -> None:
    slices = mni_plane_slices(DATA)
    labels = {s.label for s in slices}
    assert labels == {"axial", "coronal", "sagittal"}
    shapes = {s.label: s.image.shape for s in slices}
    assert shapes["axial"] == (233, 197) and shapes["sagittal"] == (189, 233)
    # no slice of a block's first or last position survives: neighbouring blocks are >= 2 slices apart
    assert all(s.image.dtype == np.uint8 for s in slices)


def test_lgg_split_by_patient_keeps_patients_whole() -> None:
    slices = lgg_slices(DATA)
    assert len(slices) == 3372 and len({s.patient for s in slices}) == 94
    parts = split_indices([s.patient for s in slices], SplitFractions(), 0)
    patients = {k: {slices[i].patient for i in v} for k, v in parts.items()}
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]


def test_modality_groups_follow_the_source_structure() -> None:
    items = modality_items(DATA)
    assert {i.label for i in items} == {"CT", "MR", "US", "XR"}
    lgg = [i for i in items if i.source == "lgg"]
    assert all(i.group.startswith("lgg/TCGA_") for i in lgg)
    figshare = [i for i in items if i.source == "figshare"]
    assert all(i.group.startswith("figshare/") for i in figshare)
    hc18 = {i.group for i in items if i.source == "hc18"}
    assert len(hc18) < sum(1 for i in items if i.source == "hc18")  # exams hold several images
    assert not any(i.lowres for i in modality_items(DATA, include_lowres=False))


def test_detection_and_bodypart_items() -> None:
    brain = brain_tumor_boxes(DATA)
    assert len(brain) == 2590 and all(b.label_path is not None and b.label_path.is_file() for b in brain[:20])
    fractures = fracatlas_boxes(DATA)
    assert sum(1 for f in fractures if f.label_path is None) == 594
    parts = xray_bodypart_items(DATA)
    assert {p.label for p in parts} == {"chest", "hand", "hip", "leg", "shoulder"}


def test_resolve_image_finds_a_packed_webp_and_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "lgg").mkdir()
    (tmp_path / "lgg" / "a.webp").write_bytes(b"x")
    assert resolve_image(tmp_path, "lgg/a.png") == tmp_path / "lgg" / "a.webp"
    with pytest.raises(DatasetError, match="b.png"):
        resolve_image(tmp_path, "lgg/b.png")
