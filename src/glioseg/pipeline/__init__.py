"""The DVC pipeline: the stage runner, stage outputs and code deps, and one module per stage."""
