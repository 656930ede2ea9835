"""Evaluation: test-set scoring, ensembles, cross-validation summaries, the metrics gate and promotion."""
