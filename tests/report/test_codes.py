"""The label -> code table: every label the hierarchy uses is coded, aliases resolve, unknown labels are refused."""

from __future__ import annotations

import pytest

from dicom_ai.report import codes


@pytest.mark.parametrize(("label", "value", "scheme"), [
    ("MRI", "MR", "DCM"), ("CT", "CT", "DCM"), ("X-ray", "DX", "DCM"), ("Ultrasound", "US", "DCM"),
    ("Brain", "12738006", "SCT"), ("Knee", "72696002", "SCT"), ("Hand", "85562004", "SCT"),
    ("Shoulder", "16982005", "SCT"), ("Hip", "29836001", "SCT"), ("Leg", "30021000", "SCT"),
    ("Chest", "51185008", "SCT"), ("Elbow", "127949000", "SCT"), ("Wrist", "8205005", "SCT"),
    ("Finger", "7569003", "SCT"), ("Forearm", "14975008", "SCT"), ("Humerus", "85050009", "SCT"),
    ("axial", "62824007", "SCT"), ("Sagittal", "30730003", "SCT"), ("coronal", "81654009", "SCT"),
    ("tumor", "108369006", "SCT"), ("glioma", "393564001", "SCT"), ("meningioma", "302820008", "SCT"),
    ("pituitary tumour", "254956000", "SCT"), ("fracture", "125605004", "SCT"),
])
def test_every_hierarchy_label_has_a_code(label: str, value: str, scheme: str) -> None:
    code = codes.label_code(label)
    assert (code.value, code.scheme_designator) == (value, scheme)
    assert code.meaning


def test_findings_carry_a_segmented_property_category() -> None:
    for concept in codes.FINDINGS.values():
        assert concept.category is not None


def test_route_values_use_the_table_of_their_node() -> None:
    assert codes.route_value_code("modality", "MRI") == codes.MODALITIES["mr"]
    assert codes.route_value_code("region", "knee") == codes.REGIONS["knee"]
    assert codes.route_value_code("plane", "sagittal") == codes.PLANES["sagittal"]
    with pytest.raises(codes.UnknownLabel, match="plane label 'knee'"):
        codes.route_value_code("plane", "knee")


def test_unknown_label_names_the_table_to_extend() -> None:
    with pytest.raises(codes.UnknownLabel, match="dicom_ai/report/codes.py"):
        codes.label_code("banana")


def test_unknown_route_node_gets_a_local_concept_name() -> None:
    name = codes.route_node_name("lung model")
    assert name.scheme_designator == codes.LOCAL_SCHEME and len(name.value) <= 16
