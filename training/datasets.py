"""Labelled audio collections and track-level, grouped cross-validation folds.

Splits are always by track (never by slice: a random slice split puts slices of one track on both
sides and measures memorisation), and tracks that share a group (an artist, or neighbouring GTZAN
ids, which are often the same artist) stay on one side.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Track:
    """One labelled audio file. ``group`` keeps related tracks (same artist) on one side of a split."""

    path: Path
    label: str
    group: str
    track_id: str


def load_gtzan(root: str | Path) -> list[Track]:
    """GTZAN-layout clips listed in ``<root>/labels.csv`` (columns path, label, gtzan_id, …).

    Paths in the CSV are relative to the CSV's parent directory. The group is the genre plus the
    clip's position in runs of consecutive ids (see :func:`contiguous_folds`).
    """
    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no labels.csv")
    tracks = []
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            path = (root.parent / row["path"]) if not (root / row["path"]).exists() else root / row["path"]
            tracks.append(Track(path, row["label"], row["label"], row.get("gtzan_id", path.stem)))
    return tracks


def gtzan_number(track_id: str) -> int:
    """The numeric part of a GTZAN id (``blues.00012`` → 12)."""
    return int(track_id.rsplit(".", 1)[-1])


def contiguous_folds(tracks: list[Track], n_folds: int = 5) -> np.ndarray:
    """Stratified folds that keep neighbouring ids together: fold index per track.

    Within each label, tracks are sorted by id and cut into ``n_folds`` contiguous runs, run k going
    to fold k. Every fold sees every label, and consecutive ids (often one artist in GTZAN) share a
    fold except across the n_folds - 1 cuts per label.
    """
    folds = np.full(len(tracks), -1, dtype=int)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tracks):
        by_label[t.label].append(i)
    for indices in by_label.values():
        indices.sort(key=lambda i: (gtzan_number(tracks[i].track_id), tracks[i].track_id))
        for fold, run in enumerate(np.array_split(np.array(indices), n_folds)):
            folds[run] = fold
    return folds
