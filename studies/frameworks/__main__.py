"""The report's framework comparison: its base model (FC 1280-500-527, batch 500, Xavier uniform with
zero biases, Adam lr 1e-3 eps 1e-8, x/255, BCE) trained on the dev split of bal_train in plain
PyTorch, aer (Lightning), TensorFlow (Keras), MXNet (Gluon) and JAX (Flax + Optax), side by side.

    python -m studies.frameworks [--frameworks torch,aer,tensorflow,mxnet,jax] [--seeds 1,2,3] [--epochs 50]
        [--threads 1] [--data-root DIR] [--cache-dir DIR] [--out DIR] [--no-install]
    python -m studies.frameworks --replot OUT/results.json --out DIR

Run from the root of a checkout (the study is not in aer's wheel; it imports the installed aer,
`pip install -e ".[test]"` or ".[frameworks]" brings JAX too). Frameworks that do not import here
get a venv of their own under $AER_HOME/frameworks (default ~/.cache/aer/frameworks), built on
first use. Writes results.json, table.md and frameworks.png into --out.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

from studies.frameworks.harness import FRAMEWORKS, run_all
from studies.frameworks.summary import table_markdown, write_outputs


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _frameworks(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in FRAMEWORKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {','.join(FRAMEWORKS)}")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m studies.frameworks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frameworks", type=_frameworks, default=list(FRAMEWORKS))
    p.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="cores each trainer may use (the same for all)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2].parent / "shared/data/audioset"),
                   help="the release's folder holding bal_train/ (default: ../shared/data/audioset)")
    p.add_argument("--cache-dir", default=None, help="aer's HDF5 cache (default: as aer's DataModule chooses)")
    p.add_argument("--out", default="outputs/frameworks", help="where results.json, table.md, frameworks.png go")
    p.add_argument("--work-dir", default=None, help="temporary job files (default: a new temp dir, removed after)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds one trainer may run")
    p.add_argument("--one-by-one", dest="lockstep", action="store_false",
                   help="run a seed's trainers one after another, not in turns epoch by epoch (the default, "
                        "which lets every framework's epoch N meet the same load from other processes)")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="do not build missing venvs: such frameworks become 'not run' rows")
    p.add_argument("--replot", metavar="RESULTS_JSON", default=None,
                   help="train nothing: write the table and figure of an earlier run's results.json into --out")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or not args.seeds:
        p.error("--epochs and --threads must be positive and --seeds not empty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM as an exception, so that the trainers are killed and the work dir removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.replot:
        try:
            results = json.loads(Path(args.replot).read_text())
        except (OSError, ValueError) as e:
            print(f"error: {args.replot}: not a readable results file ({e})", file=sys.stderr)
            return 1
        print(table_markdown(write_outputs(results, Path(args.out))))
        return 0
    with tempfile.TemporaryDirectory(prefix="aer-frameworks-", dir=args.work_dir) as work:
        try:
            results = run_all(args.frameworks, args.seeds, args.epochs, args.threads, args.data_root, args.cache_dir,
                              Path(work), install=args.install, timeout=args.timeout, lockstep=args.lockstep,
                              log=log)
        except (ValueError, FileNotFoundError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    rows = write_outputs(results, Path(args.out))
    print(table_markdown(rows))
    log(f"wrote {Path(args.out) / 'results.json'}, table.md, frameworks.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
