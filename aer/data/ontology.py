"""AudioSet's ontology (ontology.json): the top-level categories and the classes under each, and each
class's ancestors.

The file is a list of {id, name, child_ids, ...}; the top-level categories are the entries that no
entry lists as a child ("Human sounds", "Music", ...). A category's classes are the label classes
among its descendants (itself included), matched by mid through class_labels_indices.csv. A class's
ancestors are the label classes above it, through any nodes (label classes or not) in between.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from aer.data.labels import LABELS_FILE, read_labels

ONTOLOGY_FILE = "ontology.json"


def read_ontology(path: str | os.PathLike) -> list[dict]:
    """The entries of ontology.json, checked: each a dict with a string id and name and a child_ids list."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable ontology.json ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{id, name, child_ids}} entries, "
                         f"found a {type(entries).__name__}")
    for i, e in enumerate(entries):
        ok = isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("name"), str)
        if not ok or not isinstance(e.get("child_ids", []), list):
            raise ValueError(f"{path}: entry {i}: expected {{\"id\": str, \"name\": str, \"child_ids\": [str, ...]}}, "
                             f"found {str(e)[:80]}")
    return entries


def top_level_classes(entries: list[dict], mids: list[str]) -> list[dict]:
    """Per top-level category, in file order: {id, name, classes: the class indices below it, sorted}."""
    children = {e["id"]: list(e.get("child_ids", [])) for e in entries}
    listed = {c for kids in children.values() for c in kids}
    index = {mid: i for i, mid in enumerate(mids) if mid}
    out = []
    for e in entries:
        if e["id"] in listed:
            continue
        seen, stack = set(), [e["id"]]
        while stack:  # a set of visited ids: a malformed file with a cycle still ends
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(children.get(node, []))
        out.append({"id": e["id"], "name": e["name"], "classes": sorted(index[m] for m in seen if m in index)})
    return out


def category_scores(categories: list[dict], ap: np.ndarray, auc: np.ndarray) -> list[dict]:
    """Mean AP and AUC over each category's classes that could be scored (NaN-free), with counts."""
    rows = []
    for cat in categories:
        idx = np.asarray(cat["classes"], dtype=np.int64)
        a, u = ap[idx], auc[idx]
        ok_a, ok_u = ~np.isnan(a), ~np.isnan(u)
        rows.append({"id": cat["id"], "name": cat["name"], "classes": int(len(idx)),
                     "classes_scored": int(ok_a.sum()),
                     "mAP": float(a[ok_a].mean()) if ok_a.any() else float("nan"),
                     "mAUC": float(u[ok_u].mean()) if ok_u.any() else float("nan")})
    return rows


def class_ancestors(entries: list[dict], mids: list[str]) -> np.ndarray:
    """(C, C) bool: [c, a] is true when class a is class c itself or a label class above it in the ontology,
    through any nodes in between; classes whose mid the ontology does not hold have only themselves."""
    parents: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        for child in e.get("child_ids", []):
            parents[child].append(e["id"])
    index = {mid: i for i, mid in enumerate(mids) if mid}
    out = np.eye(len(mids), dtype=bool)
    for mid, c in index.items():
        seen, stack = set(), list(parents.get(mid, []))
        while stack:  # visited ids: a malformed file with a cycle still ends
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(parents.get(node, []))
        out[c, [index[m] for m in seen if m in index]] = True
    return out


def root_ancestors(root: str | os.PathLike, num_classes: int) -> np.ndarray:
    """class_ancestors of data.root's ontology.json and class_labels_indices.csv (augment.ontology_targets)."""
    path = Path(root) / ONTOLOGY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; augment.ontology_targets=true reads the class hierarchy "
                                f"from data.root/{ONTOLOGY_FILE} (AudioSet's: github.com/audioset/ontology)")
    mids = [mid for mid, _ in read_labels(Path(root) / LABELS_FILE, num_classes)]
    entries = read_ontology(path)
    if not {e["id"] for e in entries} & set(mids):
        raise ValueError(f"{path}: holds none of the mids of {Path(root) / LABELS_FILE} "
                         f"(e.g. {mids[0]!r}): it is not the ontology of these classes")
    return class_ancestors(entries, mids)
