"""The AudioSet embedding release as aer fetches it: where it lives, its files, its layout.

``python -m aer.data download ROOT`` (aer.data.download, then aer.data.extract) leaves::

    ROOT/class_labels_indices.csv
    ROOT/balanced_train_segments.csv, unbalanced_train_segments.csv, eval_segments.csv
    ROOT/bal_train/*.tfrecord, ROOT/eval/*.tfrecord, ROOT/unbal_train/*.tfrecord
    ROOT/features.tar.gz     (kept unless keep_archive=False)
    ROOT/SHA256SUMS          (``sha256sum -c`` format, one line per downloaded file)

The tarball stores the splits under ``audioset_v1_embeddings/``. Extraction drops
that prefix so the split folders sit directly in ROOT, where the rest of ``aer``
looks for them; any other top-level entry of the archive lands in ROOT unchanged.
"""

from __future__ import annotations

import sys

from aer.errors import UserError

# HTTPS rather than the bucket's plain-HTTP URL: Google publishes no checksums for
# this release, so transport integrity is the only guarantee the bytes are genuine.
DEFAULT_BASE_URL = "https://storage.googleapis.com/us_audioset/youtube_corpus/v1/"

ARCHIVE = "features.tar.gz"
ARCHIVE_PREFIX = "audioset_v1_embeddings"
SPLITS = ("bal_train", "eval", "unbal_train")
CHECKSUMS = "SHA256SUMS"

# Local file name -> path relative to the base URL. CSVs first: they are small,
# so a wrong base URL or a dead network shows up before the 2.4 GB transfer.
FILES = {
    "class_labels_indices.csv": "csv/class_labels_indices.csv",
    "balanced_train_segments.csv": "csv/balanced_train_segments.csv",
    "unbalanced_train_segments.csv": "csv/unbalanced_train_segments.csv",
    "eval_segments.csv": "csv/eval_segments.csv",
    ARCHIVE: "features/features.tar.gz",
}

# Names the archive must not be allowed to replace in ROOT.
RESERVED = {CHECKSUMS, *FILES, *(name + ".part" for name in FILES)}


class DownloadError(UserError):
    """A download or extraction failed; the message is one line naming the file or URL."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
