"""DVC stage 'train' (glioseg.pipeline.stages.train): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import train

main(train.run)
