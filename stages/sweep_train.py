"""DVC stage 'sweep_train@NAME': train the configuration `sweeps.NAME` of params.yaml (glioseg.experiment)."""

import sys

from glioseg.experiment import sweep_train_stage
from glioseg.runner import main

main(sweep_train_stage, *sys.argv[1:])
