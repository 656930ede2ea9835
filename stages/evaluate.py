"""DVC stage 'evaluate': validate params.yaml and score the main model on the test patients (glioseg.scoring)."""

from glioseg.runner import main
from glioseg.scoring import evaluate_stage

main(evaluate_stage)
