"""Data formats: how each on-disk layout (kaggle_3m TIFs, BraTS NIfTI) is found, read and written."""
