"""DVC stage 'sweep_train@NAME' (glioseg.pipeline.stages.sweep_train): train sweep NAME's model."""

import sys

from glioseg.pipeline.runner import main
from glioseg.pipeline.stages import sweep_train

main(sweep_train.run, *sys.argv[1:])
