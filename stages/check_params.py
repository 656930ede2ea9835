"""DVC stage 'check_params' (glioseg.pipeline.stages.check_params): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import check_params

main(check_params.run)
