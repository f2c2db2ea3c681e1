"""Training and evaluation: datasets from the shared manifests, group-aware splits, loops, metrics, plots,
the prepared GPU plan (`python -m dicom_ai.train.plan`) and the data packer (`python -m dicom_ai.train.pack`).

Kept import-light: nothing here imports pydicom, the database or the network stack.
"""
