"""The command line of `python -m aer.report` (started by aer.cli)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import aer.report
from aer.report.build import make_report
from aer.settings import ReportConfig


def parse_keys(text: str | None) -> list[str] | None:
    """`--by a,b` as a list of keys; None when not given."""
    return [k.strip() for k in text.split(",") if k.strip()] if text else None


def printed(paths: list) -> int:
    for p in paths:
        print(p)
    return 0


def parse(argv: list[str] | None = None) -> Callable[[], int]:
    parser = argparse.ArgumentParser(prog="python -m aer.report", description=aer.report.__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="+", help="a run dir (from train.py) or a sweep dir (from train.py -m); "
                                                "several: their runs compared as one sweep (needs --out)")
    parser.add_argument("--out", help="folder for the PNGs, report.md and a sweep's summary (default: DIR/report)")
    parser.add_argument("--by", help="comma-separated overrides that label the runs, a figure each "
                                     "(default: every override that differs across runs)")
    config = ReportConfig.build(vars(parser.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after <event file>" per run
    return lambda: printed(make_report(config.dir, config.out, parse_keys(config.by)))
