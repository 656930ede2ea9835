"""DVC stage 'clean' (glioseg.pipeline.stages.clean): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import clean

main(clean.run)
