"""Models for an out-of-fold live measurement: the shipped model retrained without one artist half.

:mod:`training.live_eval` builds its streams from the shared GTZAN clips, which the shipped genre head (and the
music detector, whose music positives they are) was trained on. For each artist half it splits the streams
into, this module trains the shipped recipe (:mod:`training.shipped`: the same head, degraded training copies,
C, temperature fit and detector) on the labelled clips (``gtzan`` and ``gtzan-excerpts``) whose artist is not
in that half, and exports it as the build exports the shipped one (float32 and the int8 CPU twin, which is what
``Tagger()`` loads by default on the CPU). Streams of a half are then recorded with that half's model only.

What is still shared with the shipped model (not out of fold): the head *choice*, its C, whether degraded
copies are trained on, and the music threshold were chosen by the build's cross-validation over all labelled
clips (``<model>.cv.json``), and the detector's C by its cross-validation over every non-music clip. The music
detector trains on every packaged-music clip (no stream plays them) and on the non-music clips that the half's own
streams do not play.

Features come from the build's cache (``--cache``, read only: every clip and variant must be there); the
exported files go under ``--out``/``<key>``, ``<key>`` naming the training clips and the recipe, so a file is
built once and rebuilt only when what it is trained on changes.

    nice -n 10 python -m training.live_models --data ../shared/data --halves HALVES.json --out CACHE/models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.datasets import GTZAN_GENRES, Track, load_gtzan_by_artist

BUILDER_VERSION = 1  # bump when what a half model is made of changes without its training clips or recipe
DEFAULT_FEATURES = Path(".cache/features")  # the build's feature cache (python -m training.feature_cache)


def labelled_tracks(data: Path) -> list[Track]:
    """Every labelled clip the build trains on (``gtzan`` and ``gtzan-excerpts``), grouped by artist."""
    return load_gtzan_by_artist([data / "gtzan", data / "gtzan-excerpts"])


def training_indices(tracks: Sequence[Track], held_out_artists: Collection[str]) -> np.ndarray:
    """The clips a half's model may train on: every labelled clip whose artist (``Track.group``) is not one of
    ``held_out_artists``."""
    held = set(held_out_artists)
    return np.array([i for i, t in enumerate(tracks) if t.group not in held], dtype=np.int64)


@dataclass(frozen=True)
class HalfModel:
    """A half's exported model.

    Attributes:
        path: the int8 file (what ``Tagger()`` runs by default on the CPU).
        float32: its float32 twin.
        trained_on: the labelled clips (track ids) its heads were trained on.
        non_music_trained_on: the non-music clips (``clip_id``) its music detector was trained on.
        temperature: the genre head's temperature.
        key: the folder name (training clips and recipe).
    """

    path: Path
    float32: Path
    trained_on: tuple[str, ...]
    non_music_trained_on: tuple[str, ...]
    temperature: float
    key: str


def model_key(trained_on: Sequence[str], non_music: Sequence[str], recipe) -> str:
    """A short stable name for a model trained on the labelled clips ``trained_on`` and the non-music clips
    ``non_music`` with ``recipe``."""
    from training.shipped import LEVEL_FLOOR_DBFS, LEVEL_MAX_GAIN_DB, MODEL_VERSION

    # The level floor is in the key: it changes what the live path feeds the model, not the weights.
    text = json.dumps({"clips": sorted(trained_on), "non_music": sorted(non_music), "recipe": asdict(recipe),
                       "version": MODEL_VERSION, "builder": BUILDER_VERSION,
                       "level_floor": [LEVEL_FLOOR_DBFS, LEVEL_MAX_GAIN_DB]}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def build_half_models(data: Path, held_out: Sequence[Collection[str]], held_out_sounds: Sequence[Collection[str]],
                      out: Path, features: Path = DEFAULT_FEATURES, packages: Path | None = None,
                      report: Path = Path("models/msd-musicnn-gtzan.cv.json"), calibration: Path | None = None,
                      log: Callable[[str], None] = print) -> list[HalfModel]:
    """One model per entry of ``held_out`` (a half's artists, as ``Track.group``): the shipped recipe (read
    from ``report``) trained on every other labelled clip, its music detector also without the non-music clips
    of that half's ``held_out_sounds`` (``clip_id`` of :func:`training.negatives.all_non_music`), exported under
    ``out``. A model already there is reused."""
    from training.music_sources import DEFAULT_ROOT
    from training.negatives import all_non_music
    from training.shipped import recipe_of_report

    shipped = json.loads(Path(report).read_text())
    recipe = recipe_of_report(shipped)
    tracks = labelled_tracks(data)
    negatives = [n.clip_id for n in all_non_music()]
    unknown = set().union(*held_out_sounds) - set(negatives)
    if unknown:
        raise ValueError(f"not non-music clips of training.negatives: {sorted(unknown)}")
    plans = []
    for artists, sounds in zip(held_out, held_out_sounds, strict=True):
        idx = training_indices(tracks, artists)
        ids = tuple(tracks[i].track_id for i in idx)
        left = set(sounds)
        quiet = np.array([i for i, n in enumerate(negatives) if n not in left], dtype=np.int64)
        quiet_ids = tuple(negatives[i] for i in quiet)
        plans.append((idx, ids, quiet, quiet_ids, out / model_key(ids, quiet_ids, recipe)))
    todo = [p for p in plans if not (p[4] / "done.json").is_file()]
    if todo:
        _build(data, tracks, recipe, todo, features, packages or DEFAULT_ROOT, calibration or data / "fma", log,
               [p["clip"] for p in shipped["shipped"].get("packaged", [])])
    models = []
    for _, ids, _, quiet_ids, folder in plans:
        done = json.loads((folder / "done.json").read_text())
        models.append(HalfModel(folder / done["int8"], folder / done["float32"], ids, quiet_ids, done["temperature"],
                                folder.name))
    return models


def _build(data: Path, tracks: Sequence[Track], recipe, plans: list, features: Path, packages: Path,
           calibration: Path, log: Callable[[str], None], shipped_packaged: Sequence[str]) -> None:
    """Load the cached features once, then train and export each planned model (the packaged music must be what
    the shipped detector was trained on: ``shipped_packaged``)."""
    import torch

    from training.evaluation import DetectorData, load_clips
    from training.feature_cache import NON_MUSIC_VARIANTS, PACKAGE_VARIANTS, FeatureCache
    from training.music_sources import excerpts
    from training.musicnn import MSDMusicnn, fetch_musicnn_wheel
    from training.negatives import all_non_music
    from training.shipped import export_files, feature_spaces, manifest, recipe_temperature, shipped_model

    torch.set_num_threads(1)
    started = time.perf_counter()
    net = MSDMusicnn.pretrained(fetch_musicnn_wheel()).eval()
    cache = FeatureCache(features)  # no network: a clip missing from the cache is an error, never computed here
    spaces = feature_spaces(net)
    negatives = all_non_music()
    packaged = excerpts(root=packages, log=lambda line: None)  # the build's notes on skipped files, said there
    if [e.clip_id for e in packaged] != list(shipped_packaged):
        raise SystemExit(f"{packages}: {len(packaged)} packaged excerpts, not the {len(shipped_packaged)} the shipped "
                         "music detector was trained on")
    music_variants = tuple(dict.fromkeys(("clean", *recipe.variants, *recipe.detector_variants)))
    non_music_variants = tuple(v for v in NON_MUSIC_VARIANTS if v in music_variants)
    music = load_clips(cache, [t.track_id for t in tracks], music_variants, spaces)
    non_music = load_clips(cache, [f"nonmusic/{n.clip_id}" for n in negatives], non_music_variants, spaces)
    packaged_clips = load_clips(cache, [e.clip_id for e in packaged], PACKAGE_VARIANTS, spaces) if packaged else None
    detector_data = DetectorData(music, non_music, recipe.detector_variants, non_music_variants, packaged_clips,
                                 PACKAGE_VARIANTS if packaged else (), [e.package for e in packaged])
    labels = np.array([GTZAN_GENRES.index(t.label) for t in tracks])
    groups = [t.group for t in tracks]
    log(f"features of {len(tracks)} labelled, {len(negatives)} non-music and {len(packaged)} packaged clips loaded "
        f"in {time.perf_counter() - started:.0f} s")
    for idx, ids, quiet, quiet_ids, folder in plans:
        began = time.perf_counter()
        temperature = recipe_temperature(music, labels, groups, idx, recipe)
        model = shipped_model(net, music, labels, idx, recipe, detector_data, temperature, quiet)
        kept = set(idx.tolist())
        left_out = sorted({t.group for i, t in enumerate(tracks) if i not in kept})
        metrics = {"live_eval_half_model": {"trained_on": len(ids), "left_out_clips": len(tracks) - len(ids),
                                            "left_out_artists": len(left_out), "temperature": temperature,
                                            "head": recipe.head.name, "variants": list(recipe.variants),
                                            "detector_c": recipe.detector_c, "non_music": len(quiet_ids)}}
        training_data = (f"GTZAN: {len(ids)} of {len(tracks)} labelled clips (the artists of one live_eval half "
                         "left out)" + (", also under " + ", ".join(recipe.variants[1:]) if len(recipe.variants) > 1
                                        else "")
                         + f"; non-music: {len(quiet_ids)} of {len(negatives)} clips (those the half's streams "
                         f"play left out); packaged music: {len(packaged)} excerpts")
        spec = manifest(metrics, training_data, recipe.music_threshold)
        folder.mkdir(parents=True, exist_ok=True)
        path, int8, _ = export_files(model, spec, folder, calibration,
                                     {"packaged music": [e.make for e in packaged],
                                      "non-music": [n.make for n in negatives]})
        (folder / "trained_on.json").write_text(json.dumps({"trained_on": list(ids), "left_out_artists": left_out,
                                                            "non_music_trained_on": list(quiet_ids)}))
        (folder / "done.json").write_text(json.dumps({"int8": int8.name, "float32": path.name,
                                                      "temperature": temperature, "recipe": asdict(recipe),
                                                      "seconds": round(time.perf_counter() - began, 1)}))
        log(f"{folder}: {len(ids)} clips, T {temperature:.3f}, {time.perf_counter() - began:.0f} s")


def read_halves(path: Path) -> list[dict[str, list[str]]]:
    """The ``--halves`` file: a JSON list with, per half, ``artists`` (``Track.group`` names) and optionally
    ``sounds`` (``clip_id`` of :func:`training.negatives.all_non_music`; default none), both lists of strings.
    Raises OSError when it cannot be read, ValueError (one line, naming the entry) when it is not that."""
    from training.negatives import all_non_music

    try:
        doc = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, list) or not doc:
        raise ValueError("not a JSON list of halves")
    known = {n.clip_id for n in all_non_music()}
    halves = []
    for i, half in enumerate(doc):
        if not isinstance(half, dict) or not set(half) <= {"artists", "sounds"} or "artists" not in half:
            raise ValueError(f"half {i}: not an object with \"artists\" (and optionally \"sounds\")")
        entry = {"artists": half["artists"], "sounds": half.get("sounds", [])}
        for key, names in entry.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"half {i}: {key} {names!r} is not a list of strings")
        unknown = sorted(set(entry["sounds"]) - known)
        if unknown:
            raise ValueError(f"half {i}: sounds {unknown} are not non-music clips of training.negatives")
        halves.append(entry)
    return halves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding gtzan/ … (default ../shared/data)")
    parser.add_argument("--halves", required=True,
                        help="JSON file: per half, {\"artists\": [Track.group, 'artist:…'], \"sounds\": [non-music "
                             "clip_id]} to leave out")
    parser.add_argument("--out", required=True, help="where the models go (one folder per model)")
    parser.add_argument("--cache", default=str(DEFAULT_FEATURES),
                        help=f"the build's feature cache, read only (default {DEFAULT_FEATURES})")
    parser.add_argument("--packages", default=None, help="the packaged music (default .cache/music-packages)")
    parser.add_argument("--report", default="models/msd-musicnn-gtzan.cv.json",
                        help="the shipped model's cv.json, whose recipe is retrained (default "
                             "models/msd-musicnn-gtzan.cv.json)")
    args = parser.parse_args(argv)
    # Checked before any feature is read or model trained: a bad value is one line, not a traceback.
    try:
        halves = read_halves(Path(args.halves))
    except OSError as exc:
        parser.error(f"--halves: {args.halves!r}: {exc.strerror or exc}")
    except ValueError as exc:
        parser.error(f"--halves: {args.halves!r}: {exc}")
    data = Path(args.data)
    missing = [need for need in ("gtzan/labels.csv", "gtzan-excerpts/labels.csv") if not (data / need).is_file()]
    if missing:
        parser.error(f"--data: {args.data!r}: no {', '.join(missing)} there")
    if not Path(args.report).is_file():
        parser.error(f"--report: {args.report!r}: no such file")
    for m in build_half_models(data, [h["artists"] for h in halves], [h["sounds"] for h in halves],
                               Path(args.out), Path(args.cache),
                               Path(args.packages) if args.packages else None, Path(args.report)):
        print(m.path, len(m.trained_on), f"T {m.temperature:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
