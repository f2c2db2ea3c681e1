"""Training sets: the named sets split like the plan, generic folder layouts, licences, a stable scoring order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_ai.train.datasets import DatasetError
from dicom_ai.train.sources import (
    ClassificationSet,
    DetectionSet,
    SegmentationSet,
    dataset_licence,
    training_set,
)
from dicom_ai.train.splits import stable_order

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "lgg" / "manifest.csv").is_file(), reason="shared/data not present")


def write_png(path: Path, value: int, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


@needs_data
def test_lgg_is_split_by_patient_and_the_cap_keeps_mid_volume_slices() -> None:
    source = training_set("segment", DATA, "lgg")
    assert isinstance(source, SegmentationSet) and source.location.endswith("lgg")
    whole = source.split(0)
    patients = {k: {source.slices[i].patient for i in v} for k, v in whole.indices.items()}
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    capped = source.split(0, 6)
    assert capped.counts() == {"train": 6, "val": 6, "test": 6}
    test = whole.indices["test"]
    assert capped.indices["test"] == test[len(test) // 2 : len(test) // 2 + 6]
    assert capped.record["fingerprint"] == source.split(0, 6).record["fingerprint"]
    assert "NON-COMMERCIAL" in source.licence


@needs_data
def test_named_classification_set_keeps_every_class_in_each_capped_split() -> None:
    source = training_set("classify", DATA, "xray_bodypart")
    assert isinstance(source, ClassificationSet)
    split = source.split(0, 2)
    for name, indices in split.indices.items():
        labels = [source.items[i].label for i in indices]
        assert sorted(set(labels)) == source.classes, name
        assert max(labels.count(c) for c in set(labels)) <= 2
    assert source.keys[0].startswith("fracatlas/images/") and "." not in source.keys[0]


def test_class_folders_and_a_csv_manifest(tmp_path: Path) -> None:
    for k in range(3):
        write_png(tmp_path / "folder" / "hand" / f"{k}.png", 40)
        write_png(tmp_path / "folder" / "chest" / f"{k}.png", 200)
    source = training_set("classify", tmp_path / "folder")
    assert isinstance(source, ClassificationSet) and source.classes == ["chest", "hand"]
    arrays = source.arrays(range(6), 32, classes=["HAND", "chest"])
    assert arrays.images.shape == (6, 1, 32, 32) and arrays.images.dtype == np.uint8
    assert sorted(arrays.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DatasetError, match="knee"):
        source.label_array([0], ["knee", "foot"])
    csv = tmp_path / "folder" / "list.csv"
    csv.write_text("path,label,group\nhand/0.png,hand,p1\nhand/1.png,hand,p1\nchest/0.png,chest,p2\n")
    listed = training_set("classify", csv)
    assert [i.group for i in listed.items] == ["p1", "p1", "p2"]  # type: ignore[union-attr]


def test_mask_pairs_and_yolo_layout(tmp_path: Path) -> None:
    write_png(tmp_path / "seg" / "p1" / "a.png", 100)
    write_png(tmp_path / "seg" / "p1" / "a_mask.png", 255)
    write_png(tmp_path / "seg" / "p2" / "b.png", 100)
    write_png(tmp_path / "seg" / "p2" / "b_mask.png", 0)
    seg = training_set("segment", tmp_path / "seg")
    assert isinstance(seg, SegmentationSet)
    assert [(s.patient, s.tumour_pixels > 0) for s in seg.slices] == [("p1", True), ("p2", False)]
    assert seg.arrays([0, 1], 32).masks[:, 0].reshape(2, -1).any(axis=1).tolist() == [True, False]
    det = tmp_path / "det"
    write_png(det / "images" / "x.png", 10)
    write_png(det / "images" / "y.png", 10)
    (det / "labels").mkdir()
    (det / "labels" / "x.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (det / "classes.txt").write_text("cat\ndog\n")
    boxes = training_set("detect", det)
    assert isinstance(boxes, DetectionSet) and boxes.classes == ("cat", "dog")
    assert [(i.label_path is not None, i.stratum) for i in boxes.items] == [(True, "boxes"), (False, "background")]


def test_bad_data_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        training_set("classify", tmp_path / "absent")
    with pytest.raises(DatasetError, match="unknown dataset 'knees'"):
        training_set("classify", tmp_path, "knees")
    with pytest.raises(DatasetError, match="classes.txt"):
        training_set("detect", tmp_path)
    write_png(tmp_path / "only" / "one.png", 1)
    with pytest.raises(DatasetError, match="two classes"):
        training_set("classify", tmp_path / "only")


def test_licence_line_of_a_readme(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Set\n\n- **Licence:** CC BY 4.0.  **Cite:** Someone 2023.\n- Count: 3\n")
    assert dataset_licence(tmp_path) == "CC BY 4.0."
    (tmp_path / "README.md").write_text("# Set\n- Licences: A for x;\n  B for y.\n- Next item\n")
    assert dataset_licence(tmp_path) == "A for x; B for y."
    assert dataset_licence(tmp_path / "elsewhere").startswith("not stated")


def test_stable_order_ignores_listing_order_and_mixes_classes() -> None:
    keys = [f"{label}/{k}" for label in ("CT", "MR") for k in range(20)]
    forward = [keys[i] for i in stable_order(keys, range(len(keys)))]
    backward_keys = keys[::-1]
    backward = [backward_keys[i] for i in stable_order(backward_keys, range(len(keys)))]
    assert forward == backward
    assert {k.split("/")[0] for k in forward[:6]} == {"CT", "MR"}


def test_dicom_files_in_patient_folders_are_decoded_by_the_pipeline_and_grouped(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    for label, name in (("CT", "CT_small.dcm"), ("MR", "MR_small.dcm")):
        for patient in ("p1", "p2"):
            target = tmp_path / label / patient / "1.dcm"
            target.parent.mkdir(parents=True)
            target.write_bytes(Path(get_testdata_file(name)).read_bytes())
    source = training_set("classify", tmp_path)
    assert isinstance(source, ClassificationSet)
    assert sorted({i.group for i in source.items}) == ["CT/p1", "CT/p2", "MR/p1", "MR/p2"]
    images = source.images(range(4), 32)
    assert images.shape == (4, 1, 32, 32) and all(int(image.max()) > int(image.min()) for image in images)


@needs_data
def test_mri_region_brain_rows_take_the_split_their_patient_or_block_has_in_lgg_and_brain_tumor_det() -> None:
    from dicom_ai.train.sources import named_set

    region = named_set("mri_region", DATA)
    split = region.split(0)
    lgg, figshare = named_set("lgg", DATA), named_set("brain_tumor_det", DATA)
    lgg_split, figshare_split = lgg.split(0), figshare.split(0)
    where = {f"lgg/{lgg.slices[i].patient}": name for name, ids in lgg_split.indices.items() for i in ids}
    where |= {figshare.items[i].group: name for name, ids in figshare_split.indices.items() for i in ids}
    checked = 0
    for name, ids in split.indices.items():
        for i in ids:
            item = region.items[i]
            if item.label == "brain":
                assert where[item.group] == name, (item.path, item.group)
                checked += 1
    assert checked == sum(1 for item in region.items if item.label == "brain") > 500
    groups = {name: {region.items[i].group for i in ids} for name, ids in split.indices.items()}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    assert {region.items[i].label for i in split.indices["test"]} == {"brain", "other"}
