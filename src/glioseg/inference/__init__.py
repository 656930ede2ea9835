"""Inference: the one predictor and applying a model to new scans."""
