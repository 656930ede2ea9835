"""Params: the schema of params.yaml, its composition from profiles, and what else a model's numbers depend on."""
