"""dicom-ai: a DICOM node that runs a hierarchical AI pipeline and sends findings back."""

__version__ = "0.1.0"
