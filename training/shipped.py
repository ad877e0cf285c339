"""What the shipped default model is made of, shared by its build (:mod:`training.default_model`) and by the
per-artist-half models of :mod:`training.live_models`: the module the ONNX file holds (:class:`DefaultModel`,
:class:`GenreHead`), its manifest, its export (float32 and the int8 CPU twin), and the recipe that trains its
genre head and music detector from cached features (:func:`recipe_logits`, :func:`train_heads`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagger.model import FramePooling, ModelManifest, MusicDetector, OutputSpec
from training.datasets import GTZAN_GENRES
from training.evaluation import (
    C_GRID,
    MEAN_C_FACTOR,
    SPACES,
    DetectorData,
    HeadChoice,
    LinearModel,
    artist_folds,
    fit_detector,
    fit_head,
    fit_temperature,
    head_logits,
)
from training.musicnn import (
    MSD_GENRE_TAGS,
    MSD_TAGS,
    MUSICNN_FRONT_END,
    MUSICNN_STAGES,
    MUSICNN_VIEWS,
    MSDMusicnn,
    MusicnnBackbone,
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
# Files quieter than this (gated level, tagger.level) are analysed raised to it, by at most LEVEL_MAX_GAIN_DB.
# Chosen by python -m training.level_floor (models/msd-musicnn-gtzan.floor.json): of -35/-32/-30/-28/-25/-20,
# the highest floor that costs the labelled clips under it nothing out of fold (38 clips, all classical:
# 37 right before and raised, none decided wrong), and leaves 1 decided wrong genre of 23 unseen tracks
# 20 or 30 dB quieter (9 and 14 without). -30 cost 2 of 46 clips, -25 5 of 78 and 4 more decided wrong.
LEVEL_FLOOR_DBFS = -32.0
# 30 dB raises no non-music clip (hiss and hum to -65 dBFS included) to music (same file).
LEVEL_MAX_GAIN_DB = 30.0


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
        level_floor_dbfs=LEVEL_FLOOR_DBFS, level_max_gain_db=LEVEL_MAX_GAIN_DB,
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


def feature_spaces(net: MSDMusicnn) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Pooled slices [windows, 1506] → the heads' input spaces: ``pooled`` (the pooled channels' batch norm) and
    ``embedding`` (the 200-d MSD embedding), as :func:`training.evaluation.load_clips` wants them."""

    @torch.no_grad()
    def spaces(x: np.ndarray) -> dict[str, np.ndarray]:
        t = torch.from_numpy(x)
        return {"pooled": net.backend.pool_bn(t).numpy(), "embedding": net.backend.embedding(t).numpy()}

    return spaces


def recipe_logits(music, indices: np.ndarray, labels: np.ndarray, folds: np.ndarray, choice: HeadChoice,
                  variants: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Out-of-fold genre logits (per clip of ``indices``, per view [windows, genres]) of the head ``choice``
    trained with ``variants``: fold k's clips scored by a head fitted on the other folds' clips. ``folds`` gives
    each clip of ``indices`` its fold (0..k-1). What the shipped temperature is fitted on."""
    out: list = [None] * len(indices)
    for k in range(int(folds.max()) + 1):
        train, test = np.asarray(indices)[folds != k], np.flatnonzero(folds == k)
        model = fit_head(music, train, labels, choice, variants)
        for j, z in zip(test, head_logits(model, music, np.asarray(indices)[test], choice.space), strict=True):
            out[j] = z
    return out


@dataclass(frozen=True)
class Recipe:
    """How the shipped heads are trained: the genre head ``head`` (chosen by the build's inner CV) with the
    degraded copies ``variants``, its temperature fitted on out-of-fold logits of artist-grouped ``N_FOLDS``
    folds (seed ``SEED``), and the music detector at C = ``detector_c`` on the music clips under
    ``detector_variants`` (every degradation the build evaluates, whether the genre head trains on them or not),
    with threshold ``music_threshold``."""

    head: HeadChoice
    variants: tuple[str, ...]
    detector_c: float
    music_threshold: float
    detector_variants: tuple[str, ...] = ("clean",)


def recipe_of_report(report: dict) -> Recipe:
    """The recipe the shipped model was built with, from its ``<model>.cv.json`` (``shipped``)."""
    shipped = report["shipped"]
    degradations = tuple(report["cv"]["genre"]["degradations"])
    variants = ("clean", *degradations) if shipped["augmented"] else ("clean",)
    return Recipe(head_choice(shipped["head"]), variants, float(shipped["detector_c"]),
                  float(shipped["music_threshold"]), ("clean", *degradations))


def head_choice(name: str) -> HeadChoice:
    """The candidate of :func:`training.evaluation.choose_head` called ``name`` (as ``<model>.cv.json`` stores
    the shipped head)."""
    for space, c, mean in itertools.product(SPACES, C_GRID, (False, True)):
        choice = HeadChoice(space, c if not mean else c * MEAN_C_FACTOR, mean)
        if choice.name == name:
            return choice
    raise ValueError(f"{name!r}: not a head the build chooses from")


def recipe_temperature(music, labels: np.ndarray, groups: Sequence[str], indices: np.ndarray, recipe: Recipe
                       ) -> float:
    """The build's temperature for a head trained on ``indices``: fitted (track-level NLL) on the recipe's
    out-of-fold logits over artist-grouped ``N_FOLDS`` folds of ``indices`` (seed ``SEED``)."""
    indices = np.asarray(indices)
    folds = artist_folds(labels[indices], [groups[i] for i in indices], N_FOLDS, SEED)
    return fit_temperature(recipe_logits(music, indices, labels, folds, recipe.head, recipe.variants),
                           labels[indices])


def shipped_model(net: MSDMusicnn, music, labels: np.ndarray, indices: np.ndarray, recipe: Recipe,
                  detector_data: DetectorData, temperature: float, non_music: np.ndarray | None = None
                  ) -> DefaultModel:
    """The default model with its heads trained by ``recipe`` on the labelled clips ``indices`` only: the genre
    head (its logits divided by ``temperature``) and the music detector, whose music positives are those clips
    (and every packaged clip of ``detector_data``), against the non-music clips ``non_music`` (indices into
    ``detector_data.non_music``; default every one, as the build trains it)."""
    indices = np.asarray(indices)
    negatives = np.arange(len(detector_data.non_music.ids)) if non_music is None else np.asarray(non_music)
    head = fit_head(music, indices, labels, recipe.head, recipe.variants)
    detector = fit_detector(detector_data, indices, negatives, recipe.detector_c,
                            np.arange(detector_data.packaged_count()))
    return DefaultModel(net, GenreHead(net, recipe.head.space, head, temperature),
                        GenreHead(net, "pooled", detector)).eval()
