"""DVC stage 'download' (glioseg.steps.download): validate params.yaml and run the stage."""

from glioseg.runner import main
from glioseg.steps import download

main(download.run)
