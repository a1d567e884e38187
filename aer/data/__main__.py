"""`python -m aer.data {convert,demo,download}`: the data layer's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aer.data import convert as conv
from aer.data import demo, download, release
from aer.data.tfrecord import ShardError
from aer.settings import DemoSettings


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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``download`` subcommand's arguments."""
    parser.add_argument("root", type=Path, metavar="ROOT", help="data root to fill")
    parser.add_argument("--base-url", default=release.DEFAULT_BASE_URL, metavar="URL",
                        help="where the csv/ and features/ folders live (default: %(default)s)")
    parser.add_argument("--no-extract", dest="extract", action="store_false",
                        help=f"download only, leave {release.ARCHIVE} packed")
    parser.add_argument("--retries", type=_non_negative_int, default=3, metavar="N",
                        help="retries per file after a network error, resuming each time (default: %(default)s)")
    parser.add_argument("--only", dest="files", action="append", choices=list(release.FILES), metavar="NAME",
                        help=f"fetch only this file (repeatable); one of: {', '.join(release.FILES)}")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    parser.add_argument("--delete-archive", dest="keep_archive", action="store_false",
                        help=f"remove {release.ARCHIVE} after a successful extraction")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _download(args: argparse.Namespace) -> int:
    """Run a parsed ``download`` command; returns the exit code, errors as one line on stderr."""
    try:
        result = download.download(
            args.root,
            base_url=args.base_url,
            files=args.files,
            extract=args.extract,
            retries=args.retries,
            progress=args.progress,
            force=args.force,
            keep_archive=args.keep_archive,
        )
    except (release.DownloadError, OSError) as exc:
        print(f"error: {release.one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    statuses = [entry["status"] for entry in result["files"].values()]
    print(f"{result['root']}: {statuses.count('downloaded')} downloaded, {statuses.count('skipped')} skipped")
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
    p.add_argument("--clips", type=int, default=DemoSettings.clips, help="bal_train clips (default %(default)s)")
    p.add_argument("--eval-clips", type=int, default=DemoSettings.eval_clips, help="eval clips (default clips/2)")
    p.add_argument("--seed", type=int, default=DemoSettings.seed)
    p.set_defaults(func=_demo)

    p = sub.add_parser("download", help="fetch the AudioSet embedding release")
    add_download_arguments(p)
    p.set_defaults(func=_download)

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
