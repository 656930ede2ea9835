"""DVC stage 'augment' (glioseg.pipeline.stages.augment): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import augment

main(augment.run)
