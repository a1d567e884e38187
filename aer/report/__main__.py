import sys

from aer.cli import report

sys.exit(report())
