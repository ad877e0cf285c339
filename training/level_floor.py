"""Choose the level floor by measurement: what raising quiet tracks to a floor F does, for each candidate F.

For every candidate floor (``--floors``, dBFS; ``none`` is today's runtime) and one gain cap (``--max-gain``):

a. unseen music: every FMA and realworld file at its own level and 10, 20, 30 dB quieter (16-bit copies, as
   :mod:`training.level_check`), then raised as the runtime would (:func:`tagger.level.floor_gain_db`); per
   gain: top genre changed from its own level's answer, of those decided (a confident wrong genre), called
   no music;
b. the labelled clips measured below F: their out-of-fold answer on the card's artist-grouped folds with
   the shipped recipe (the head chosen by the build, trained on the other folds from the cached features,
   the build's temperature), at their own level and raised to F; accuracy and decided-and-wrong, before
   and after. Only the raised test clips' features are computed (musicnn in PyTorch, as the build's cache),
   into ``--floor-cache``;
c. the non-music clips of :mod:`training.negatives`, plus hiss and hum at -50 and -65 dBFS, raised: still
   "no music"?

Each tag goes through the runtime's fast path (the int8 file on the CPU, as ``tag``), fed the gained
samples. The result is one JSON file.

    nice -n 10 python -m training.level_floor --data ../shared/data --out models/msd-musicnn-gtzan.floor.json

The card's Level section quotes it (``python -m training.default_model --card-only``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tagger.decode import decode_file
from tagger.level import ABSOLUTE_GATE_DBFS, MAX_MAX_GAIN_DB, floor_gain_db, level_dbfs
from tagger.pipeline import Tagger, TrackResult

GAINS_DB = (0.0, -10.0, -20.0, -30.0)
FLOORS = (None, -35.0, -30.0, -25.0, -20.0)

CV_REPORT = "models/msd-musicnn-gtzan.cv.json"  # the card's folds and shipped recipe (training.shipped.MODEL_NAME)
# What each part measures from --data (a part not listed reads nothing there).
PARTS: dict[str, tuple[str, ...]] = {"unseen": ("fma", "realworld"),
                                     "labelled": ("gtzan/labels.csv", "gtzan-excerpts/labels.csv"),
                                     "non-music": ()}


def parse_floors(text: str) -> tuple[float | None, ...] | None:
    """``--floors``: comma-separated ``none`` (no floor) or levels in dBFS within the manifest's range
    (:func:`tagger.model._level_floor`); None when ``text`` is not that."""
    floors: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "none":
            floors.append(None)
            continue
        try:
            floor = float(item)
        except ValueError:
            return None
        if not ABSOLUTE_GATE_DBFS < floor < 0.0:  # also rejects nan
            return None
        floors.append(floor)
    return tuple(floors)


def quantised16(audio: np.ndarray) -> np.ndarray:
    """``audio`` as a 16-bit WAV file would bring it back (rounded, full scale 32768)."""
    return (np.round(np.clip(audio, -1.0, 1.0) * 32767.0) / 32768.0).astype(np.float32)


def tag_samples(tagger: Tagger, audio: np.ndarray, gain_db: float) -> TrackResult:
    """The runtime's file result (fast path, whole track) for ``audio`` raised by ``gain_db``."""
    stream = tagger.stream(eager=False, fast=tagger.fast)
    raised = audio * np.float32(10.0 ** (gain_db / 20.0))
    step = round(tagger.block_seconds * tagger.sample_rate)
    for lo in range(0, raised.size, step):
        stream.feed(raised[lo:lo + step])
    return stream.track_result("", time.perf_counter(), "full", None)


def row(result: TrackResult, level: float | None, gain: float) -> dict:
    genre = result.outputs[next(iter(result.outputs))]
    return {"level_dbfs": None if level is None else round(level, 2), "gain_db": round(gain, 2), "genre": genre.top,
            "confidence": round(genre.confidence, 4), "decided": bool(genre.decided), "music": result.music,
            "music_probability": round(result.music_probability or 0.0, 4)}


