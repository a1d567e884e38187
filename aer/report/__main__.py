import sys

from aer.report.cli import main

sys.exit(main())
