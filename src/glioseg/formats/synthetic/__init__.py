"""Synthetic data sets in each format's layout, for runs without real data."""
