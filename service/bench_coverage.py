"""``genre-tagger bench-coverage``: what excerpts cost in agreement and gain in speed, against full coverage.

Every file of each folder is tagged with full coverage and with each ``excerpts:KxS`` setting (one job,
interleaved file by file so a shared machine's slow spells hit every setting alike). Per folder and
setting: how many files were long enough to use excerpts, how often the top label of each output is the
one full coverage gives, how often the decided labels (those over the threshold: what the library, file
tags and beets take) are the same, the largest change of any probability (max |Δp|), and the CPU time against full
coverage's (the process's CPU seconds, every thread: steadier than wall time on a loaded machine).
Where a folder has a ``labels.csv`` (path,label,…), the top genre's agreement with the label too.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.cli import iter_audio_files
from tagger.coverage import Coverage
from tagger.errors import TaggerError
from tagger.pipeline import Tagger, TrackResult

DEFAULT_COVERAGES = ("excerpts:3x30", "excerpts:3x20", "excerpts:3x10", "excerpts:2x10", "excerpts:1x10")



@dataclass
class Cell:
    """One folder × one coverage setting."""

    files: int = 0
    used_excerpts: int = 0
    same_top: dict[str, int] = field(default_factory=dict)
    same_decided: dict[str, int] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    audio_s: float = 0.0
    analysed_s: float = 0.0
    label_correct: int = 0
    labelled: int = 0


def _probabilities(result: TrackResult) -> dict[str, np.ndarray]:
    return {name: np.array([s.score for s in sorted(est.scores, key=lambda s: s.label)])
            for name, est in result.outputs.items()}


def _labels(folder: Path) -> dict[str, str]:
    table = folder / "labels.csv"
    if not table.is_file():
        return {}
    labels = {}
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("path") and row.get("label"):
                # Paths relative to the folder, or (the shared data's tables) to the folder above it.
                path = folder / row["path"]
                labels[str((path if path.exists() else folder.parent / row["path"]).resolve())] = row["label"]
    return labels


def _timed(tagger: Tagger, path: Path, coverage: str) -> tuple[TrackResult, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = tagger.tag_file(path, coverage=coverage)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run(folders: list[str], coverages: list[str], model: str | None = None) -> dict:
    """Every setting against full coverage on each folder's files; a file that fails is an error line on
    stderr and counted in ``failed``. A folder that does not exist stops it before any work."""
    for folder in folders:
        if not Path(folder).exists():
            raise TaggerError(f"{folder}: no such folder")
    tagger = Tagger(model)
    settings = ["full", *(str(Coverage.parse(c)) for c in coverages)]
    report: dict = {"model": f"{tagger.manifest.name} {tagger.manifest.version}", "settings": settings,
                    "folders": {}, "failed": 0}
    for folder in folders:
        labels = _labels(Path(folder))
        cells = {s: Cell() for s in settings}
        for path in iter_audio_files([folder]):
            try:
                results = {s: _timed(tagger, path, s) for s in settings}
            except TaggerError as exc:
                print(f"genre-tagger: error: {exc}", file=sys.stderr)
                report["failed"] += 1
                continue
            full = _probabilities(results["full"][0])
            full_decided = {name: est.decided for name, est in results["full"][0].outputs.items()}
            label = labels.get(str(path.resolve()))
            for setting, (result, cpu, wall) in results.items():
                cell = cells[setting]
                cell.files += 1
                cell.used_excerpts += result.coverage != "full"
                cell.cpu_s += cpu
                cell.wall_s += wall
                cell.audio_s += result.duration_s
                cell.analysed_s += result.analysed_s or result.duration_s
                for name, est in result.outputs.items():
                    cell.same_decided[name] = cell.same_decided.get(name, 0) + int(est.decided == full_decided[name])
                for name, probs in _probabilities(result).items():
                    cell.same_top[name] = cell.same_top.get(name, 0) + int(probs.argmax() == full[name].argmax())
                    cell.max_abs_diff[name] = max(cell.max_abs_diff.get(name, 0.0),
                                                  float(np.abs(probs - full[name]).max()))
                if label is not None:
                    cell.labelled += 1
                    cell.label_correct += int(result.outputs["genre"].top == label)
        report["folders"][folder] = {s: vars(c) for s, c in cells.items()}
    return report


def markdown(report: dict) -> str:
    lines = ["| folder | coverage | files (excerpts used) | same top genre | same top MSD tag | max \\|Δp\\| genre "
             "| same decided genre | audio analysed | CPU vs full | genre = label |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for folder, cells in report["folders"].items():
        full_cpu = cells["full"]["cpu_s"] or 1e-9
        for setting, c in cells.items():
            if not c["files"]:
                continue
            same = c["same_top"]
            msd = f"{same['msd_genres']}/{c['files']}" if "msd_genres" in same else "–"
            label = f"{c['label_correct']}/{c['labelled']}" if c["labelled"] else "–"
            lines.append(f"| {Path(folder).name} | {setting} | {c['files']} ({c['used_excerpts']}) "
                         f"| {same.get('genre', 0)}/{c['files']} | {msd} | {c['max_abs_diff'].get('genre', 0):.3f} "
                         f"| {c['same_decided'].get('genre', 0)}/{c['files']} "
                         f"| {100 * c['analysed_s'] / max(c['audio_s'], 1e-9):.0f} % "
                         f"| {c['cpu_s'] / full_cpu:.2f}× ({full_cpu / max(c['cpu_s'], 1e-9):.1f}× faster) "
                         f"| {label} |")
    return "\n".join(lines)


def main(folders: list[str], coverages: list[str], out: Path, model: str | None = None) -> int:
    report = run(folders, coverages, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    print(f"report: {out}")
    return 1 if report["failed"] else 0
