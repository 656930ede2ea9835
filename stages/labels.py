"""DVC stage 'labels' (glioseg.steps.labels): validate params.yaml and run the stage."""

from glioseg.runner import main
from glioseg.steps import labels

main(labels.run)
