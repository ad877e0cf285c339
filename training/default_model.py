"""Build, evaluate and export the shipped default model: MSD_musicnn + a GTZAN genre head.

    python -m training.default_model --data ../shared/data --out models

1. Decode every GTZAN clip (and augmented copies: Gaussian noise, pitch shift ±2 semitones) at
   16 kHz, slice it exactly as the runtime does (the two views, 2.56 s and 5.12 s windows, half-window
   hops, end-aligned last window), and cache the backbone's pooled features per slice.
2. Grouped, stratified 5-fold CV (contiguous GTZAN ids stay together) of each head variant in
   :data:`VARIANTS` (head only or fine-tuned top layers, with and without augmentation), and of the
   standard transfer baseline (logistic regression on the track-mean 200-d embedding).
3. Train the shipped variant on every clip, export one ONNX file with its manifest, write the card.
   The shipped variant (:data:`SHIPPED_VARIANT`) was chosen by that CV; the card has every number.

Everything is seeded; the musicnn wheel is fetched with ``pip download musicnn==0.1.0 --no-deps``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tagger.decode import decode_file
from tagger.framepool import pool_windows
from tagger.model import FramePooling, ModelManifest, OutputSpec
from tagger.views import build_streams
from training.augment import gaussian_noise, pitch_shift
from training.datasets import GTZAN_GENRES, Track, contiguous_folds, load_gtzan
from training.metrics import classification_report, plot_confusion
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
MODEL_VERSION = "1.0.0"
SEED = 20261121

VIEWS = MUSICNN_VIEWS
AUGMENTATIONS = ("none", "noise", "pitch-2", "pitch+2")


def augment(audio: np.ndarray, kind: str, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a clip: Gaussian noise (σ 0.005) or a pitch shift with tempo kept."""
    if kind == "none":
        return audio
    if kind == "noise":
        return gaussian_noise(audio, rng, sigma=0.005)
    if kind.startswith("pitch"):
        return pitch_shift(audio, sample_rate, float(kind[len("pitch"):]))
    raise ValueError(f"unknown augmentation {kind!r}")


def track_slices(audio: np.ndarray) -> dict[str, np.ndarray]:
    """The runtime's slices of a whole clip, per view: float32 [n, window, 96]."""
    streams = build_streams({"musicnn": MUSICNN_FRONT_END}, VIEWS)
    out: dict[str, list[np.ndarray]] = {v.name: [] for v in VIEWS}
    for stream in streams:
        for s in [*stream.push(audio), *stream.finish()]:
            out[s.view].append(s.frames)
    return {v: np.stack(frames) for v, frames in out.items()}


@torch.no_grad()
def pooled_features(net: MSDMusicnn, slices: np.ndarray, batch: int = 64) -> np.ndarray:
    """The backbone's pooled 1506-d features for each slice."""
    parts = [interleaved_pool(net.backbone(torch.from_numpy(slices[i:i + batch]))).numpy()
             for i in range(0, len(slices), batch)]
    return np.concatenate(parts)


