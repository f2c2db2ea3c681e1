"""Send: deliver the objects we produced to DICOM nodes, durably (outbox, backoff, dead letter), without loops."""
