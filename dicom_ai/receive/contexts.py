"""Which presentation contexts the listener accepts, negotiated per association from what the peer proposes.

Offering every storage SOP class x every transfer syntax up front costs pynetdicom 55-75 ms per association (it
deep-copies and scans the whole list for every association). Instead the acceptor's supported contexts are built
from the A-ASSOCIATE-RQ itself: one context per proposed abstract syntax that is Verification or a storage SOP class,
holding the proposed transfer syntaxes we accept, in the peer's order (so the peer's preferred encoding, usually
the one its file is already in, is the one accepted and stored as received).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification

STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(uid) for uid in _STORAGE_CLASSES.values())
VERIFICATION_SOP_CLASS = str(Verification)


@dataclass(frozen=True, slots=True)
class Encoding:
    """How the dataset of a transfer syntax is encoded (PS3.5 §10 and Annex A)."""

    name: str
    implicit_vr: bool = False
    little_endian: bool = True
    deflated: bool = False


# Every transfer syntax a modality sends. The dataset is stored as received, so accepting a syntax never needs a
# codec here; the pipeline decodes pixels later (pylibjpeg / openjpeg / rle plugins).
TRANSFER_SYNTAXES: dict[str, Encoding] = {
    "1.2.840.10008.1.2": Encoding("Implicit VR Little Endian", implicit_vr=True),
    "1.2.840.10008.1.2.1": Encoding("Explicit VR Little Endian"),
    "1.2.840.10008.1.2.2": Encoding("Explicit VR Big Endian (retired)", little_endian=False),
    "1.2.840.10008.1.2.1.99": Encoding("Deflated Explicit VR Little Endian", deflated=True),
    "1.2.840.10008.1.2.8.1": Encoding("Deflated Image Frame Compression"),
    "1.2.840.10008.1.2.4.50": Encoding("JPEG Baseline (Process 1)"),
    "1.2.840.10008.1.2.4.51": Encoding("JPEG Extended (Process 2 & 4)"),
    "1.2.840.10008.1.2.4.57": Encoding("JPEG Lossless, Non-Hierarchical (Process 14)"),
    "1.2.840.10008.1.2.4.70": Encoding("JPEG Lossless, First-Order Prediction (Process 14 SV1)"),
    "1.2.840.10008.1.2.4.80": Encoding("JPEG-LS Lossless"),
    "1.2.840.10008.1.2.4.81": Encoding("JPEG-LS Near-Lossless"),
    "1.2.840.10008.1.2.4.90": Encoding("JPEG 2000 (Lossless Only)"),
    "1.2.840.10008.1.2.4.91": Encoding("JPEG 2000"),
    "1.2.840.10008.1.2.4.201": Encoding("HTJ2K (Lossless Only)"),
    "1.2.840.10008.1.2.4.202": Encoding("HTJ2K with RPCL Options (Lossless Only)"),
    "1.2.840.10008.1.2.4.203": Encoding("HTJ2K"),
    "1.2.840.10008.1.2.5": Encoding("RLE Lossless"),
    "1.2.840.10008.1.2.4.100": Encoding("MPEG2 Main Profile / Main Level"),
    "1.2.840.10008.1.2.4.101": Encoding("MPEG2 Main Profile / High Level"),
    "1.2.840.10008.1.2.4.102": Encoding("MPEG-4 AVC/H.264 High Profile / Level 4.1"),
    "1.2.840.10008.1.2.4.103": Encoding("MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"),
    "1.2.840.10008.1.2.4.104": Encoding("MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video"),
    "1.2.840.10008.1.2.4.105": Encoding("MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video"),
    "1.2.840.10008.1.2.4.106": Encoding("MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2"),
    "1.2.840.10008.1.2.4.107": Encoding("HEVC/H.265 Main Profile / Level 5.1"),
    "1.2.840.10008.1.2.4.108": Encoding("HEVC/H.265 Main 10 Profile / Level 5.1"),
}


def is_acceptable_abstract_syntax(uid: str) -> bool:
    return uid == VERIFICATION_SOP_CLASS or uid in STORAGE_SOP_CLASSES


def contexts_for_request(proposed: Iterable[PresentationContext]) -> list[PresentationContext]:
    """The contexts to support for this association: the proposed abstract syntaxes we serve, each with the
    proposed transfer syntaxes we accept, in the order the peer listed them (first proposal first)."""
    by_abstract: dict[str, list[str]] = {}
    for context in proposed:
        abstract = str(context.abstract_syntax or "")
        if not is_acceptable_abstract_syntax(abstract):
            continue
        accepted = by_abstract.setdefault(abstract, [])
        for syntax in context.transfer_syntax:
            if str(syntax) in TRANSFER_SYNTAXES and str(syntax) not in accepted:
                accepted.append(str(syntax))
    supported = []
    for abstract, syntaxes in by_abstract.items():
        if syntaxes:
            context = PresentationContext()
            context.abstract_syntax = UID(abstract)
            context.transfer_syntax = [UID(syntax) for syntax in syntaxes]
            supported.append(context)
    return supported
