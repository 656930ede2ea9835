"""DVC stage 'split' (glioseg.steps.split): validate params.yaml and run the stage."""

from glioseg.runner import main
from glioseg.steps import split

main(split.run)
