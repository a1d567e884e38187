"""Class names: class_labels_indices.csv (index, mid, display_name), read by one parser."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from aer.data.records import NUM_CLASSES

log = logging.getLogger(__name__)

LABELS_FILE = "class_labels_indices.csv"
LABEL_COLUMNS = ("index", "mid", "display_name")


def read_labels(path: str | os.PathLike, num_classes: int) -> list[tuple[str, str]]:
    """(mid, display_name) per class index from a class_labels_indices.csv; every class must be named."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"labels={path}: no such file (expected a {LABELS_FILE} with columns "
                                f"{', '.join(LABEL_COLUMNS)})")
    names: list[tuple[str, str] | None] = [None] * num_classes
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"labels={path}: no column {', '.join(missing)} (header {reader.fieldnames}; "
                             f"expected {', '.join(LABEL_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            try:
                i = int(row["index"])
            except (TypeError, ValueError):
                raise ValueError(f"labels={path}, line {line}: index={row['index']!r} is not an integer") from None
            if 0 <= i < num_classes:
                names[i] = (row["mid"], row["display_name"])
    unnamed = [i for i, n in enumerate(names) if n is None]
    if unnamed:
        log.warning("labels=%s names %d of the model's %d classes; the others (first: %d) are named by index",
                    path, num_classes - len(unnamed), num_classes, unnamed[0])
    return [n if n is not None else ("", f"class {i}") for i, n in enumerate(names)]


def read_class_labels(root: str | os.PathLike, num_classes: int = NUM_CLASSES) -> list[tuple[str, str]]:
    """The names in `root`/class_labels_indices.csv, or every class named by its index (with a warning)
    when the folder has none (the release's copy is beside its split folders; demo sets write one)."""
    path = Path(root) / LABELS_FILE
    if not path.exists():
        log.warning("%s not found: classes are reported by index", path)
        return [("", f"class {i}") for i in range(num_classes)]
    return read_labels(path, num_classes)
