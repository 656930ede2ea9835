"""DVC stage 'cache' (glioseg.steps.cache): validate params.yaml and run the stage."""

from glioseg.runner import main
from glioseg.steps import cache

main(cache.run)
