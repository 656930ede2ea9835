"""Tracking: the MLflow store, a team's tracking server, and migration between stores."""
