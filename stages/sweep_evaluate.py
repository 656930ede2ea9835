"""DVC stage 'sweep_evaluate@NAME' (glioseg.pipeline.stages.sweep_evaluate): score sweep NAME's model."""

import sys

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import sweep_evaluate

main(sweep_evaluate.run, *sys.argv[1:])
