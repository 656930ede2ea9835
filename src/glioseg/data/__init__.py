"""Data: the stages' data work from raw cases to the array cache; formats and synthetic data beneath it."""