def per_floor(tagger: Tagger, audio: np.ndarray, floors: Sequence[float | None], max_gain: float
              ) -> dict[str, dict]:
    """The :func:`row` of ``audio`` raised as the runtime would under each floor (dBFS, None: no floor), keyed
    ``str(floor)``, with the gain capped at ``max_gain`` dB. Floors that give one gain share one tag (one row)."""
    level = level_dbfs(audio, tagger.sample_rate)
    done: dict[float, dict] = {}
    rows = {}
    for f in floors:
        gain = floor_gain_db(level, f, max_gain)
        if gain not in done:
            done[gain] = row(tag_samples(tagger, audio, gain), level, gain)
        rows[str(f)] = done[gain]
    return rows


def unseen_music(tagger: Tagger, data: Path, floors, max_gain: float, log: Callable[[str], None]) -> dict:
    from tagger.cli import iter_audio_files

    rate = tagger.sample_rate
    paths = {f"{s}/{p.relative_to(data / s)}": p for s in ("fma", "realworld")
             for p in iter_audio_files([str(data / s)])}
    files: dict[str, dict] = {}
    for name, path in sorted(paths.items()):
        audio = decode_file(path, rate)
        per_gain: dict[str, dict] = {}
        for g in GAINS_DB:
            copy = quantised16(audio * np.float32(10.0 ** (g / 20.0)))
            per_gain[f"{g:g}"] = per_floor(tagger, copy, floors, max_gain)
        files[name] = per_gain
        log(f"{name}: " + ", ".join(f"{g} dB L {v['None']['level_dbfs']}" for g, v in per_gain.items()))
    summary = {}
    for f in floors:
        rows = []
        for g in GAINS_DB:
            changed = decided = no_music = 0
            for per_gain in files.values():
                own, here = per_gain["0"]["None"], per_gain[f"{g:g}"][str(f)]
                wrong = here["genre"] != own["genre"]
                changed += wrong
                decided += wrong and here["decided"] and here["music"]
                no_music += not here["music"]
            rows.append({"gain_db": g, "tracks": len(files), "top_genre_changed": changed,
                         "changed_and_decided": decided, "no_music": no_music})
        summary[str(f)] = rows
    return {"summary": summary, "files": files}


