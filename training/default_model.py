"""Build, evaluate and export the shipped default model: MSD_musicnn + a GTZAN genre head + a music detector.

    nice -n 10 python -m training.default_model --data ../shared/data --out models

1. Features (:mod:`training.feature_cache`, cached under ``--cache``): every labelled GTZAN clip
   (``gtzan`` and ``gtzan-excerpts``, 391) clean and under each degradation of :mod:`training.degrade`,
   the non-music clips of :mod:`training.negatives` (clean, noisy, MP3, telephone), and the unlabelled
   music kept out of training (``fma``, ``realworld``) as a check of the music detector.
2. Artist-grouped nested 5-fold CV (:mod:`training.evaluation`): the head and its regularisation are
   chosen by an inner CV; the embedding + logistic regression baseline and the previous recipe run on
   the same folds; with and without the degradations as training copies; a temperature fitted on
   out-of-fold predictions; accuracy under every degradation.
3. The music detector's CV on the same folds, non-music held out by kind/language/package and by voice,
   the packaged music (:mod:`training.music_sources`: Debian game soundtracks, fetched by ``apt-get
   download``) held out by package; its threshold is the one with the fewest out-of-fold errors.
4. The shipped head (the nested choice on all clips, temperature folded in) and detector trained on
   every labelled clip, exported as one ONNX file (genre, MSD genre tags, music) and its int8 CPU twin;
   the card, the reliability diagram, the confusion matrix and ``<model>.cv.json`` written beside.

Everything is seeded; the musicnn wheel is fetched with ``pip download musicnn==0.1.0 --no-deps``.

The last step, the runtime check (every labelled clip, the FMA and realworld music and the non-music clips
tagged through the runtime by both exported files), can be re-run alone on the files already in ``--out``,
without retraining, after a runtime change that moves what they answer (a manifest rewritten with
``training.export.rewrite_manifest``, the level floor): it replaces ``<model>.cv.json``'s ``runtime`` and
``runtime_check`` entries and rewrites the card.

    nice -n 10 python -m training.default_model --data ../shared/data --out models --runtime-check-only
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tagger.decode import decode_file
from training.datasets import GTZAN_GENRES, load_gtzan_by_artist
from training.degrade import DEGRADATIONS
from training.evaluation import (
    DETECTOR_C,
    DetectorData,
    artist_folds,
    calibration,
    choose_head,
    choose_threshold,
    detector_cv,
    detector_summary,
    load_clips,
    nested_cv,
    reliability_diagram,
    summary,
    track_probs,
)
from training.feature_cache import NON_MUSIC_VARIANTS, PACKAGE_VARIANTS, FeatureCache, music_clips
from training.metrics import plot_confusion
from training.musicnn import MUSICNN_FRONT_END, MSDMusicnn, fetch_musicnn_wheel
from training.shipped import (
    MODEL_NAME,
    N_FOLDS,
    SEED,
    VIEWS,
    DefaultModel,
    Recipe,
    export_files,
    feature_spaces,
    manifest,
    recipe_logits,
    shipped_model,
)

__all__ = ["MODEL_NAME", "MUSICNN_FRONT_END", "VIEWS", "DefaultModel", "main", "manifest"]


def runtime_check(paths: dict[str, Path], files: dict[str, list[Path]]) -> dict:
    """Tag files with each exported model through the runtime (fast path, as ``tag`` does): per model and
    set, each file's music probability, music decision, top genre, the gated level it was analysed at (dBFS,
    before any gain; None for silence) and the gain it was raised by (dB, 0 above the model's level floor),
    and the wall and CPU seconds it took (this process's CPU time: ONNX Runtime's threads included)."""
    from tagger.pipeline import Tagger

    out: dict = {}
    for name, model in paths.items():
        tagger = Tagger(model)
        out[name] = {}
        for set_name, items in files.items():
            rows = []
            for path in items:
                started, cpu = time.perf_counter(), time.process_time()
                r = tagger.tag_file(path)
                genre = r.outputs["genre"]
                rows.append({"file": str(path), "music": r.music, "music_probability": r.music_probability,
                             "genre": genre.top, "confidence": genre.confidence, "uncertain": genre.uncertain,
                             "msd_top3": [s.label for s in r.outputs["msd_genres"].scores[:3]],
                             "duration_s": r.duration_s, "seconds": time.perf_counter() - started,
                             "cpu_seconds": time.process_time() - cpu,
                             "level_dbfs": r.level_dbfs, "gain_db": r.gain_db,
                             "probs": [s.score for s in
                                       sorted(genre.scores, key=lambda s: GTZAN_GENRES.index(s.label))]})
            out[name][set_name] = rows
            print(f"runtime check: {name} {set_name}: {len(rows)} files, {sum(r['seconds'] for r in rows):.0f} s",
                  flush=True)
    return out


def runtime_check_files(tracks: list, data: Path) -> dict[str, list[Path]]:
    """The music sets of the runtime check: the labelled GTZAN clips (``tracks``, in their order), the FMA clips
    and the realworld tracks under ``data`` (the non-music set is written apart: :func:`non_music_files`)."""
    from tagger.cli import iter_audio_files

    realworld = data / "realworld"
    return {"labelled": [t.path for t in tracks], "fma": sorted((data / "fma").glob("*.mp3")),
            "realworld": list(iter_audio_files([str(realworld)])) if realworld.is_dir() else []}


def runtime_provenance(paths: dict[str, Path], command: str, wall_s: float, cpu_s: float) -> dict:
    """What a runtime check was made with: the command, when (UTC), the files (name, sha1 prefix, level floor)
    and its wall and CPU seconds."""
    from tagger.model import read_manifest

    models = {}
    for name, path in paths.items():
        manifest = read_manifest(path)
        models[name] = {"file": path.name, "sha1": hashlib.sha1(path.read_bytes()).hexdigest()[:16],
                        "level_floor_dbfs": manifest.level_floor_dbfs,
                        "level_max_gain_db": manifest.level_max_gain_db if manifest.level_floor_dbfs is not None
                        else None}
    return {"command": command, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "models": models, "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1)}


def non_music_files(negatives: list, folder: Path) -> list[Path]:
    """Each non-music clip written as a 16-bit WAV file (16 kHz mono, rounded), to go through the runtime as files
    do."""
    from training.datasets import write_pcm16_wav

    folder.mkdir(parents=True, exist_ok=True)
    sr = MUSICNN_FRONT_END.sample_rate
    return [write_pcm16_wav(folder / f"{n.clip_id}.wav", n.make(sr), sr) for n in negatives]


def runtime_changes(before: dict, after: dict) -> list[str]:
    """One line per model and set: how the runtime check's answers moved from ``before`` to ``after`` (no music,
    analysed raised, top genre, uncertain; files matched by path)."""
    lines = []
    for name, sets in after.items():
        for set_name, rows in sets.items():
            # The non-music clips are written to a new temporary folder each time: matched by file name.
            key = (lambda r: Path(r["file"]).name) if set_name == "non-music" else (lambda r: r["file"])
            old = {key(r): r for r in before.get(name, {}).get(set_name, [])}
            common = [(old[key(r)], r) for r in rows if key(r) in old]
            olds = list(old.values())
            tests = (("no music", lambda r: not r["music"]), ("uncertain", lambda r: r["uncertain"]),
                     ("raised", lambda r: (r.get("gain_db") or 0.0) > 0.0))
            counts = {what: (sum(1 for r in olds if test(r)), sum(1 for r in rows if test(r))) for what, test in tests}
            lines.append(f"{name} {set_name}: {len(olds)} → {len(rows)} files; "
                         + "; ".join(f"{what} {a} → {b}" for what, (a, b) in counts.items())
                         + f"; of {len(common)} matched: top genre changed on "
                         f"{sum(1 for a, b in common if a['genre'] != b['genre'])}, music decision on "
                         f"{sum(1 for a, b in common if a['music'] != b['music'])}")
    return lines


def rerun_runtime_check(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> int:
    """``--runtime-check-only``: the runtime check again on the files in ``--out``, on the same file sets; only the
    report's ``runtime`` and ``runtime_check`` entries are replaced, then the card is rewritten. Every argument is
    checked (one error line, exit 2) before a model loads or a file is decoded."""
    import tempfile

    from service.sinks.textfile import write_atomically
    from tagger.errors import TaggerError
    from tagger.pipeline import Tagger
    from training.model_card import card_text
    from training.negatives import all_non_music

    out, data = Path(args.out), Path(args.data)
    stored = out / f"{MODEL_NAME}.cv.json"
    if not stored.is_file():
        parser.error(f"--out: {args.out!r}: no {stored.name} there (a full build writes it)")
    try:
        report = json.loads(stored.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--out: {args.out!r}: {stored.name} is not readable JSON ({exc})")
    if not isinstance(report, dict) or not {"runtime", "tracks", "cv"} <= set(report):
        parser.error(f"--out: {args.out!r}: {stored.name} has no runtime, tracks and cv entries (not a build's "
                     "report)")
    card = out / f"{MODEL_NAME}.md"
    if card.exists() and not card.is_file():
        parser.error(f"--out: {args.out!r}: {card.name} is not a file (the card is written there)")
    try:  # both files are replaced by a temporary file renamed over them: the folder must take a new file
        with tempfile.NamedTemporaryFile(dir=out, prefix=".genre-tagger-write-check-"):
            pass
    except OSError as exc:
        parser.error(f"--out: {args.out!r}: cannot write there ({exc.strerror or exc})")
    missing = [d for d in ("gtzan/labels.csv", "gtzan-excerpts/labels.csv", "fma", "realworld")
               if not (data / d).exists()]
    if missing:
        parser.error(f"--data: {args.data!r}: no {', '.join(missing)} there")
    tracks = load_gtzan_by_artist([data / "gtzan", data / "gtzan-excerpts"])
    # The card's rows and cost line need music in both sets (an empty realworld set divided by zero at the end).
    empty = [name for name, found in runtime_check_files([], data).items() if name != "labelled" and not found]
    if empty:
        parser.error(f"--data: {args.data!r}: no audio files in {', '.join(empty)} (fma/*.mp3 and realworld/ "
                     "tracks: the check tags them)")
    ids = [t.track_id for t in tracks]
    if ids != report["tracks"]:
        absent = sorted(set(report["tracks"]) - set(ids))
        extra = sorted(set(ids) - set(report["tracks"]))
        parser.error(f"--data: {args.data!r}: its labelled clips are not the {len(report['tracks'])} the model was "
                     f"built on ({len(ids)} found" + (f"; missing {', '.join(absent[:3])}" if absent else "")
                     + (f"; not built on {', '.join(extra[:3])}" if extra else "")
                     + ("" if absent or extra else "; in another order") + ")")
    paths = {"float32": out / f"{MODEL_NAME}.onnx", "int8": out / f"{MODEL_NAME}-int8.onnx"}
    for path in paths.values():
        try:
            Tagger(path)
        except TaggerError as exc:
            parser.error(f"--out: {args.out!r}: {exc}")
    started, cpu = time.perf_counter(), time.process_time()
    negatives = all_non_music()
    files = runtime_check_files(tracks, data)
    with tempfile.TemporaryDirectory(prefix="genre-tagger-runtime-check-") as tmp:
        files["non-music"] = non_music_files(negatives, Path(tmp))
        runtime = runtime_check(paths, files)
    before = report["runtime"]
    report["runtime"] = runtime
    report["runtime_check"] = runtime_provenance(paths, command, time.perf_counter() - started,
                                                 time.process_time() - cpu)
    # The card is made before either file is replaced, and each is replaced whole or not at all: a card that
    # cannot be made, a full disk or a kill leaves the old files.
    text = card_text(out, MODEL_NAME, report, negatives)

    def replace(path: Path, content: str, kept: str) -> None:
        try:
            write_atomically(path, content)
        except OSError as exc:
            parser.exit(1, f"{parser.prog}: error: --out: {args.out!r}: cannot write {path.name} "
                           f"({exc.strerror or exc}); kept {kept}\n")

    replace(stored, json.dumps(report, indent=None, separators=(",", ":")), "both old files")
    print("\n".join(runtime_changes(before, runtime)))
    replace(card, text, f"the old card (--card-only writes it from the new {stored.name})")
    print(f"replaced the runtime check in {stored} and wrote {card} in {time.perf_counter() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from service.sinks.textfile import write_atomically
    from training.music_sources import DEFAULT_ROOT, excerpts
    from training.negatives import all_non_music

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding gtzan/ … (default ../shared/data)")
    parser.add_argument("--out", default="models", help="where the model, card and figures go (default models)")
    parser.add_argument("--cache", default=".cache/features", help="feature cache (default .cache/features)")
    parser.add_argument("--packages", default=str(DEFAULT_ROOT),
                        help=f"where the Debian music packages are fetched and unpacked (default {DEFAULT_ROOT})")
    parser.add_argument("--no-packages", action="store_true",
                        help="train the music detector without the packaged music (GTZAN positives only)")
    parser.add_argument("--wheel", help="path of musicnn-0.1.0-py3-none-any.whl (default: pip download it)")
    parser.add_argument("--reuse-cv", action="store_true",
                        help="take the cross-validation results from <cache>/cv.json instead of re-running them "
                             "(re-export after a runtime-format change; the shipped heads are still retrained)")
    parser.add_argument("--calibration", help="folder of audio that calibrates the int8 file, beside the packaged "
                                              "music and the non-music clips (default <data>/fma: not GTZAN, so no "
                                              "CV test clip calibrates it)")
    parser.add_argument("--degradations", default=",".join(DEGRADATIONS),
                        help="degradations to evaluate and train with, comma-separated (default: all of "
                             "training/degrade.py)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--card-only", action="store_true",
                      help="only rewrite the card from <out>/<model>.cv.json (and <model>.live.json, written by "
                           "python -m training.live_eval, when present)")
    only.add_argument("--runtime-check-only", action="store_true",
                      help="no training: tag the same files as the build's runtime check (the labelled clips of "
                           "<data>/gtzan and gtzan-excerpts, which must be the ones the model was built on, "
                           "<data>/fma, <data>/realworld, the non-music clips) with the two model files already in "
                           "<out>, replace the runtime entries of <out>/<model>.cv.json and rewrite the card; "
                           "--cache, --packages, --wheel, --calibration and --degradations are not used (default: "
                           "off, a full build)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m training.default_model", *(sys.argv[1:] if argv is None else argv)])
    if args.runtime_check_only:
        return rerun_runtime_check(parser, args, command)
    if args.card_only:
        from training.model_card import write_card

        report = json.loads((Path(args.out) / f"{MODEL_NAME}.cv.json").read_text())
        print(write_card(Path(args.out), MODEL_NAME, report, all_non_music()))
        return 0
    degradations = tuple(d for d in args.degradations.split(",") if d)
    unknown = sorted(set(degradations) - set(DEGRADATIONS))
    if unknown:
        parser.error(f"--degradations: unknown {unknown}; known: {sorted(DEGRADATIONS)}")
    music_variants = ("clean", *degradations)
    non_music_variants = tuple(v for v in NON_MUSIC_VARIANTS if v in music_variants)
    torch.set_num_threads(1)
    started = time.perf_counter()
    out, data, cache_dir = Path(args.out), Path(args.data), Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    net = MSDMusicnn.pretrained(Path(args.wheel) if args.wheel else fetch_musicnn_wheel()).eval()
    cache = FeatureCache(cache_dir, net)
    sr = MUSICNN_FRONT_END.sample_rate
    tracks = load_gtzan_by_artist([data / "gtzan", data / "gtzan-excerpts"])
    negatives = all_non_music()
    evaluation = [(cid, p) for cid, p in music_clips(data) if "/" in cid]
    packaged = [] if args.no_packages else excerpts(root=Path(args.packages))
    # Fill the cache (a miss is computed; a full cache costs only reading).
    for variant in music_variants:
        for t in tracks:
            cache.get(variant, t.track_id, lambda t=t: decode_file(t.path, sr))
    for variant in non_music_variants:
        for n in negatives:
            cache.get(variant, f"nonmusic/{n.clip_id}", lambda n=n: n.make(sr))
    for cid, p in evaluation:
        cache.get("clean", cid, lambda p=p: decode_file(p, sr))
    for variant in PACKAGE_VARIANTS:
        for e in packaged:
            cache.get(variant, e.clip_id, lambda e=e: e.make(sr))

    spaces = feature_spaces(net)
    music = load_clips(cache, [t.track_id for t in tracks], music_variants, spaces)
    non_music = load_clips(cache, [f"nonmusic/{n.clip_id}" for n in negatives], non_music_variants, spaces)
    held_out = load_clips(cache, [cid for cid, _ in evaluation], ["clean"], spaces)
    packaged_clips = load_clips(cache, [e.clip_id for e in packaged], PACKAGE_VARIANTS, spaces) if packaged else None
    detector_data = DetectorData(music, non_music, music_variants, non_music_variants, packaged_clips,
                                 PACKAGE_VARIANTS if packaged else (), [e.package for e in packaged])
    labels = np.array([GTZAN_GENRES.index(t.label) for t in tracks])
    folds = artist_folds(labels, [t.group for t in tracks], N_FOLDS, SEED)
    stored = cache_dir / "cv.json"
    if args.reuse_cv and stored.is_file():
        cv = json.loads(stored.read_text())
        if cv["genre"]["folds"] != folds.tolist() or tuple(cv["genre"]["degradations"]) != degradations:
            parser.error(f"{stored} was made on other folds: run without --reuse-cv")
        if cv["detector"]["c"] != DETECTOR_C:
            parser.error(f"{stored} has the detector's CV at C = {cv['detector']['c']}, not {DETECTOR_C}: run without "
                         "--reuse-cv")
        if cv["detector"].get("packaged_ids", []) != [e.clip_id for e in packaged]:
            parser.error(f"{stored} was made with other packaged music: run without --reuse-cv")
    else:
        genre_cv = nested_cv(music, tracks, folds, SEED, degradations)
        det_cv = detector_cv(detector_data, folds, negatives, held_out, SEED)
        cv = {"genre": genre_cv, "detector": det_cv}
        write_atomically(stored, json.dumps(cv))
    music_threshold, threshold_rates = choose_threshold(cv["detector"])
    print(f"music threshold {music_threshold} ({threshold_rates[f'{music_threshold:g}']['errors']} out-of-fold "
          "errors)")
    genre_cv = cv["genre"]
    rows = genre_cv["rows"]
    for name, r in rows.items():
        cal = r.get("calibration")
        print(f"{name:12s} acc {r['accuracy']:.3f} (folds {r['accuracy_fold_mean']:.3f} ± "
              f"{r['accuracy_fold_std']:.3f}) "
              f"macro-F1 {r['macro_f1']:.3f} ± {r['macro_f1_fold_std']:.3f} ECE {r['ece']:.3f}"
              + (f" → {cal['ece_cross_fitted']:.3f} (T {cal['temperature']:.2f})" if cal else "")
              + (f"; nested calibration ECE {r['nested_calibration']['ece']:.3f} (folds "
                 f"{r['nested_calibration']['ece_fold_mean']:.3f} ± {r['nested_calibration']['ece_fold_std']:.3f})"
                 if "nested_calibration" in r else ""))
    # Training copies under the degradations are kept when they cost no clean accuracy (within one clip).
    augmented = rows["nested+aug"]["accuracy"] >= rows["nested"]["accuracy"] - 1.0 / len(tracks)
    shipped_row = "nested+aug" if augmented else "nested"
    variants = ("clean", *degradations) if augmented else ("clean",)
    choice, inner = choose_head(music, np.arange(len(tracks)), labels, [t.group for t in tracks], SEED)
    # The shipped recipe (that one choice, fixed) on the same folds: its out-of-fold logits calibrate it.
    logits = recipe_logits(music, np.arange(len(tracks)), labels, folds, choice, variants)
    recipe = summary(labels, track_probs(logits), folds)
    recipe["calibration"] = calibration(logits, labels, folds)
    recipe["calibrated"] = summary(labels, np.array(recipe["calibration"]["cross_fitted_probs"]), folds)
    rows["shipped recipe"] = recipe
    temperature = recipe["calibration"]["temperature"]
    print(f"shipping {shipped_row}: {choice.name} (inner CV on all clips {inner[choice.name]:.3f}); that recipe on "
          f"the folds: acc {recipe['accuracy']:.3f}, ECE {recipe['ece']:.3f} → "
          f"{recipe['calibration']['ece_cross_fitted']:.3f} (T {temperature:.2f})")
    shipped_recipe = Recipe(choice, variants, DETECTOR_C, music_threshold, music_variants)
    model: DefaultModel = shipped_model(net, music, labels, np.arange(len(tracks)), shipped_recipe, detector_data,
                                        temperature)
    shipped_cv = rows[shipped_row]
    metrics = {"cv": f"artist-grouped stratified {N_FOLDS}-fold over {len(tracks)} clips, head chosen by an inner "
                     "4-fold CV, track level",
               "shipped": {"accuracy": shipped_cv["accuracy"], "accuracy_fold_std": shipped_cv["accuracy_fold_std"],
                           "macro_f1": shipped_cv["macro_f1"],
                           "ece_calibrated": recipe["calibration"]["ece_cross_fitted"], "temperature": temperature},
               "baseline": {"accuracy": rows["baseline"]["accuracy"], "macro_f1": rows["baseline"]["macro_f1"]},
               "head": f"{choice.name}{', trained with degraded copies' if augmented else ''}",
               "music_detector": {"c": DETECTOR_C, "threshold": music_threshold},
               "ece_nested": rows[shipped_row]["nested_calibration"]["ece"]}
    training_data = (f"GTZAN: {len(tracks)} clips (../shared/data/gtzan and gtzan-excerpts)"
                     + (", also under " + ", ".join(degradations) if augmented else "")
                     + f"; non-music: {len(negatives)} clips (training/negatives.py) clean and "
                     + ", ".join(non_music_variants[1:])
                     + (f"; music detector also: {len(packaged)} excerpts of {len({e.package for e in packaged})} "
                        "Debian packages' soundtracks (training/music_sources.py)" if packaged else ""))
    spec = manifest(metrics, training_data, music_threshold)
    path, int8, info = export_files(model, spec, out, Path(args.calibration or data / "fma"),
                                    {"packaged music": [e.make for e in packaged],
                                     "non-music": [n.make for n in negatives]})
    check_files = runtime_check_files(tracks, data)
    check_started, check_cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        check_files["non-music"] = non_music_files(negatives, Path(tmp))
        runtime = runtime_check({"float32": path, "int8": int8}, check_files)
    runtime_made = runtime_provenance({"float32": path, "int8": int8}, command, time.perf_counter() - check_started,
                                      time.process_time() - check_cpu)
    plot_confusion(np.array(rows[shipped_row]["report"]["confusion"]), GTZAN_GENRES,
                   out / f"{MODEL_NAME}.confusion.png",
                   f"{MODEL_NAME}: artist-grouped nested 5-fold CV (acc {rows[shipped_row]['accuracy']:.3f})")
    nested_cal = rows[shipped_row]["nested_calibration"]
    reliability_diagram({f"nested, temperature per outer fold (ECE {nested_cal['ece']:.3f})":
                         np.array(nested_cal["probs"]),
                         f"shipped recipe, cross-fitted (ECE {recipe['calibration']['ece_cross_fitted']:.3f})":
                         np.array(recipe["calibration"]["cross_fitted_probs"])},
                        labels, out / f"{MODEL_NAME}.reliability.png",
                        f"{MODEL_NAME}: artist-grouped out-of-fold, {len(tracks)} clips, 15 bins")
    cv["detector_summary"] = detector_summary(cv["detector"], negatives, music_threshold)
    cv["detector_summary"]["threshold_rates"] = threshold_rates
    report = {"tracks": [t.track_id for t in tracks], "groups": [t.group for t in tracks], "cv": cv,
              "shipped": {"row": shipped_row, "head": choice.name, "inner_accuracy": inner, "temperature": temperature,
                          "augmented": augmented, "detector_c": DETECTOR_C, "music_threshold": music_threshold,
                          "packaged": [{"clip": e.clip_id, "package": e.package, "track": e.track,
                                        "offset_s": e.offset_s} for e in packaged]},
              "export": info, "runtime": runtime, "runtime_check": runtime_made, "python": platform.python_version(),
              "torch": torch.__version__,
              "seconds": time.perf_counter() - started}
    write_atomically(out / f"{MODEL_NAME}.cv.json", json.dumps(report, indent=None, separators=(",", ":")))
    from training.model_card import write_card

    card = write_card(out, MODEL_NAME, report, negatives)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), {int8} ({int8.stat().st_size / 1e6:.1f} MB), {card} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
