"""DVC stage 'augment' (glioseg.steps.augment): validate params.yaml and run the stage."""

from glioseg.runner import main
from glioseg.steps import augment

main(augment.run)
