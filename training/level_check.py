"""How the model's answer moves when the same music is played quieter: the level check of the model card.

A log-mel front end is not level-invariant (``log10(10000·x + 1)`` of the mel power), so the same track
mastered or captured quieter gives other features. This plays every FMA and realworld file (music never
trained on) through the runtime as ``tag`` does (:meth:`tagger.pipeline.Tagger.tag_file`), at its own
level and at each gain of ``--gains`` (default 0, -10, -20, -30 dB: an older master, a line input turned
down), and counts, per gain, the tracks whose top genre differs from the one at their own level, those
called no music, and the mean change of the top genre's confidence. The gained copies are 16-bit WAV
files at the model's rate in a temporary folder; the user's files are only read.

When the model states a level floor (``level_floor_dbfs``, :mod:`tagger.level`), the runtime analyses a
copy quieter than the floor raised to it; the same copies also go through a twin of the model file whose
manifest lacks the floor (metadata only, in the temporary folder), so that the JSON holds both: with the
floor as shipped (``summary``) and without (``summary_without_floor``).

    python -m training.level_check --data ../shared/data --out models/msd-musicnn-gtzan.level.json

``--live`` plays the first ``LIVE_SECONDS`` of each copy through the live path instead (an eager stream, as the
daemon's live input: a model with a floor raises it by its running gain, :class:`tagger.level.RunningFloor`),
and reads the top genre of the mean of the windows that end from ``LIVE_FROM_S`` to ``LIVE_SECONDS`` (after the
running level and gain have settled); the reference is the same track played at its own level.

``python -m training.default_model --card-only`` adds the result to the card when the file is there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tagger.decode import decode_file
from tagger.errors import TaggerError
from tagger.level import RUNNING_HORIZON_SECONDS, RUNNING_MAX_DB_PER_SECOND
from tagger.pipeline import Tagger, TrackResult
from training.datasets import write_pcm16_wav

GAINS_DB = (0.0, -10.0, -20.0, -30.0)
LIVE_SECONDS = 30.0  # --live: each copy's first this many seconds are played
LIVE_FROM_S = 20.0  # --live: the answer is the mean of the windows ending from here on
LIVE_BLOCK_S = 0.25  # --live: the block fed at a time, as training.live_eval
SETS = ("fma", "realworld")


def _row(gain: float, result: TrackResult, genre: str) -> dict:
    estimate = result.outputs[genre]
    return {"gain_db": gain, "level_dbfs": None if result.level_dbfs is None else round(result.level_dbfs, 2),
            "raised_db": round(result.gain_db, 2), "genre": estimate.top, "confidence": round(estimate.confidence, 4),
            "decided": bool(estimate.decided), "music": result.music,
            "music_probability": round(result.music_probability or 0.0, 4)}


def _said(row: dict) -> str:
    raised = f" (raised {row['raised_db']:g} dB)" if row["raised_db"] else ""
    return f"{row['gain_db']:g} dB {row['genre']}{raised}{'' if row['music'] else ' (no music)'}"


def live_row(gain: float, tagger: Tagger, audio: np.ndarray) -> dict:
    """``audio`` played through the live path (an eager stream, 0.25 s blocks): the row of the mean of the windows
    ending from ``LIVE_FROM_S`` s on; ``level_dbfs`` and ``raised_db`` the running floor's level and gain at the
    end (None and 0 without a floor)."""
    manifest = tagger.manifest
    genre, detector = manifest.genre_outputs[0], manifest.music
    stream = tagger.stream(eager=True, fast=tagger.fast)
    step = round(LIVE_BLOCK_S * tagger.sample_rate)
    audio = audio[:round(LIVE_SECONDS * tagger.sample_rate)]
    slices = [r for start in range(0, audio.size, step) for r in stream.feed(audio[start:start + step])]
    late = [r for r in slices if r.end_s >= min(LIVE_FROM_S, audio.size / tagger.sample_rate - 5.0)]
    probs = np.mean([r.probabilities[genre.name] for r in late], axis=0)
    music = float(np.mean([r.probabilities[detector.output][0] for r in late])) if detector is not None else 1.0
    best = int(np.argmax(probs))
    floor = stream.floor
    return {"gain_db": gain, "level_dbfs": None if floor is None or floor.level_dbfs is None
            else round(floor.level_dbfs, 2), "raised_db": round(floor.gain_db, 2) if floor is not None else 0.0,
            "genre": genre.labels[best], "confidence": round(float(probs[best]), 4),
            "decided": bool(probs[best] >= tagger.threshold),
            "music": detector is None or music >= detector.threshold, "music_probability": round(music, 4)}


def check_file(tagger: Tagger, path: Path, gains_db: tuple[float, ...], scratch: Path,
               without_floor: Tagger | None = None, live: bool = False) -> tuple[list[dict], list[dict] | None]:
    """One row per gain: the runtime's gated level of the copy (dBFS), the gain it was analysed raised by
    (``raised_db``), its top genre, confidence, decided or not, and the music decision; the same rows from
    ``without_floor`` (the model without its floor) when given. ``live``: played through the live path
    (:func:`live_row`), not tagged as a file."""
    rate = tagger.sample_rate
    audio = decode_file(path, rate)
    genre = tagger.manifest.genre_outputs[0].name
    rows, plain = [], []
    for gain in gains_db:
        copy = write_pcm16_wav(scratch / "copy.wav", audio * np.float32(10.0 ** (gain / 20.0)), rate)
        if live:
            samples = decode_file(copy, rate)  # 16-bit, as a line input's converter gives it
            rows.append(live_row(gain, tagger, samples))
            if without_floor is not None:
                plain.append(live_row(gain, without_floor, samples))
            continue
        rows.append(_row(gain, tagger.tag_file(copy), genre))
        if without_floor is not None:
            plain.append(_row(gain, without_floor.tag_file(copy), genre))
    return rows, plain if without_floor is not None else None


def summarise(files: dict[str, list[dict]], gains_db: tuple[float, ...]) -> list[dict]:
    """Per gain: tracks whose top genre changed from their own level's (and of those, how many came out
    decided: a confident wrong genre), called no music, and the mean |Δ confidence|."""
    out = []
    for i, gain in enumerate(gains_db):
        changed, decided, no_music, deltas, moves = 0, 0, 0, [], Counter()
        for rows in files.values():
            own, here = rows[0], rows[i]
            changed += here["genre"] != own["genre"]
            decided += here["genre"] != own["genre"] and here["decided"] and here["music"]
            no_music += not here["music"]
            deltas.append(abs(here["confidence"] - own["confidence"]))
            if here["genre"] != own["genre"]:
                moves[f"{own['genre']} → {here['genre']}"] += 1
        out.append({"gain_db": gain, "tracks": len(files), "top_genre_changed": changed,
                    "changed_and_decided": decided, "no_music": no_music,
                    "mean_abs_confidence_change": round(float(np.mean(deltas)), 4) if deltas else 0.0,
                    "changes": dict(moves.most_common())})
    return out


def main(argv: list[str] | None = None) -> int:
    from tagger.cli import iter_audio_files

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding fma/ and realworld/ "
                                                                 "(default ../shared/data)")
    parser.add_argument("--model", default=None, help="model name or file (default: the default model)")
    parser.add_argument("--gains", default=",".join(f"{g:g}" for g in GAINS_DB),
                        help="gains in dB, comma-separated, the first 0 (the reference): --gains=0,-6 "
                             "(default 0,-10,-20,-30)")
    parser.add_argument("--live", action="store_true",
                        help=f"play each copy's first {LIVE_SECONDS:g} s through the live path (the daemon's live "
                             f"input) and read the windows ending from {LIVE_FROM_S:g} s on, instead of tagging it "
                             "as a file")
    parser.add_argument("--out", default="models/level-check.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    try:
        gains = tuple(float(g) for g in args.gains.split(",") if g.strip())
    except ValueError:
        parser.error(f"--gains: {args.gains!r}: not comma-separated numbers of dB")
    if not gains or gains[0] != 0.0 or any(g > 0.0 for g in gains):
        parser.error(f"--gains: {args.gains!r}: must start with 0 and never go above 0 dB (clipping)")
    data = Path(args.data)
    paths = {f"{s}/{p.relative_to(data / s)}": p for s in SETS if (data / s).is_dir()
             for p in iter_audio_files([str(data / s)])}
    if not paths:
        parser.error(f"--data: {args.data!r}: no audio under {' or '.join(SETS)}")
    if not Path(args.out).parent.is_dir():
        parser.error(f"--out: {args.out!r}: folder {str(Path(args.out).parent)!r} does not exist")
    started = time.perf_counter()
    try:
        tagger = Tagger(args.model)
    except TaggerError as exc:
        parser.error(f"--model: {exc}")
    files: dict[str, list[dict]] = {}
    plain: dict[str, list[dict]] = {}
    floor = tagger.manifest.level_floor_dbfs
    with tempfile.TemporaryDirectory(prefix="genre-tagger-level-") as scratch:
        without_floor = None
        if floor is not None:
            import dataclasses
            import shutil

            from tagger.model import read_manifest
            from training.export import rewrite_manifest

            twin = Path(scratch) / "without-floor.onnx"
            shutil.copyfile(tagger.engine.path, twin)
            rewrite_manifest(twin, dataclasses.replace(read_manifest(twin), level_floor_dbfs=None))
            without_floor = Tagger(twin)
        for i, (name, path) in enumerate(sorted(paths.items()), 1):
            files[name], rows = check_file(tagger, path, gains, Path(scratch), without_floor, args.live)
            if rows is not None:
                plain[name] = rows
            print(f"{i}/{len(paths)} {name}: " + ", ".join(_said(r) for r in files[name]), flush=True)
    summary = summarise(files, gains)
    for row in summary:
        print(f"{row['gain_db']:>6g} dB: top genre changed {row['top_genre_changed']}/{row['tracks']} "
              f"({row['changed_and_decided']} decided), "
              f"no music {row['no_music']}, mean |Δ confidence| {row['mean_abs_confidence_change']:.3f} "
              f"{row['changes']}")
    doc = {"model": tagger.manifest.name, "version": tagger.manifest.version,
           "model_sha1": hashlib.sha1(Path(tagger.engine.path).read_bytes()).hexdigest()[:16],
           "command": " ".join(["python -m training.level_check", *(sys.argv[1:] if argv is None else argv)]),
           "path": "live" if args.live else "file", "level_floor_dbfs": floor,
           "level_max_gain_db": tagger.manifest.level_max_gain_db if floor is not None else None,
           "gains_db": list(gains), "summary": summary, "files": files,
           **({"running_horizon_s": RUNNING_HORIZON_SECONDS, "running_max_db_per_s": RUNNING_MAX_DB_PER_SECOND}
              if args.live else {}),
           "elapsed_s": round(time.perf_counter() - started, 1)}
    if plain:
        # Against the same reference (each track at its own level, as shipped: inside the range, so never raised).
        doc["summary_without_floor"] = summarise({k: [files[k][0], *v[1:]] for k, v in plain.items()}, gains)
        doc["files_without_floor"] = plain
    Path(args.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
