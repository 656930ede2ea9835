"""DVC stage 'augment': validate params.yaml and run the stage (see `glioseg stage --help`)."""

from glioseg.cli import app

app(["stage", "augment"])
