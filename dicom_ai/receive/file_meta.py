"""The File Meta Information (PS3.10 §7.1) the node writes in front of every received dataset, and the
implementation identity it writes there and negotiates with."""

from __future__ import annotations

import uuid

from pydicom.dataset import FileMetaDataset

from dicom_ai import __version__

# Implementation Class UID (0002,0012) of files we write and associations we negotiate: a UUID-derived UID
# (PS3.5 §B.2), fixed for the project.
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'https://github.com/dicom-ai/dicom-ai').int}"
IMPLEMENTATION_VERSION_NAME = f"DICOM_AI_{__version__}"[:16]


def received_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                       calling_ae: str) -> FileMetaDataset:
    """File meta for a dataset received in `transfer_syntax` from `calling_ae` (Source Application Entity Title,
    left out when unknown)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    return meta
