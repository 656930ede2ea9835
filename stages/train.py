"""DVC stage 'train': validate params.yaml and train the main model (glioseg.experiment)."""

from glioseg.experiment import train_stage
from glioseg.runner import main

main(train_stage)
