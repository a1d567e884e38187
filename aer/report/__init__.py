"""`python -m aer.report DIR [DIR ...]`: a run's or a sweep's training curves as PNGs, plus a markdown report.

The curves come from the TensorBoard event files each run writes (events.py), the runs from aer.runs
and a sweep's job table from aer.runs. For a sweep, every swept key (model, init, data.batch_size,
...) gets a figure of its own (plots.py): validation mAP, mAUC and training loss per epoch, one line
per job, coloured by that key's value. build.py assembles report.md, cli.py is the command line.
Everything is written into the output dir (default DIR/report); the input dirs are only read.
"""

from aer.report.build import make_report
from aer.report.events import CURVES, Traced, read_curves, traced_runs

__all__ = ["CURVES", "Traced", "make_report", "read_curves", "traced_runs"]
