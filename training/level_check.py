"""How the model's answer moves when the same music is played quieter: the level check of the model card.

A log-mel front end is not level-invariant (``log10(10000·x + 1)`` of the mel power), so the same track
mastered or captured quieter gives other features. This plays every FMA and realworld file (music never
trained on) through the runtime as ``tag`` does, at its own level and at each gain of ``--gains``
(default 0, -10, -20, -30 dB: an older master, a line input turned down), and counts, per gain, the
tracks whose top genre differs from the one at their own level, those called no music, and the mean
change of the top genre's confidence. The gained copies are 16-bit WAV files at the model's rate in a
temporary folder; the user's files are only read.

    python -m training.level_check --data ../shared/data --out models/msd-musicnn-gtzan.level.json

``python -m training.default_model --card-only`` adds the result to the card when the file is there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import wave
from collections import Counter
from pathlib import Path

import numpy as np

from service.live import level_dbfs
from tagger.decode import decode_file
from tagger.pipeline import Tagger

GAINS_DB = (0.0, -10.0, -20.0, -30.0)
SETS = ("fma", "realworld")


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    """``audio`` (mono float, [-1, 1]) as a 16-bit PCM WAV file at ``rate`` Hz."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def check_file(tagger: Tagger, path: Path, gains_db: tuple[float, ...], scratch: Path) -> list[dict]:
    """One row per gain: the runtime's top genre, its confidence, decided or not, and the music decision."""
    rate = tagger.sample_rate
    audio = decode_file(path, rate)
    genre = tagger.manifest.genre_outputs[0].name
    rows = []
    for gain in gains_db:
        copy = write_wav(scratch / "copy.wav", audio * np.float32(10.0 ** (gain / 20.0)), rate)
        result = tagger.tag_file(copy)
        estimate = result.outputs[genre]
        rows.append({"gain_db": gain, "level_dbfs": round(level_dbfs(audio) + gain, 2), "genre": estimate.top,
                     "confidence": round(estimate.confidence, 4), "decided": bool(estimate.decided),
                     "music": result.music, "music_probability": round(result.music_probability or 0.0, 4)})
    return rows


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
    started = time.perf_counter()
    tagger = Tagger(args.model)
    files: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="genre-tagger-level-") as scratch:
        for i, (name, path) in enumerate(sorted(paths.items()), 1):
            files[name] = check_file(tagger, path, gains, Path(scratch))
            print(f"{i}/{len(paths)} {name}: " + ", ".join(f"{r['gain_db']:g} dB {r['genre']}"
                                                           f"{'' if r['music'] else ' (no music)'}"
                                                           for r in files[name]), flush=True)
    summary = summarise(files, gains)
    for row in summary:
        print(f"{row['gain_db']:>6g} dB: top genre changed {row['top_genre_changed']}/{row['tracks']} "
              f"({row['changed_and_decided']} decided), "
              f"no music {row['no_music']}, mean |Δ confidence| {row['mean_abs_confidence_change']:.3f} "
              f"{row['changes']}")
    doc = {"model": tagger.manifest.name, "version": tagger.manifest.version,
           "model_sha1": hashlib.sha1(Path(tagger.engine.path).read_bytes()).hexdigest()[:16],
           "command": " ".join(["python -m training.level_check", *(sys.argv[1:] if argv is None else argv)]),
           "gains_db": list(gains), "summary": summary, "files": files,
           "elapsed_s": round(time.perf_counter() - started, 1)}
    Path(args.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
