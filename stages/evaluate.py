"""DVC stage 'evaluate' (glioseg.pipeline.stages.evaluate): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import evaluate

main(evaluate.run)