def labelled(data: Path, floors, max_gain: float, features: Path, floor_cache: Path, log: Callable[[str], None]
             ) -> dict:
    import torch

    from tagger.ensemble import DEFAULT_THRESHOLD
    from training.datasets import GTZAN_GENRES, load_gtzan_by_artist
    from training.evaluation import HeadChoice, artist_folds, fit_head, head_logits, load_clips, track_probs
    from training.feature_cache import FeatureCache, frame_features, pool_views
    from training.musicnn import MUSICNN_FRONT_END, MSDMusicnn, fetch_musicnn_wheel
    from training.shipped import N_FOLDS, SEED

    report = json.loads(Path(CV_REPORT).read_text())
    shipped = report["shipped"]
    space, c = shipped["head"].split(" C=")
    if "track-mean" in space:
        raise SystemExit(f"{shipped['head']}: a track-mean head is not handled here")
    choice = HeadChoice(space, float(c))
    degradations = tuple(report["cv"]["genre"]["degradations"])
    variants = ("clean", *degradations) if shipped["augmented"] else ("clean",)
    temperature = shipped["temperature"]
    torch.set_num_threads(1)
    net = MSDMusicnn.pretrained(fetch_musicnn_wheel()).eval()
    sr = MUSICNN_FRONT_END.sample_rate
    tracks = load_gtzan_by_artist([data / "gtzan", data / "gtzan-excerpts"])
    labels = np.array([GTZAN_GENRES.index(t.label) for t in tracks])
    folds = artist_folds(labels, [t.group for t in tracks], N_FOLDS, SEED)
    if folds.tolist() != report["cv"]["genre"]["folds"]:
        raise SystemExit("the folds differ from the card's (models/msd-musicnn-gtzan.cv.json)")

    @torch.no_grad()
    def spaces(x: np.ndarray) -> dict[str, np.ndarray]:
        t = torch.from_numpy(x)
        return {"pooled": net.backend.pool_bn(t).numpy(), "embedding": net.backend.embedding(t).numpy()}

    levels = [level_dbfs(decode_file(t.path, sr), sr) for t in tracks]
    log(f"labelled levels: {sum(v is not None for v in levels)} measured, min {min(v for v in levels if v)}")
    clips = load_clips(FeatureCache(features), [t.track_id for t in tracks], variants, spaces)
    models = [fit_head(clips, np.flatnonzero(folds != k), labels, choice, variants) for k in range(N_FOLDS)]
    out: dict = {"levels": {t.track_id: None if v is None else round(v, 2)
                            for t, v in zip(tracks, levels, strict=True)},
                 "head": shipped["head"], "variants": list(variants), "temperature": temperature, "floors": {}}
    before_all = track_probs([head_logits(models[folds[i]], clips, [i], choice.space)[0] for i in range(len(tracks))],
                             temperature)
    for f in floors:
        if f is None:
            continue
        quiet = [i for i, v in enumerate(levels) if v is not None and v < f]
        rows = []
        for i in quiet:
            gain = floor_gain_db(levels[i], f, max_gain)
            path = floor_cache / f"floor{f:g}-cap{max_gain:g}" / f"{tracks[i].track_id.replace('/', '_')}.npz"
            if path.is_file():
                with np.load(path) as stored:
                    feats = {k: stored[k] for k in stored.files}
            else:
                audio = decode_file(tracks[i].path, sr) * np.float32(10.0 ** (gain / 20.0))
                feats = pool_views(frame_features(net, audio))
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, **feats)
            model = models[folds[i]]
            after = track_probs([{v: model.logits(spaces(x)[choice.space]) for v, x in feats.items()}], temperature)[0]
            before = before_all[i]
            rows.append({"clip": tracks[i].track_id, "label": tracks[i].label, "level_dbfs": round(levels[i], 2),
                         "gain_db": round(gain, 2),
                         "before": {"genre": GTZAN_GENRES[int(before.argmax())], "p": round(float(before.max()), 4)},
                         "after": {"genre": GTZAN_GENRES[int(after.argmax())], "p": round(float(after.max()), 4)}})

        def count(side: str, rows: list[dict] = rows) -> dict:
            right = sum(r[side]["genre"] == r["label"] for r in rows)
            wrong_decided = sum(r[side]["genre"] != r["label"] and r[side]["p"] >= DEFAULT_THRESHOLD for r in rows)
            return {"right": right, "decided_wrong": wrong_decided,
                    "accuracy": round(right / len(rows), 4) if rows else None}

        out["floors"][str(f)] = {"clips": len(rows), "labels": dict(sorted(
            {g: sum(r["label"] == g for r in rows) for g in GTZAN_GENRES}.items())),
            "before": count("before"), "after": count("after"), "rows": rows}
        log(f"floor {f}: {len(rows)} labelled clips below; before {count('before')}, after {count('after')}")
    return out


