"""DVC stage 'cache' (glioseg.pipeline.stages.cache): validate params.yaml and run the stage."""

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import cache

main(cache.run)
