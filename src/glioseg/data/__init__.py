"""Data stages: sources, cleaning, labels, split and the array cache."""
