"""Read the header of a received dataset (everything before the pixel data) from its raw bytes, without decoding
or re-encoding the dataset itself."""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from dicom_ai.receive.contexts import TRANSFER_SYNTAXES

_PIXEL_DATA_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


class UnreadableDataset(ValueError):
    """The dataset bytes cannot be parsed in the negotiated transfer syntax."""


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_DATA_TAGS


def read_header(dataset_bytes: bytes, transfer_syntax: str) -> Dataset:
    """The dataset's top-level elements up to (not including) Float/Double/Pixel Data (7FE0,0008/0009/0010).

    Values stay raw until accessed (a malformed value raises then), so the cost is one pass over the element
    headers.
    """
    encoding = TRANSFER_SYNTAXES.get(transfer_syntax)
    if encoding is None:
        raise UnreadableDataset(f"transfer syntax {transfer_syntax} is not accepted by this node")
    data = dataset_bytes
    if encoding.deflated:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset_bytes)
        except zlib.error as exc:
            raise UnreadableDataset(f"deflated dataset cannot be inflated: {exc}") from exc
    try:
        return read_dataset(BytesIO(data), encoding.implicit_vr, encoding.little_endian, stop_when=_at_pixel_data)
    except Exception as exc:  # pydicom raises many types for malformed data
        raise UnreadableDataset(f"dataset cannot be parsed as {encoding.name}: {exc}") from exc