@torch.no_grad()
def patch_embedding(net: MSDMusicnn, audio: np.ndarray) -> np.ndarray:
    """musicnn's own track embedding: the mean 200-d penultimate over 187-frame (3 s) patches."""
    spec = MUSICNN_FRONT_END.spectrogram(audio)
    n = max(1, spec.shape[0] // 187)
    if spec.shape[0] < 187:
        spec = np.tile(spec, (-(-187 // spec.shape[0]), 1))
    patches = torch.from_numpy(spec[: n * 187].reshape(n, 187, 96))
    return net.backend.embedding(interleaved_pool(net.backbone(patches))).mean(dim=0).numpy()


@torch.no_grad()
def fast_path_features(net: MSDMusicnn, audio: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled features per view as the runtime's fast path makes them: frame features computed over
    the whole clip once, then each window's max and mean (see tagger.framepool)."""
    spec = MUSICNN_FRONT_END.spectrogram(audio)
    return pool_views(net.backbone(torch.from_numpy(spec[None])).numpy()[0])


def onnx_fast_path_features(session, tracks: list[Track]) -> list[dict[str, np.ndarray]]:
    """Per track, pooled features per view from an exported model file's frame features over the whole
    clip (the fast path's semantics, through ONNX Runtime: how the int8 file is evaluated)."""
    out = []
    for track in tqdm(tracks, desc="int8 features", unit="clip"):
        spec = MUSICNN_FRONT_END.spectrogram(decode_file(track.path, MUSICNN_FRONT_END.sample_rate))
        (features,) = session.run(["frame_features"], {"mel": spec[None].astype(np.float32)})
        out.append(pool_views(features[0]))
    return out


def pool_views(features: np.ndarray) -> dict[str, np.ndarray]:
    """Each view's windows (half-window hops, end-aligned last window) pooled from frame features [C, T]."""
    total = features.shape[1]
    out = {}
    for view in VIEWS:
        w = view.window_frames
        if total < w:
            starts, w = [0], total
        else:
            starts = list(range(0, total - w + 1, view.hop_frames))
            if starts[-1] + w < total:
                starts.append(total - w)
        out[view.name] = pool_windows(features, 0, starts, w)
    return out


@dataclass
class FeatureSet:
    """Cached features: per augmentation (and ``fast``, the fast path's), per track, per view pooled
    features; and the baseline's embeddings."""

    tracks: list[Track]
    labels: np.ndarray
    pooled: dict[str, list[dict[str, np.ndarray]]]
    embeddings: np.ndarray


def build_features(tracks: list[Track], net: MSDMusicnn, cache: Path, augmentations=AUGMENTATIONS) -> FeatureSet:
    """Compute (or load from ``cache``) every track's features. Resumable: one file per track."""
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    pooled: dict[str, list[dict[str, np.ndarray]]] = {a: [] for a in (*augmentations, "fast")}
    embeddings = []
    for track in tqdm(tracks, desc="features", unit="clip"):
        seed = int(rng.integers(2**31))
        path = cache / f"{track.track_id}.npz"
        if path.is_file():
            stored = dict(np.load(path))
        else:
            audio = decode_file(track.path, MUSICNN_FRONT_END.sample_rate)
            stored = {"embedding": patch_embedding(net, audio)}
            for aug in augmentations:
                copy = augment(audio, aug, MUSICNN_FRONT_END.sample_rate, np.random.default_rng(seed))
                for view, slices in track_slices(copy).items():
                    stored[f"{aug}/{view}"] = pooled_features(net, slices)
            np.savez(path.with_suffix(".tmp.npz"), **stored)
            path.with_suffix(".tmp.npz").replace(path)
        if f"fast/{VIEWS[0].name}" not in stored:
            audio = decode_file(track.path, MUSICNN_FRONT_END.sample_rate)
            stored.update({f"fast/{v}": f for v, f in fast_path_features(net, audio).items()})
            np.savez(path.with_suffix(".tmp.npz"), **stored)
            path.with_suffix(".tmp.npz").replace(path)
        embeddings.append(stored["embedding"])
        for aug in (*augmentations, "fast"):
            pooled[aug].append({v.name: stored[f"{aug}/{v.name}"] for v in VIEWS})
    labels = np.array([GTZAN_GENRES.index(t.label) for t in tracks])
    return FeatureSet(tracks, labels, pooled, np.stack(embeddings))


class GenreHead(nn.Module):
    """A genre classifier on the backbone's pooled features.

    ``mode="head"``: the pretrained MSD embedding (pool BN → dense 200 → ReLU → BN) stays frozen and a
    linear layer on it is trained. ``mode="finetune"``: the dense layer and its BN are trained too
    (initialised from MSD_musicnn), with dropout.
    """

    def __init__(self, net: MSDMusicnn, n_classes: int, mode: str) -> None:
        super().__init__()
        if mode not in ("head", "finetune"):
            raise ValueError(mode)
        self.mode = mode
        src = net.backend
        self.pool_bn = _frozen_copy(src.pool_bn)
        self.dense = nn.Linear(1506, 200)
        self.dense.load_state_dict(src.dense.state_dict())
        self.dense_bn = nn.BatchNorm1d(200, eps=src.dense_bn.eps)
        self.dense_bn.load_state_dict(src.dense_bn.state_dict())
        for p in [*self.dense.parameters(), *self.dense_bn.parameters()]:
            p.requires_grad_(mode == "finetune")
        self.dropout = nn.Dropout(0.5 if mode == "finetune" else 0.2)
        self.classifier = nn.Linear(200, n_classes)

    def embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embedding(pooled)))

    def train(self, mode: bool = True) -> GenreHead:
        super().train(mode)
        # Batch-norm statistics stay those learnt on the MSD (a few hundred slices cannot re-estimate them).
        self.pool_bn.eval()
        self.dense_bn.eval()
        return self


def _frozen_copy(module: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone.eval()


@dataclass(frozen=True)
class HeadConfig:
    """A head variant. ``mode``: ``logreg`` (standardised multinomial logistic regression on the
    frozen features ``features``: ``pooled`` = the 1506 pooled channels after the pretrained batch
    norm, ``embedding`` = the 200-d MSD embedding), or a head trained with AdamW: ``head`` (frozen
    embedding) and ``finetune`` (the dense layer too)."""

    mode: str = "logreg"
    augment: bool = False
    features: str = "pooled"
    C: float = 1.0
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-2
    mixup: float = 0.2
    batch: int = 256


class LinearHead(nn.Module):
    """Frozen feature transform (pool BN, or the whole MSD embedding) → a linear layer."""

    def __init__(self, transform: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.transform = transform
        self.linear = linear

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.transform(pooled))


class _Embedding(nn.Module):
    def __init__(self, backend: nn.Module) -> None:
        super().__init__()
        self.backend = backend

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.backend.embedding(pooled)


def train_logreg(fs: FeatureSet, net: MSDMusicnn, indices: np.ndarray, cfg: HeadConfig) -> LinearHead:
    """Fit the logistic regression on slice features and fold its standardisation into one Linear."""
    from sklearn.linear_model import LogisticRegression

    transform = _frozen_copy(net.backend.pool_bn if cfg.features == "pooled" else _Embedding(net.backend))
    x, y, w = _training_arrays(fs, indices, cfg.augment)
    with torch.no_grad():
        feats = transform(torch.from_numpy(x)).numpy().astype(np.float64)
    mean, scale = feats.mean(axis=0), feats.std(axis=0)
    # Many pooled channels barely vary on this data (std down to 1e-14): dividing by that would fold
    # weights of 1e6+ into the graph and amplify float noise. Below 1e-3 of the largest std, a channel
    # is scaled as if it had that std, which leaves it almost no influence.
    scale = np.maximum(scale, 1e-3 * scale.max())
    model = LogisticRegression(C=cfg.C, max_iter=5000)
    model.fit((feats - mean) / scale, y, sample_weight=w / w.mean())
    weight = np.zeros((len(GTZAN_GENRES), feats.shape[1]))
    bias = np.full(len(GTZAN_GENRES), -1e4)  # a class absent from training can never win
    weight[model.classes_] = model.coef_ / scale
    bias[model.classes_] = model.intercept_ - (model.coef_ / scale) @ mean
    linear = nn.Linear(feats.shape[1], len(GTZAN_GENRES))
    linear.weight.data = torch.from_numpy(weight).float()
    linear.bias.data = torch.from_numpy(bias).float()
    return LinearHead(transform, linear).eval()


def _training_arrays(fs: FeatureSet, indices: np.ndarray, augment_data: bool) -> tuple[np.ndarray, ...]:
    """Slice features, labels and per-slice weights (each class, then each track, weighs the same)."""
    augs = [a for a in fs.pooled if a != "fast"] if augment_data else ["none"]
    x, y, w = [], [], []
    class_tracks = np.bincount(fs.labels[indices], minlength=len(GTZAN_GENRES))
    for i in indices:
        for aug in augs:
            for view in VIEWS:
                feats = fs.pooled[aug][i][view.name]
                x.append(feats)
                y.append(np.full(len(feats), fs.labels[i]))
                # Per view, a track's slices share its weight, so the two views count alike.
                w.append(np.full(len(feats), 1.0 / (class_tracks[fs.labels[i]] * len(feats) * len(augs))))
    return np.concatenate(x), np.concatenate(y), np.concatenate(w)


def train_head(fs: FeatureSet, net: MSDMusicnn, indices: np.ndarray, cfg: HeadConfig, seed: int) -> nn.Module:
    """Train a head variant on the tracks ``indices``; it maps pooled features to genre logits."""
    if cfg.mode == "logreg":
        return train_logreg(fs, net, indices, cfg)
    torch.manual_seed(seed)
    x, y, w = _training_arrays(fs, indices, cfg.augment)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    w_t = torch.from_numpy(w / w.mean()).float()
    head = GenreHead(net, len(GTZAN_GENRES), cfg.mode)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(x) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch):
            idx = order[start:start + cfg.batch]
            xb, yb, wb = x_t[idx], F.one_hot(y_t[idx], len(GTZAN_GENRES)).float(), w_t[idx]
            if cfg.mixup > 0:
                lam = float(rng.beta(cfg.mixup, cfg.mixup))
                perm = torch.randperm(len(idx), generator=gen)
                xb = lam * xb + (1 - lam) * xb[perm]
                yb = lam * yb + (1 - lam) * yb[perm]
                wb = lam * wb + (1 - lam) * wb[perm]
            loss = (-(yb * F.log_softmax(head(xb), dim=1)).sum(dim=1) * wb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def predict_tracks(head: nn.Module, fs: FeatureSet, indices: np.ndarray, path: str = "none") -> np.ndarray:
    """Track probabilities as the runtime computes them: mean over each view's slices, then over views.
    ``path``: ``none`` for per-window features (the reference semantics), ``fast`` for the fast path's."""
    probs = []
    for i in indices:
        views = [F.softmax(head(torch.from_numpy(fs.pooled[path][i][v.name])), dim=1).mean(dim=0) for v in VIEWS]
        probs.append(torch.stack(views).mean(dim=0).numpy())
    return np.stack(probs)


def baseline_predict(fs: FeatureSet, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Logistic regression on the standardised track-mean 200-d embedding (class-balanced)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced", C=1.0))
    model.fit(fs.embeddings[train], fs.labels[train])
    probs = np.zeros((len(test), len(GTZAN_GENRES)))
    probs[:, model.classes_] = model.predict_proba(fs.embeddings[test])
    return probs


def cross_validate(fs: FeatureSet, net: MSDMusicnn, folds: np.ndarray, variants: dict[str, HeadConfig | None]
                   ) -> dict[str, dict]:
    """Per variant: pooled report over all folds, per-fold accuracy/macro F1, and out-of-fold probs."""
    results = {}
    for name, cfg in variants.items():
        oof = np.zeros((len(fs.tracks), len(GTZAN_GENRES)))
        oof_fast = np.zeros_like(oof)
        per_fold = []
        started = time.perf_counter()
        for k in tqdm(range(folds.max() + 1), desc=f"cv {name}", unit="fold"):
            train, test = np.where(folds != k)[0], np.where(folds == k)[0]
            if cfg is None:
                probs = baseline_predict(fs, train, test)
            else:
                head = train_head(fs, net, train, cfg, SEED + k)
                probs = predict_tracks(head, fs, test)
                oof_fast[test] = predict_tracks(head, fs, test, "fast")
            oof[test] = probs
            rep = classification_report(fs.labels[test], probs, GTZAN_GENRES)
            per_fold.append({"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]})
        report = classification_report(fs.labels, oof, GTZAN_GENRES)
        accs = [f["accuracy"] for f in per_fold]
        f1s = [f["macro_f1"] for f in per_fold]
        results[name] = {
            "config": None if cfg is None else cfg.__dict__,
            "accuracy": report["accuracy"], "accuracy_fold_mean": float(np.mean(accs)),
            "accuracy_fold_std": float(np.std(accs)), "macro_f1": report["macro_f1"],
            "macro_f1_fold_mean": float(np.mean(f1s)), "macro_f1_fold_std": float(np.std(f1s)),
            "ece": report["ece"], "per_fold": per_fold, "report": report, "seconds": time.perf_counter() - started,
            "oof": oof.tolist(),
        }
        if cfg is not None:
            fast = classification_report(fs.labels, oof_fast, GTZAN_GENRES)
            results[name]["fast_path"] = {"accuracy": fast["accuracy"], "macro_f1": fast["macro_f1"],
                                          "ece": fast["ece"],
                                          "max_abs_diff_track_probs": float(np.abs(oof_fast - oof).max())}
    return results


def cross_validate_quantized(fs: FeatureSet, net: MSDMusicnn, folds: np.ndarray, cfg: HeadConfig,
                             int8_pooled: list[dict[str, np.ndarray]]) -> dict:
    """The shipped variant's heads, trained per fold on float32 features as in :func:`cross_validate`,
    evaluated on the float32 fast path and on the int8 file's features: before and after."""
    fs.pooled["int8"] = int8_pooled
    before = np.zeros((len(fs.tracks), len(GTZAN_GENRES)))
    after = np.zeros_like(before)
    for k in tqdm(range(folds.max() + 1), desc="cv int8", unit="fold"):
        train, test = np.where(folds != k)[0], np.where(folds == k)[0]
        head = train_head(fs, net, train, cfg, SEED + k)
        before[test] = predict_tracks(head, fs, test, "fast")
        after[test] = predict_tracks(head, fs, test, "int8")
    result = {}
    for name, probs in (("float32", before), ("int8", after)):
        rep = classification_report(fs.labels, probs, GTZAN_GENRES)
        result[name] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], "ece": rep["ece"]}
    result["max_abs_diff_track_probs"] = float(np.abs(after - before).max())
    result["same_top_label"] = int((after.argmax(1) == before.argmax(1)).sum())
    result["tracks"] = len(fs.tracks)
    return result


class DefaultModel(nn.Module):
    """What the ONNX file holds: log-mel slice → (10 GTZAN genre probabilities, MSD genre-tag probabilities)."""

    def __init__(self, net: MSDMusicnn, head: nn.Module) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.backend = net.backend
        self.head = head
        self.register_buffer("msd_genre_index", torch.tensor([MSD_TAGS.index(t) for t in MSD_GENRE_TAGS]))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, timbral, temporal = self.backbone.features_and_stages(mel)
        pooled = interleaved_pool(features)
        genre = F.softmax(self.head(pooled), dim=1)
        _, logits = self.backend(pooled)
        tags = torch.sigmoid(logits.index_select(1, self.msd_genre_index))
        return genre, tags, features, pooled, timbral, temporal


def manifest(metrics: dict) -> ModelManifest:
    return ModelManifest(
        name=MODEL_NAME, version=MODEL_VERSION, input="mel",
        front_ends={"musicnn": MUSICNN_FRONT_END}, views=VIEWS,
        outputs=(
            OutputSpec("genre", "genre", "softmax", GTZAN_GENRES, "Genre (GTZAN, 10 classes)"),
            OutputSpec("msd_genres", "msd_genres", "sigmoid", MSD_GENRE_TAGS, "Genre tags (Million Song Dataset)"),
        ),
        description="MSD_musicnn (Pons & Serra 2019) backbone pretrained on the Million Song Dataset, with a "
                    "10-genre GTZAN head trained by genre-tagger, plus the MSD genre tags as a multi-label output.",
        licence="ISC (musicnn weights, (c) Music Technology Group, Universitat Pompeu Fabra 2019); head: MIT",
        provenance="musicnn 0.1.0 wheel (PyPI), MSD_musicnn checkpoint imported by training.tf_checkpoint; "
                   "head trained by training.default_model",
        training_data="GTZAN subset: 161 clips (classical 89, other genres 8 each), ../shared/data/gtzan",
        metrics=metrics,
        frame_pooling=FramePooling("frame_features", "pooled", "max_mean_interleaved", MusicnnBackbone.CONTEXT,
                                   MUSICNN_STAGES, MusicnnBackbone.MID_CONTEXT),
    )


BASELINE = "baseline: logistic regression on the track-mean 200-d embedding"
SHIPPED_VARIANT = "slice logistic regression on pooled features"
VARIANTS: dict[str, HeadConfig | None] = {
    BASELINE: None,
    SHIPPED_VARIANT: HeadConfig("logreg", features="pooled"),
    "slice logistic regression on pooled features, augmented": HeadConfig("logreg", features="pooled", augment=True),
    "slice logistic regression on the 200-d embedding": HeadConfig("logreg", features="embedding"),
    "linear head on the frozen embedding (AdamW, mixup)": HeadConfig("head"),
    "linear head on the frozen embedding (AdamW, mixup), augmented": HeadConfig("head", augment=True),
    "fine-tune dense layer + head (AdamW, mixup), augmented": HeadConfig("finetune", augment=True, lr=1e-3),
}


def export_int8(path: Path, calibration: Path, fs: FeatureSet, net: MSDMusicnn, folds: np.ndarray,
                cfg: HeadConfig) -> tuple[Path, dict]:
    """Write ``<model>-int8.onnx`` beside ``path`` (the front end's convolutions in int8, the CPU's
    default file) and cross-validate it against the float32 fast path."""
    import onnxruntime as ort

    from tagger.cli import iter_audio_files
    from training.optimize import drop_constant_features_file, quantize_model_file

    audio = list(iter_audio_files([str(calibration)]))
    if not audio:
        raise SystemExit(f"{calibration}: no audio to calibrate the int8 model with (--calibration)")
    target = path.with_name(f"{MODEL_NAME}-int8.onnx")
    info = quantize_model_file(path, target, audio)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    result = cross_validate_quantized(fs, net, folds, cfg, onnx_fast_path_features(session, fs.tracks))
    # The CV above read the features as exported; now they lose their constant channels.
    info["constant_features_dropped"] = drop_constant_features_file(target)
    result["quantization"] = info
    result["calibration"] = str(calibration)
    print(f"int8: accuracy {result['float32']['accuracy']:.3f} → {result['int8']['accuracy']:.3f}, macro F1 "
          f"{result['float32']['macro_f1']:.3f} → {result['int8']['macro_f1']:.3f}, same top label "
          f"{result['same_top_label']}/{result['tracks']}, max |Δp| {result['max_abs_diff_track_probs']:.4f}")
    return target, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding gtzan/ (default ../shared/data)")
    parser.add_argument("--out", default="models", help="where the model, card and figures go (default models)")
    parser.add_argument("--cache", default=".cache/default-model", help="feature cache (default .cache/default-model)")
    parser.add_argument("--wheel", help="path of musicnn-0.1.0-py3-none-any.whl (default: pip download it)")
    parser.add_argument("--ship", default=SHIPPED_VARIANT,
                        help=f"variant to ship (default {SHIPPED_VARIANT!r}, chosen by the CV in the model card)")
    parser.add_argument("--reuse-cv", action="store_true",
                        help="take the cross-validation results from the existing <out>/<model>.cv.json instead of "
                             "re-running it (re-export after a runtime-format change; the head is still retrained)")
    parser.add_argument("--calibration", help="folder of audio that calibrates the int8 file (default <data>/fma: "
                                              "not GTZAN, so the int8 CV sees no calibration on its test clips)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = Path(args.wheel) if args.wheel else fetch_musicnn_wheel()
    net = MSDMusicnn.pretrained(wheel)
    tracks = load_gtzan(Path(args.data) / "gtzan")
    fs = build_features(tracks, net, Path(args.cache))
    folds = contiguous_folds(tracks, 5)
    previous = out / f"{MODEL_NAME}.cv.json"
    if args.reuse_cv:
        stored = json.loads(previous.read_text())
        if stored["tracks"] != [t.track_id for t in tracks] or stored["folds"] != folds.tolist():
            parser.error(f"{previous} was made on other tracks or folds: run without --reuse-cv")
        cv = stored["variants"]
    else:
        cv = cross_validate(fs, net, folds, VARIANTS)
    for name, r in cv.items():
        fast = r.get("fast_path")
        print(f"{name:58s} acc {r['accuracy']:.3f} (folds {r['accuracy_fold_mean']:.3f} ± {r['accuracy_fold_std']:.3f})"
              f"  macro-F1 {r['macro_f1']:.3f} ± {r['macro_f1_fold_std']:.3f}  ECE {r['ece']:.3f}"
              + (f"  | fast path acc {fast['accuracy']:.3f} F1 {fast['macro_f1']:.3f}" if fast else ""))
    chosen = args.ship
    cfg = VARIANTS.get(chosen)
    if cfg is None:
        parser.error(f"--ship must name a trained variant: {[k for k, v in VARIANTS.items() if v]}")
    print(f"shipping: {chosen}")
    plot_confusion(np.array(cv[chosen]["report"]["confusion"]), GTZAN_GENRES, out / f"{MODEL_NAME}.confusion.png",
                   f"{MODEL_NAME}: grouped 5-fold CV, track level (acc {cv[chosen]['accuracy']:.3f})")
    head = train_head(fs, net, np.arange(len(tracks)), cfg, SEED)
    summary = {name: {k: r[k] for k in ("accuracy", "accuracy_fold_std", "macro_f1", "macro_f1_fold_std", "ece",
                                        "fast_path") if k in r}
               for name, r in cv.items()}
    metrics = {"cv": "grouped stratified 5-fold, track level (contiguous GTZAN ids together)",
               "shipped_variant": chosen, "results": summary}
    from training.export import export_model

    model = DefaultModel(net, head).eval()
    path = export_model(model, manifest(metrics), out / f"{MODEL_NAME}.onnx",
                        extra_outputs=("frame_features", "pooled", *(st.tensor for st in MUSICNN_STAGES)), check=False)
    from training.export import verify_export
    from training.optimize import drop_constant_features_file, optimize_model_file

    # The int8 file is made from the graph as exported; then the float32 file gets its exact rewrite.
    int8_path, int8_cv = export_int8(path, Path(args.calibration or Path(args.data) / "fma"), fs, net, folds, cfg)
    rewritten, dropped = optimize_model_file(path)
    print(f"rewrote {rewritten} max-pooled convolutions and dropped {dropped} dead filters of plain ones "
          "(training/optimize.py)")
    diffs = verify_export(model, manifest(metrics), path, 1e-5)
    print("ONNX Runtime vs PyTorch, max |diff|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    # After the check against PyTorch, whose features keep every channel.
    constant = drop_constant_features_file(path)
    print(f"left {constant} constant channels out of the frame features (training/optimize.py)")
    report = {"folds": folds.tolist(), "tracks": [t.track_id for t in tracks], "labels": list(GTZAN_GENRES),
              "variants": cv, "shipped": chosen, "int8": int8_cv,
              "python": platform.python_version(), "torch": torch.__version__}
    from training.model_card import out_of_domain_rows, seconds_per_30s, write_card

    data = Path(args.data)
    realworld = out_of_domain_rows(path, data / "realworld") if (data / "realworld").is_dir() else []
    if realworld:
        int8_rows = out_of_domain_rows(int8_path, data / "realworld")
        int8_cv["seconds_per_30s"] = {"float32": seconds_per_30s(realworld), "int8": seconds_per_30s(int8_rows)}
    fma = out_of_domain_rows(path, data / "fma") if (data / "fma").is_dir() else []
    card = write_card(out, MODEL_NAME, cv, chosen, realworld, fma, int8_cv)
    (out / f"{MODEL_NAME}.cv.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), {int8_path} ({int8_path.stat().st_size / 1e6:.1f} MB), "
          f"{card}, {out / f'{MODEL_NAME}.cv.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
