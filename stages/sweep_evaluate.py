"""DVC stage 'sweep_evaluate@NAME': score the model of `sweeps.NAME` on the test patients (glioseg.scoring)."""

import sys

from glioseg.runner import main
from glioseg.scoring import sweep_evaluate_stage

main(sweep_evaluate_stage, *sys.argv[1:])
