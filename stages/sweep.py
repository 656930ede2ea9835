"""DVC stage 'sweep@NAME': train and evaluate the configuration `sweeps.NAME` of params.yaml."""

import sys

from glioseg.cli import app

app(["stage", "sweep", *sys.argv[1:]])
