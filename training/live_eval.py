"""How fast live tagging follows the music, and how often it changes its mind on one song: measured.

Streams are built from shared clips: for switches, a segment of one clip followed by one of another
whose own (file-level) genre differs, both decided (an uncertain genre is never announced, so a switch
to it has nothing to arrive at); for steadiness, single tracks on their own. Each stream is fed
through the runtime's live path once (``Tagger.stream(eager=True, fast=True)``, 0.25 s blocks) and every
update's slices are recorded; then each candidate setting (horizon, hysteresis, views) replays those
slices through the same :class:`tagger.ensemble.Ensemble`, music test and
:class:`service.live.ChangeDetector` the daemon uses, so many settings cost one pass of the model.

- switch delay: from the switch to the first ``genre_changed`` naming the second clip's own genre (a
  switch never announced within the second clip counts as its length, and is reported as missed);
- spurious changes: ``genre_changed`` events on a single-track stream after its first announcement,
  and, in switch streams, changes to a genre that is neither clip's.

    python -m training.live_eval --data ../shared/data --out models/live-eval.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.live import ChangeDetector
from tagger.decode import decode_file
from tagger.ensemble import NO_MUSIC, Ensemble
from tagger.pipeline import Tagger

BLOCK_SECONDS = 0.25
SEGMENT_SECONDS = 30.0
GTZAN_SECONDS = 15.0
STEADY_SECONDS = 90.0
HORIZONS = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 30.0)
HYSTERESES = (1, 2, 3, 4, 5)


@dataclass
class Recording:
    """One stream's updates: per update, the stream time (s) and its slices (view, end_s, probabilities)."""

    name: str
    updates: list[tuple[float, list[tuple[str, float, dict[str, np.ndarray]]]]]
    switch_s: float | None = None
    first: str = ""
    second: str = ""


def record(tagger: Tagger, audio: np.ndarray, name: str, block_seconds: float = BLOCK_SECONDS) -> Recording:
    stream = tagger.stream(horizon_seconds=None, eager=True, fast=tagger.fast)
    step = int(block_seconds * tagger.sample_rate)
    updates = []
    for start in range(0, audio.size, step):
        results = stream.feed(audio[start:start + step])
        if results:
            updates.append((stream.seconds_in, [(r.view, r.end_s, r.probabilities) for r in results]))
    return Recording(name, updates)


def replay(rec: Recording, tagger: Tagger, horizon: float, hysteresis: int, views: tuple[str, ...]
           ) -> list[tuple[float, str]]:
    """The ``genre_changed`` events (stream time, new label) the daemon would announce with these settings."""
    manifest = tagger.manifest
    ensemble = Ensemble(manifest.outputs, list(views), horizon)
    genre = manifest.genre_outputs[0]
    detector = manifest.music
    changes = ChangeDetector(hysteresis)
    events = []
    for t, slices in rec.updates:
        added = False
        for view, end_s, probs in slices:
            if view in views:
                ensemble.add(view, end_s, probs)
                added = True
        if not added:
            continue
        mean = ensemble.combined(genre.name)
        best = int(np.argmax(mean))
        # As service.live.LiveTagger: an uncertain genre is no label to announce.
        label: str | None = genre.labels[best] if mean[best] >= tagger.threshold else None
        if detector is not None and ensemble.combined(detector.output)[0] < detector.threshold:
            label = NO_MUSIC
        change = changes.update(label)
        if change:
            events.append((t, change[1]))
    return events


def file_top(tagger: Tagger, audio: np.ndarray) -> tuple[str, bool]:
    """The clip's own label (the file-level top genre, or "no music") and whether it is decided."""
    stream = tagger.stream(eager=False, fast=tagger.fast)
    stream.feed(audio)
    estimate = stream.finish()[tagger.manifest.genre_outputs[0].name]
    return (estimate.top, not estimate.uncertain) if stream.music() else (NO_MUSIC, True)


def segments(data: Path, rate: int) -> dict[str, np.ndarray]:
    """Segments to switch between: the first 15 s of every clip of ``gtzan/`` (their genres are clear
    to the model, so a switch has a genre to arrive at), 30 s of each FMA clip and of each realworld
    track from 30 s in (its intro skipped)."""
    from tagger.cli import iter_audio_files

    out = {}
    for path in iter_audio_files([str(data / "gtzan")]):
        out[f"gtzan/{path.stem}"] = decode_file(path, rate)[: int(GTZAN_SECONDS * rate)]
    for folder, offset in (("fma", 0.0), ("realworld", 30.0)):
        for path in iter_audio_files([str(data / folder)]):
            audio = decode_file(path, rate)
            a = int(offset * rate) if audio.size > (offset + SEGMENT_SECONDS) * rate else 0
            out[f"{folder}/{path.relative_to(data / folder)}"] = audio[a:a + int(SEGMENT_SECONDS * rate)]
    return out


