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
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagger.decode import decode_file
from tagger.model import FramePooling, ModelManifest, MusicDetector, OutputSpec
from training.datasets import GTZAN_GENRES, load_gtzan_by_artist
from training.degrade import DEGRADATIONS
from training.evaluation import (
    DETECTOR_C,
    DetectorData,
    LinearModel,
    artist_folds,
    calibration,
    choose_head,
    choose_threshold,
    detector_cv,
    detector_summary,
    fit_detector,
    fit_head,
    head_logits,
    load_clips,
    nested_cv,
    reliability_diagram,
    summary,
    track_probs,
)
from training.feature_cache import NON_MUSIC_VARIANTS, PACKAGE_VARIANTS, FeatureCache, music_clips
from training.metrics import plot_confusion
from training.musicnn import (
    MSD_GENRE_TAGS,
    MSD_TAGS,
    MUSICNN_FRONT_END,
    MUSICNN_STAGES,
    MUSICNN_VIEWS,
    MSDMusicnn,
    MusicnnBackbone,
    fetch_musicnn_wheel,
    interleaved_pool,
)

MODEL_NAME = "msd-musicnn-gtzan"
MODEL_VERSION = "2.1.0"
SEED = 20261121
N_FOLDS = 5
VIEWS = MUSICNN_VIEWS
# Max-pooled convolutions left in float32 in the int8 file, by kernel shape (time, mel): musicnn's 32 × 1
# temporal filters (17 live). Kept in float32 one at a time, on windows of the calibration audio (packaged
# music + non-music, never the evaluation files), only these changed p(music): mean |Δ| vs float32 0.0019 →
# 0.0013 (128 × 1 or 64 × 1: no change). Their cost: ~6 % more CPU time for `tag`, decode included.
INT8_FLOAT_KERNELS = ((32, 1),)
__all__ = ["MUSICNN_FRONT_END", "VIEWS", "DefaultModel", "main", "manifest"]


class GenreHead(nn.Module):
    """Pooled features → genre logits: the frozen pretrained transform (the pooled channels' batch norm,
    or the whole 200-d MSD embedding) and a linear layer (a logistic regression, temperature folded in)."""

    def __init__(self, net: MSDMusicnn, space: str, model: LinearModel, temperature: float = 1.0) -> None:
        super().__init__()
        import copy

        self.space = space
        self.transform = copy.deepcopy(net.backend.pool_bn if space == "pooled" else net.backend).eval()
        for p in self.transform.parameters():
            p.requires_grad_(False)
        self.linear = nn.Linear(model.weight.shape[1], model.weight.shape[0])
        self.linear.weight.data = torch.from_numpy(model.weight / temperature).float()
        self.linear.bias.data = torch.from_numpy(model.bias / temperature).float()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.transform(pooled) if self.space == "pooled" else self.transform.embedding(pooled)
        return self.linear(x)


class DefaultModel(nn.Module):
    """What the ONNX file holds: log-mel slice → (10 GTZAN genre probabilities, MSD genre-tag probabilities,
    the probability of music)."""

    def __init__(self, net: MSDMusicnn, head: nn.Module, music: nn.Module) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.backend = net.backend
        self.head = head
        self.music = music
        self.register_buffer("msd_genre_index", torch.tensor([MSD_TAGS.index(t) for t in MSD_GENRE_TAGS]))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, timbral, temporal = self.backbone.features_and_stages(mel)
        pooled = interleaved_pool(features)
        genre = F.softmax(self.head(pooled), dim=1)
        _, logits = self.backend(pooled)
        tags = torch.sigmoid(logits.index_select(1, self.msd_genre_index))
        music = torch.sigmoid(self.music(pooled))
        return genre, tags, music, features, pooled, timbral, temporal


