"""DVC stage 'report' (glioseg.pipeline.stages.report): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import report

main(report.run)
