"""DVC stage 'check_params' (glioseg.steps.check_params): validate params.yaml before any stage removes outputs."""

from glioseg.runner import main
from glioseg.steps import check_params

main(check_params.run)
