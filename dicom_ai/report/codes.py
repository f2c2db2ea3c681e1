"""The one table that maps class labels (as the pipeline and the models name them) to coded concepts.

Every label a classifier, detector or segmenter can emit is looked up here; nothing else in the report stage
spells a code. Codes are SNOMED CT (scheme designator "SCT") and DICOM (DCM, PS3.16) where the standard has one.
Concepts the standard does not define (the routing-tree nodes' header/pixel disagreement) use the private coding
scheme `LOCAL_SCHEME`, declared in each SR's CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from pydicom.sr.coding import Code

LOCAL_SCHEME = "99DICOMAI"
T = TypeVar("T")


@dataclass(frozen=True)
class LabelConcept:
    """A class label's coded meaning: `concept` is the value; `category` its segmented property category (CID 7150)
    when the label can be a segment or a finding; `region` the anatomic region it implies, if any."""

    concept: Code
    category: Code | None = None
    region: Code | None = None


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


# -- CID 7150 segmented property categories -------------------------------------------------------------------------
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically abnormal structure")
ANATOMICAL_STRUCTURE = _sct("91723000", "Anatomical structure")
FINDING_CATEGORY = _sct("404684003", "Clinical finding")

# -- modalities (CID 29, DCM) ---------------------------------------------------------------------------------------
MODALITIES: dict[str, Code] = {
    "ct": _dcm("CT", "Computed Tomography"),
    "mr": _dcm("MR", "Magnetic Resonance"),
    "us": _dcm("US", "Ultrasound"),
    "dx": _dcm("DX", "Digital Radiography"),
    "cr": _dcm("CR", "Computed Radiography"),
    "xa": _dcm("XA", "X-Ray Angiography"),
    "mg": _dcm("MG", "Mammography"),
    "pt": _dcm("PT", "Positron emission tomography"),
    "nm": _dcm("NM", "Nuclear Medicine"),
    # the classifier's "XR" stands for projection radiography of any kind (CR, DX, ...): CID 29 has no such code
    "xr": _sct("168537006", "Plain radiography"),
}
MODALITY_ALIASES = {"mri": "mr", "xray": "dx", "x-ray": "dx", "radiograph": "dx", "ultrasound": "us", "pet": "pt"}

# -- anatomic regions (CID 4031 / CID 4009, SCT) --------------------------------------------------------------------
REGIONS: dict[str, Code] = {
    "brain": _sct("12738006", "Brain"),
    "head": _sct("69536005", "Head"),
    "knee": _sct("72696002", "Knee"),
    "hand": _sct("85562004", "Hand"),
    "finger": _sct("7569003", "Finger"),
    "wrist": _sct("8205005", "Wrist"),
    "forearm": _sct("14975008", "Forearm"),
    "elbow": _sct("127949000", "Elbow"),
    "humerus": _sct("85050009", "Humerus"),
    "shoulder": _sct("16982005", "Shoulder"),
    "hip": _sct("29836001", "Hip"),
    "leg": _sct("30021000", "Lower leg"),
    "foot": _sct("56459004", "Foot"),
    "ankle": _sct("344001", "Ankle"),
    "chest": _sct("51185008", "Thorax"),
    "abdomen": _sct("818981001", "Abdomen"),
    "pelvis": _sct("816092008", "Pelvis"),
    "spine": _sct("421060004", "Spine"),
    "joint": _sct("39352004", "Joint"),
}
REGION_ALIASES = {"thorax": "chest", "lung": "chest", "lungs": "chest", "lowerleg": "leg", "fingers": "finger",
                  "hands": "hand", "head_ct": "head", "headct": "head", "chestct": "chest", "abdomenct": "abdomen",
                  "breastmri": "chest", "cxr": "chest"}

# -- planes (CID 7151 style, SCT) -----------------------------------------------------------------------------------
PLANES: dict[str, Code] = {
    "axial": _sct("62824007", "Transverse"),
    "coronal": _sct("81654009", "Coronal"),
    "sagittal": _sct("30730003", "Sagittal"),
}
PLANE_ALIASES = {"transverse": "axial", "transversal": "axial", "ax": "axial", "cor": "coronal", "sag": "sagittal"}

# -- findings (detections, segments) --------------------------------------------------------------------------------
FINDINGS: dict[str, LabelConcept] = {
    "tumour": LabelConcept(_sct("108369006", "Neoplasm"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
    "glioma": LabelConcept(_sct("393564001", "Glioma"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE, REGIONS["brain"]),
    "meningioma": LabelConcept(_sct("302820008", "Meningioma"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                               REGIONS["brain"]),
    "pituitary": LabelConcept(_sct("254956000", "Pituitary adenoma"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                              REGIONS["brain"]),
    "fracture": LabelConcept(_sct("125605004", "Fracture of bone"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
    "abnormality": LabelConcept(_sct("49755003", "Morphologically abnormal structure"),
                                MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
    "lesion": LabelConcept(_sct("52988006", "Lesion"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
    "nodule": LabelConcept(_sct("27925004", "Nodule"), MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
    "normal": LabelConcept(_sct("17621005", "Normal"), FINDING_CATEGORY),
}
FINDING_ALIASES = {"tumor": "tumour", "neoplasm": "tumour", "brain_tumour": "tumour", "brain_tumor": "tumour",
                   "pituitary_tumour": "pituitary", "pituitary_tumor": "pituitary", "notumor": "normal",
                   "no_tumour": "normal", "no_tumor": "normal", "fractured": "fracture", "abnormal": "abnormality"}

# -- names of the things reported (SR concept names, CID 7469/7470, DCM) ---------------------------------------------
IMAGING_MEASUREMENT_REPORT = _dcm("126000", "Imaging Measurement Report")
IMAGING_PROCEDURE = _sct("363679005", "Imaging procedure")
FINDING = _dcm("121071", "Finding")
PROBABILITY = _dcm("122157", "Probability")
AREA = _sct("42798000", "Area")
VOLUME = _sct("118565006", "Volume")
YES = _sct("373066001", "Yes")
NO = _sct("373067005", "No")
MODALITY_NAME = _dcm("121139", "Modality")
TARGET_REGION = _dcm("123014", "Target Region")
PLANE_NAME = _sct("243898001", "Anatomical reference plane")
DISAGREEMENT = Code("HDRPIX", LOCAL_SCHEME, "Header and pixel classifier disagree")
ROUTE_UNDETERMINED = Code("UNDET", LOCAL_SCHEME, "Undetermined")
ROUTING_GROUP = Code("ROUTE", LOCAL_SCHEME, "Routing decisions")
NOT_ANALYSED = Code("NOTANAL", LOCAL_SCHEME, "Instance not analysed")  # e.g. pixel data that cannot be decoded
ARTIFICIAL_INTELLIGENCE = _dcm("123110", "Artificial Intelligence")
PROCESSING_EQUIPMENT = _dcm("109102", "Processing Equipment")

# units (UCUM)
UNIT_ONE = Code("1", "UCUM", "no units")
UNIT_MM2 = Code("mm2", "UCUM", "square millimeter")
UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")

# which routing-tree node reports under which concept name, with which value table
ROUTE_NODES: dict[str, Code] = {"modality": MODALITY_NAME, "region": TARGET_REGION, "body_part": TARGET_REGION,
                                "anatomy": TARGET_REGION, "plane": PLANE_NAME, "orientation": PLANE_NAME}


class UnknownLabel(ValueError):
    """A class label with no entry in the code table (add it to dicom_ai/report/codes.py)."""


def normalise(label: str) -> str:
    """Case-, space- and separator-insensitive key: "X-ray" -> "x-ray", "Brain Tumour" -> "brain_tumour"."""
    return re.sub(r"[\s/]+", "_", label.strip().lower())


def _lookup(table: dict[str, T], aliases: dict[str, str], label: str, kind: str) -> T:
    key = normalise(label)
    key = aliases.get(key, key)
    if key not in table:
        raise UnknownLabel(f"{kind} label {label!r} has no code in dicom_ai/report/codes.py")
    return table[key]


def modality_code(label: str) -> Code:
    return _lookup(MODALITIES, MODALITY_ALIASES, label, "modality")


def region_code(label: str) -> Code:
    return _lookup(REGIONS, REGION_ALIASES, label, "anatomic region")


def plane_code(label: str) -> Code:
    return _lookup(PLANES, PLANE_ALIASES, label, "plane")


def finding_concept(label: str) -> LabelConcept:
    return _lookup(FINDINGS, FINDING_ALIASES, label, "finding")


def label_code(label: str) -> Code:
    """Any class label (modality, region, plane or finding) as a coded concept; raises `UnknownLabel`."""
    for lookup in (modality_code, region_code, plane_code):
        try:
            return lookup(label)
        except UnknownLabel:
            pass
    return finding_concept(label).concept


def _route_node_concept(node: str) -> Code | None:
    """The concept name of a routing node: by its exact name, else by its suffix ("mri_plane" -> plane,
    "mri_region" / "xray_bodypart" -> target region)."""
    key = normalise(node)
    if key in ROUTE_NODES:
        return ROUTE_NODES[key]
    for suffix, concept in ROUTE_NODES.items():
        if key.endswith(suffix) or key.endswith(suffix.replace("_", "")):
            return concept
    return None


def route_value_code(node: str, label: str) -> Code:
    """The value of a routing decision of `node` (modality / region / plane / anything else -> any table)."""
    name = _route_node_concept(node)
    # identity, not ==: pydicom's Code.__eq__ cannot compare with None
    if name is MODALITY_NAME:
        return modality_code(label)
    if name is TARGET_REGION:
        return region_code(label)
    if name is PLANE_NAME:
        return plane_code(label)
    return label_code(label)


def route_node_name(node: str) -> Code:
    """The concept name a routing node's decision is reported under (unknown nodes: a local code of the node name)."""
    known = _route_node_concept(node)
    if known is not None:
        return known
    return Code(normalise(node)[:16].upper(), LOCAL_SCHEME, f"Routing decision: {node}"[:64])
