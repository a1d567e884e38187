"""`python -m aer.data {convert,demo,download}`: the data layer's command line (started by aer.cli)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from aer.data import release
from aer.settings import ConvertConfig, DemoConfig, DownloadConfig


def _convert(c: ConvertConfig) -> int:
    from aer.data.convert import convert

    summary = convert(c.src, c.out, workers=c.workers, on_bad_record=c.on_bad_record, force=c.force)
    print(summary)
    for line in summary.skipped_examples:
        print(f"  skipped: {line}")
    return 0


def _demo(c: DemoConfig) -> int:
    from aer.data.demo import generate

    spec = generate(c.out, clips=c.clips, eval_clips=c.eval_clips, seed=c.seed)
    print(f"wrote demo shards to {c.out}: {spec['clips']} bal_train clips, {spec['eval_clips']} eval clips "
          f"(seed {spec['seed']})")
    return 0


def _download(c: DownloadConfig) -> int:
    from aer.data.download import download

    result = download(c.root, base_url=c.base_url, files=c.files, extract=c.extract, retries=c.retries,
                      progress=c.progress, force=c.force, keep_archive=c.keep_archive)
    statuses = [entry["status"] for entry in result["files"].values()]
    print(f"{result['root']}: {statuses.count('downloaded')} downloaded, {statuses.count('skipped')} skipped")
    return 0


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``download`` subcommand's arguments."""
    parser.add_argument("root", metavar="ROOT", help="data root to fill")
    parser.add_argument("--base-url", default=release.DEFAULT_BASE_URL, metavar="URL",
                        help="where the csv/ and features/ folders live (default: %(default)s)")
    parser.add_argument("--no-extract", dest="extract", action="store_false",
                        help=f"download only, leave {release.ARCHIVE} packed")
    parser.add_argument("--retries", type=int, default=3, metavar="N",
                        help="retries per file after a network error, resuming each time (default: %(default)s)")
    parser.add_argument("--only", dest="files", action="append", metavar="NAME",
                        help=f"fetch only this file (repeatable); one of: {', '.join(release.FILES)}")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    parser.add_argument("--delete-archive", dest="keep_archive", action="store_false",
                        help=f"remove {release.ARCHIVE} after a successful extraction")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


COMMANDS = {"convert": (ConvertConfig, _convert), "demo": (DemoConfig, _demo), "download": (DownloadConfig, _download)}


def parse(argv: list[str] | None = None) -> Callable[[], int]:
    parser = argparse.ArgumentParser(prog="python -m aer.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help=ConvertConfig.__doc__)
    p.add_argument("src", help="folder of .tfrecord shards (one split)")
    p.add_argument("out", help="HDF5 file to write")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--on-bad-record", default="error",
                   help="error: stop at the first bad record (default) | skip: skip and count bad records")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is fresh")

    p = sub.add_parser("demo", help=DemoConfig.__doc__)
    p.add_argument("out", help="folder to write bal_train/, eval/ and class_labels_indices.csv into")
    p.add_argument("--clips", type=int, default=DemoConfig.clips, help="bal_train clips (default %(default)s)")
    p.add_argument("--eval-clips", type=int, default=DemoConfig.eval_clips, help="eval clips (default clips/2)")
    p.add_argument("--seed", type=int, default=DemoConfig.seed)

    add_download_arguments(sub.add_parser("download", help=DownloadConfig.__doc__))

    args = vars(parser.parse_args(argv))
    cls, work = COMMANDS[args.pop("command")]
    config = cls.build(args)  # every value checked before any work
    return lambda: work(config)


if __name__ == "__main__":
    import sys

    from aer.cli import data

    sys.exit(data())
