"""DVC stage 'download' (glioseg.pipeline.stages.download): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import download

main(download.run)
