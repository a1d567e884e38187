"""`python -m aer.data {convert,demo,download}`: the data layer's command line."""

from __future__ import annotations

import argparse
import sys

from aer.data import convert as conv
from aer.data import demo, download
from aer.data.tfrecord import ShardError


def _convert(args: argparse.Namespace) -> int:
    summary = conv.convert(args.src, args.out, workers=args.workers, on_bad_record=args.on_bad_record,
                           force=args.force)
    print(summary)
    for line in summary.skipped_examples:
        print(f"  skipped: {line}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    spec = demo.generate(args.out, clips=args.clips, eval_clips=args.eval_clips, seed=args.seed)
    print(f"wrote demo shards to {args.out}: {spec['clips']} bal_train clips, {spec['eval_clips']} eval clips "
          f"(seed {spec['seed']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aer.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert one split's TFRecord shards into one HDF5 file")
    p.add_argument("src", help="folder of .tfrecord shards (one split)")
    p.add_argument("out", help="HDF5 file to write")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--on-bad-record", choices=conv.ON_BAD, default="error",
                   help="stop at the first bad record (default) or skip and count bad records")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is fresh")
    p.set_defaults(func=_convert)

    p = sub.add_parser("demo", help="write synthetic shards in the release format")
    p.add_argument("out", help="folder to write bal_train/, eval/ and class_labels_indices.csv into")
    p.add_argument("--clips", type=int, default=20000, help="bal_train clips (default 20000)")
    p.add_argument("--eval-clips", type=int, default=None, help="eval clips (default clips/2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("download", help="fetch the AudioSet embedding release")
    download.add_arguments(p)
    p.set_defaults(func=download.run_from_args)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ShardError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