def manifest(metrics: dict, training_data: str = "", music_threshold: float = 0.5) -> ModelManifest:
    return ModelManifest(
        name=MODEL_NAME, version=MODEL_VERSION, input="mel",
        front_ends={"musicnn": MUSICNN_FRONT_END}, views=VIEWS,
        outputs=(
            OutputSpec("genre", "genre", "softmax", GTZAN_GENRES, "Genre (GTZAN, 10 classes)"),
            OutputSpec("msd_genres", "msd_genres", "sigmoid", MSD_GENRE_TAGS, "Genre tags (Million Song Dataset)"),
            OutputSpec("music", "music", "sigmoid", ("music",), "Music"),
        ),
        description="MSD_musicnn (Pons & Serra 2019) backbone pretrained on the Million Song Dataset, with a "
                    "10-genre GTZAN head (calibrated) and a music detector trained by genre-tagger, plus the MSD "
                    "genre tags as a multi-label output.",
        licence="ISC (musicnn weights, (c) Music Technology Group, Universitat Pompeu Fabra 2019); heads: MIT",
        provenance="musicnn 0.1.0 wheel (PyPI), MSD_musicnn checkpoint imported by training.tf_checkpoint; "
                   "heads trained by training.default_model",
        training_data=training_data,
        metrics=metrics,
        frame_pooling=FramePooling("frame_features", "pooled", "max_mean_interleaved", MusicnnBackbone.CONTEXT,
                                   MUSICNN_STAGES, MusicnnBackbone.MID_CONTEXT),
        music=MusicDetector("music", music_threshold),
    )