def evaluate(recordings: list[Recording], steady: list[Recording], tagger: Tagger) -> list[dict]:
    """Every setting's switch delays and spurious changes."""
    view_sets = [tuple(v.name for v in tagger.views)] + [(v.name,) for v in tagger.views]
    results = []
    for horizon, hysteresis, views in itertools.product(HORIZONS, HYSTERESES, view_sets):
        delays, missed, wrong = [], 0, 0
        for rec in recordings:
            events = replay(rec, tagger, horizon, hysteresis, views)
            after = [(t, label) for t, label in events if t > rec.switch_s]
            hit = next((t for t, label in after if label == rec.second), None)
            length = rec.updates[-1][0] - rec.switch_s
            if hit is None:
                missed += 1
                delays.append(length)
            else:
                delays.append(hit - rec.switch_s)
            wrong += sum(1 for _, label in events if label not in (rec.first, rec.second))
        spurious = [max(0, len(replay(rec, tagger, horizon, hysteresis, views)) - 1) for rec in steady]
        d = np.array(delays)
        results.append({"horizon_s": horizon, "hysteresis": hysteresis, "views": list(views),
                        "median_delay_s": float(np.median(d)), "p90_delay_s": float(np.percentile(d, 90)),
                        "worst_delay_s": float(d.max()), "missed": missed, "pairs": len(recordings),
                        "wrong_genre_changes": wrong, "spurious_changes": int(sum(spurious)),
                        "steady_streams_with_changes": int(sum(1 for s in spurious if s)),
                        "steady_streams": len(steady), "delays_s": d.round(3).tolist()})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default=None, help="model name or file (default: the default model)")
    parser.add_argument("--pairs", type=int, default=60, help="switch streams (default 60)")
    parser.add_argument("--out", default="models/live-eval.json")
    args = parser.parse_args(argv)
    data = Path(args.data)
    tagger = Tagger(args.model)
    rate = tagger.sample_rate
    segs = segments(data, rate)
    own = {name: file_top(tagger, audio) for name, audio in segs.items()}
    tops = {name: label for name, (label, _) in own.items()}
    decided = {name: ok for name, (_, ok) in own.items()}
    print("own genres:", tops, flush=True)
    candidates = [(a, b) for a, b in itertools.permutations(sorted(segs), 2)
                  if tops[a] != tops[b] and NO_MUSIC not in (tops[a], tops[b]) and decided[a] and decided[b]]
    rng = np.random.default_rng(20261129)
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), min(args.pairs, len(candidates)),
                                                       replace=False))]
    recordings = []
    for a, b in chosen:
        rec = record(tagger, np.concatenate([segs[a], segs[b]]), f"{a} → {b}")
        rec.switch_s, rec.first, rec.second = segs[a].size / rate, tops[a], tops[b]
        recordings.append(rec)
    steady = []
    from tagger.cli import iter_audio_files

    for path in iter_audio_files([str(data / "realworld")]):
        audio = decode_file(path, rate)[: int(STEADY_SECONDS * rate)]
        steady.append(record(tagger, audio, str(path.relative_to(data))))
    steady += [record(tagger, segs[name], name) for name in segs if name.startswith("fma/")]
    # GTZAN clips on their own, one per genre and id (every tenth clip, to keep the run short).
    steady += [record(tagger, segs[name], name) for name in sorted(segs) if name.startswith("gtzan/")][::10]
    results = evaluate(recordings, steady, tagger)
    ok = [r for r in results if r["spurious_changes"] == 0 and r["wrong_genre_changes"] == 0]
    for r in sorted(ok or results, key=lambda r: (r["worst_delay_s"], r["median_delay_s"]))[:10]:
        print({k: v for k, v in r.items() if k != "delays_s"})
    Path(args.out).write_text(json.dumps({"model": tagger.manifest.name, "version": tagger.manifest.version,
                                          "pairs": [r.name for r in recordings], "own_genres": own,
                                          "steady": [r.name for r in steady], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
