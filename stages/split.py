"""DVC stage 'split' (glioseg.pipeline.stages.split): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import split

main(split.run)
