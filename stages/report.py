"""DVC stage 'report': validate params.yaml and write reports/report.md (glioseg.report)."""

from glioseg.report import report_stage
from glioseg.runner import main

main(report_stage)
