"""DVC stage 'clean' (glioseg.steps.clean): validate params.yaml and run the stage."""

from glioseg.runner import main
from glioseg.steps import clean

main(clean.run)
