"""The receive stage: the DICOM listener (C-ECHO / C-STORE SCP), access control and DICOM TLS."""

from dicom_ai.receive.listener import Listener

__all__ = ["Listener"]