def export_files(model: DefaultModel, spec: ModelManifest, out: Path, calibration: Path,
                 clips: dict[str, list[Callable[[int], np.ndarray]]] | None = None) -> tuple[Path, Path, dict]:
    """Write the float32 file and its int8 CPU twin (training/optimize.py); return both paths and notes.

    The int8 file is calibrated on the audio files under ``calibration`` and on ``clips`` (per kind, each
    a function of the sample rate in Hz giving mono samples): the ranges must hold every kind of audio the
    music detector tells apart, quiet music, silence and noise included."""
    from tagger.cli import iter_audio_files
    from training.export import export_model, verify_export
    from training.optimize import drop_constant_features_file, optimize_model_file, quantize_model_file

    path = export_model(model, spec, out / f"{MODEL_NAME}.onnx",
                        extra_outputs=("frame_features", "pooled", *(st.tensor for st in MUSICNN_STAGES)), check=False)
    audio = list(iter_audio_files([str(calibration)]))
    if not audio:
        raise SystemExit(f"{calibration}: no audio to calibrate the int8 model with (--calibration)")
    int8 = out / f"{MODEL_NAME}-int8.onnx"
    # The int8 file is made from the graph as exported; then the float32 file gets its exact rewrite.
    clips = clips or {}
    info = quantize_model_file(path, int8, audio, calibration_clips=[c for kind in clips.values() for c in kind],
                               float_kernels=INT8_FLOAT_KERNELS)
    info["calibration_clip_kinds"] = {kind: len(c) for kind, c in clips.items()}
    info["constant_features_dropped"] = drop_constant_features_file(int8)
    rewritten, dropped = optimize_model_file(path)
    diffs = verify_export(model, spec, path, 1e-5)
    print("ONNX Runtime vs PyTorch, max |diff|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    constant = drop_constant_features_file(path)
    info.update({"max_pooled_rewritten": rewritten, "dead_filters_dropped": dropped, "float32_constant_dropped":
                 constant, "calibration": str(calibration), "export_max_abs_diff": diffs})
    return path, int8, info


def runtime_check(paths: dict[str, Path], files: dict[str, list[Path]]) -> dict:
    """Tag files with each exported model through the runtime (fast path, as ``tag`` does): per model and
    set, each file's music probability, music decision and top genre."""
    from tagger.pipeline import Tagger

    out: dict = {}
    for name, model in paths.items():
        tagger = Tagger(model)
        out[name] = {}
        for set_name, items in files.items():
            rows = []
            for path in items:
                started = time.perf_counter()
                r = tagger.tag_file(path)
                genre = r.outputs["genre"]
                rows.append({"file": str(path), "music": r.music, "music_probability": r.music_probability,
                             "genre": genre.top, "confidence": genre.confidence, "uncertain": genre.uncertain,
                             "msd_top3": [s.label for s in r.outputs["msd_genres"].scores[:3]],
                             "duration_s": r.duration_s, "seconds": time.perf_counter() - started,
                             "probs": [s.score for s in
                                       sorted(genre.scores, key=lambda s: GTZAN_GENRES.index(s.label))]})
            out[name][set_name] = rows
    return out


def non_music_files(negatives: list, folder: Path) -> list[Path]:
    """Each non-music clip written as a 16-bit WAV file (16 kHz mono), to go through the runtime as files do."""
    import wave

    folder.mkdir(parents=True, exist_ok=True)
    sr = MUSICNN_FRONT_END.sample_rate
    paths = []
    for n in negatives:
        path = folder / f"{n.clip_id}.wav"
        pcm = (np.clip(n.make(sr), -1.0, 1.0) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(sr)
            out.writeframes(pcm.tobytes())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    import tempfile

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
    parser.add_argument("--card-only", action="store_true",
                        help="only rewrite the card from <out>/<model>.cv.json (and <model>.live.json, written by "
                             "python -m training.live_eval, when present)")
    args = parser.parse_args(argv)
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

    @torch.no_grad()
    def spaces(x: np.ndarray) -> dict[str, np.ndarray]:
        t = torch.from_numpy(x)
        return {"pooled": net.backend.pool_bn(t).numpy(), "embedding": net.backend.embedding(t).numpy()}

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
        stored.write_text(json.dumps(cv))
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
    recipe_logits: list = [None] * len(tracks)
    for k in range(N_FOLDS):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        fold_model = fit_head(music, train, labels, choice, variants)
        for i, z in zip(test, head_logits(fold_model, music, test, choice.space), strict=True):
            recipe_logits[i] = z
    recipe = summary(labels, track_probs(recipe_logits), folds)
    recipe["calibration"] = calibration(recipe_logits, labels, folds)
    recipe["calibrated"] = summary(labels, np.array(recipe["calibration"]["cross_fitted_probs"]), folds)
    rows["shipped recipe"] = recipe
    temperature = recipe["calibration"]["temperature"]
    print(f"shipping {shipped_row}: {choice.name} (inner CV on all clips {inner[choice.name]:.3f}); that recipe on "
          f"the folds: acc {recipe['accuracy']:.3f}, ECE {recipe['ece']:.3f} → "
          f"{recipe['calibration']['ece_cross_fitted']:.3f} (T {temperature:.2f})")
    head_model = fit_head(music, np.arange(len(tracks)), labels, choice, variants)
    detector = fit_detector(detector_data, np.arange(len(tracks)), np.arange(len(negatives)), DETECTOR_C,
                            np.arange(len(packaged)))
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
    model = DefaultModel(net, GenreHead(net, choice.space, head_model, temperature),
                         GenreHead(net, "pooled", detector)).eval()
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
    check_files = {"labelled": [t.path for t in tracks], "fma": sorted((data / "fma").glob("*.mp3")),
                   "realworld": [p for cid, p in evaluation if cid.startswith("realworld/")]}
    with tempfile.TemporaryDirectory() as tmp:
        check_files["non-music"] = non_music_files(negatives, Path(tmp))
        runtime = runtime_check({"float32": path, "int8": int8}, check_files)
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
              "export": info, "runtime": runtime, "python": platform.python_version(), "torch": torch.__version__,
              "seconds": time.perf_counter() - started}
    (out / f"{MODEL_NAME}.cv.json").write_text(json.dumps(report, indent=None, separators=(",", ":")))
    from training.model_card import write_card

    card = write_card(out, MODEL_NAME, report, negatives)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), {int8} ({int8.stat().st_size / 1e6:.1f} MB), {card} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