def non_music(tagger: Tagger, floors, max_gain: float, log: Callable[[str], None]) -> dict:
    from training.negatives import _at_level, all_non_music, colored_noise, hum, iter_audio

    rate = tagger.sample_rate
    rng = np.random.default_rng(11)
    n = 10 * rate
    extra = {f"white{db}": _at_level(colored_noise(n, 0.0, rng), db) for db in (-50, -65)}
    extra |= {f"pink{db}": _at_level(colored_noise(n, 1.0, rng), db) for db in (-50, -65)}
    extra |= {f"hum50{db}": _at_level(hum(n, rate, 50.0, rng), db) for db in (-50, -65)}
    clips = [(c.clip_id, audio) for c, audio in iter_audio(all_non_music(), rate)] + list(extra.items())
    files: dict[str, dict] = {}
    for clip_id, audio in clips:
        files[clip_id] = per_floor(tagger, quantised16(audio), floors, max_gain)
    summary = {str(f): {"clips": len(files), "raised": sum(v[str(f)]["gain_db"] > 0 for v in files.values()),
                        "music": sorted(k for k, v in files.items() if v[str(f)]["music"])} for f in floors}
    for f, s in summary.items():
        log(f"non-music, floor {f}: {s['raised']} raised, called music: {s['music']}")
    return {"summary": summary, "files": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="the shared data (default ../shared/data)")
    parser.add_argument("--floors", default="none,-35,-30,-25,-20",
                        help="candidate floors, dBFS, comma-separated; none: no floor (default none,-35,-30,-25,-20)")
    parser.add_argument("--max-gain", type=float, default=30.0, help="the most a track is raised, dB (default 30)")
    parser.add_argument("--features", default=".cache/features",
                        help="the build's feature cache, read only (default .cache/features)")
    parser.add_argument("--floor-cache", default=".cache/features-floor",
                        help="where the raised clips' features are cached (default .cache/features-floor)")
    parser.add_argument("--parts", default="unseen,labelled,non-music",
                        help="what to measure, comma-separated (default unseen,labelled,non-music)")
    parser.add_argument("--out", default="models/msd-musicnn-gtzan.floor.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    # Every check before the model loads: a bad value is one line, not a traceback minutes in.
    floors = parse_floors(args.floors)
    if floors is None:
        parser.error(f"--floors: {args.floors!r}: not comma-separated floors, each none or a level in "
                     f"({ABSOLUTE_GATE_DBFS:g}, 0) dBFS")
    if not 0.0 < args.max_gain <= MAX_MAX_GAIN_DB:
        parser.error(f"--max-gain: {args.max_gain:g}: not within (0, {MAX_MAX_GAIN_DB:g}] dB")
    parts = {p.strip() for p in args.parts.split(",")}
    if not parts or not parts <= set(PARTS):
        parser.error(f"--parts: {args.parts!r}: not comma-separated names of {', '.join(PARTS)}")
    data = Path(args.data)
    missing = [need for part, needs in PARTS.items() if part in parts for need in needs if not (data / need).exists()]
    if missing:
        parser.error(f"--data: {args.data!r}: no {', '.join(missing)} there (needed by --parts {args.parts})")
    if "labelled" in parts and not Path(args.features).is_dir():
        parser.error(f"--features: {args.features!r}: no such folder (the labelled part reads the build's features)")
    if "labelled" in parts and not Path(CV_REPORT).is_file():
        parser.error(f"{CV_REPORT}: no such file (the labelled part retrains its head: run from the repository root)")
    if not Path(args.out).parent.is_dir():
        parser.error(f"--out: {args.out!r}: no folder {str(Path(args.out).parent)!r} to write it in")
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)

    tagger = Tagger(None)
    doc: dict = {"command": " ".join(["python -m training.level_floor", *(sys.argv[1:] if argv is None else argv)]),
                 "floors": [str(f) for f in floors], "max_gain_db": args.max_gain, "model": tagger.manifest.name,
                 "level_measure": "tagger.level: mean power of the 0.4 s blocks (0.1 s steps) above -70 dBFS and "
                                  "above 10 dB under their mean, dBFS (full-scale square wave 0 dBFS)"}
    if "unseen" in parts:
        doc["unseen"] = unseen_music(tagger, data, floors, args.max_gain, log)
        for f, rows in doc["unseen"]["summary"].items():
            log(f"unseen, floor {f}: " + "; ".join(f"{r['gain_db']:g} dB changed {r['top_genre_changed']} "
                                                  f"decided {r['changed_and_decided']} no music {r['no_music']}"
                                                  for r in rows))
    if "labelled" in parts:
        doc["labelled"] = labelled(data, floors, args.max_gain, Path(args.features),
                                   Path(args.floor_cache), log)
    if "non-music" in parts:
        doc["non_music"] = non_music(tagger, floors, args.max_gain, log)
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
