"""DVC stage 'labels' (glioseg.pipeline.stages.labels): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import labels

main(labels.run)
