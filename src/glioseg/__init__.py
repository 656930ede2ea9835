"""glioseg: a reproducible DVC + MLflow pipeline for brain-tumour segmentation in MRI."""

__version__ = "0.1.0"
