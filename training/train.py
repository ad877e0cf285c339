"""Training and evaluation: slices sampled from cached spectrograms, AdamW with warm-up and cosine decay,
early stopping on validation, resumable checkpoints, CSV logs, curves and confusion matrices.

A run trains one architecture (:mod:`training.architectures`) on the tracks of one split. Training
draws random slices (class-balanced: every class is drawn equally often, whatever its track count),
optionally from augmented audio (a seeded bank of pitch-shifted, time-stretched and noisy versions per
track, see :data:`AUGMENTED_VARIANTS`), with SpecAugment masks and mixup. Evaluation cuts every track
into the views' windows at half-window hops and reports slice-level and track-level metrics (the mean
of slice probabilities, and a majority vote of slice decisions).

The frozen musicnn transfer model trains on pooled backbone features computed once per window (the
backbone does not change), which makes it the cheapest model to train here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tagger.frontend import FrontEndConfig
from training.architectures import ArchSpec, MusicnnTransfer, build
from training.augment import AudioAugment, mixup, spec_augment
from training.datasets import Track, gtzan_number
from training.metrics import classification_report, majority_vote, plot_confusion
from training.spectrograms import SpectrogramCache

log = logging.getLogger(__name__)

# The audio augmentation bank: seeded random draws of pitch shift (±4 semitones), time stretch
# (0.8–1.25) and Gaussian noise (σ 0.001–0.015), fixed per track so they can be cached.
AUGMENTED_VARIANTS = ("aug1", "aug2")


@dataclass
class TrainConfig:
    """Settings of one run. Lengths in epochs and slices; ``budget_seconds`` bounds the wall time.

    Attributes:
        epochs: the most epochs.
        slices_per_epoch: training slices per epoch (0: 8 per training track).
        batch_size: slices per optimiser step.
        lr, weight_decay: AdamW settings (None: the architecture's, from its paper).
        warmup_epochs: linear warm-up, then cosine decay to 1 % of ``lr``.
        patience: stop after this many epochs without a better validation loss.
        augment: audio bank + SpecAugment + mixup (alpha ``mixup_alpha``) on training slices.
        budget_seconds: stop after the epoch that passes this much training time (0: no limit).
        seed: seeds weights, sampling and augmentation.
        threads: torch CPU threads (0: torch's default).
    """

    epochs: int = 30
    slices_per_epoch: int = 0
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int = 1
    patience: int = 6
    augment: bool = False
    mixup_alpha: float = 0.2
    budget_seconds: float = 0.0
    seed: int = 0
    threads: int = 0
    arch_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """One view of a model: its front end and window, in frames."""

    name: str
    front_end: FrontEndConfig
    window_frames: int
    hop_frames: int


def model_views(spec: ArchSpec) -> list[View]:
    """2.56 s at the architecture's frame rate, and 5.12 s: the same frames zoomed out (half the frame
    rate) or, for a network that runs on any length, twice the frames."""
    w = spec.window_frames
    views = [View("2.56s", spec.front_end, w, w // 2)]
    if spec.zoom_out:
        views.append(View("5.12s", spec.zoomed_front_end, w, w // 2))
    elif spec.dynamic_frames:
        views.append(View("5.12s", spec.front_end, 2 * w, w))
    return views


def _loop_to(spec: np.ndarray, frames: int) -> np.ndarray:
    # A track shorter than a window is repeated to fill it (as the runtime does).
    if spec.shape[0] >= frames:
        return spec
    return np.concatenate([spec] * math.ceil(frames / max(1, spec.shape[0])))[:frames]


def grid_starts(n_frames: int, window: int, hop: int) -> list[int]:
    """Window starts at ``hop`` frames plus an end-aligned last one (full coverage, as the runtime)."""
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, hop))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return starts


class SliceData:
    """Spectrograms of a set of tracks for each view and audio variant, held in memory as float16."""

    def __init__(self, cache: SpectrogramCache, tracks: Sequence[Track], views: Sequence[View],
                 variants: Sequence[str]) -> None:
        self.views = list(views)
        self.variants = list(variants)
        self.data = {(v.name, var): [cache.load(v.front_end, var, t).astype(np.float16) for t in tracks]
                     for v in self.views for var in self.variants}

    def sample(self, track: int, rng: np.random.Generator, variant: str) -> np.ndarray:
        """A random training slice of ``track`` from a random view [frames, mels]."""
        view = self.views[int(rng.integers(len(self.views)))]
        spec = _loop_to(self.data[(view.name, variant)][track], view.window_frames)
        start = int(rng.integers(0, spec.shape[0] - view.window_frames + 1))
        return spec[start:start + view.window_frames].astype(np.float32)

    def eval_slices(self, track: int) -> list[np.ndarray]:
        """Per view, every window of the un-augmented track [n, frames, mels]."""
        out = []
        for view in self.views:
            spec = _loop_to(self.data[(view.name, "none")][track], view.window_frames)
            starts = grid_starts(spec.shape[0], view.window_frames, view.hop_frames)
            out.append(np.stack([spec[s:s + view.window_frames] for s in starts]).astype(np.float32))
        return out


class PooledData:
    """Frozen-backbone transfer: each view's windows pooled from musicnn frame features, computed once.

    Training samples windows on a dense grid (hop ``train_hop`` frames); evaluation uses the views' hops.
    """

    def __init__(self, net: MusicnnTransfer, cache: SpectrogramCache, tracks: Sequence[Track],
                 views: Sequence[View], variants: Sequence[str], train_hop: int = 16, progress: bool = True) -> None:
        self.views = list(views)
        self.variants = list(variants)
        self.train: dict[tuple[str, str], list[np.ndarray]] = {}
        self.eval: list[list[np.ndarray]] = [[] for _ in tracks]
        net.eval()
        fe = self.views[0].front_end
        bar = tqdm(total=len(tracks) * len(self.variants), desc="backbone features", unit="track",
                   disable=not progress)
        for variant in self.variants:
            for i, track in enumerate(tracks):
                spec = _loop_to(cache.load(fe, variant, track), max(v.window_frames for v in self.views))
                with torch.no_grad():
                    feats = net.features(torch.from_numpy(spec)[None])[0]
                for view in self.views:
                    self.train.setdefault((view.name, variant), []).append(
                        self._pool(feats, view.window_frames, train_hop))
                    if variant == "none":
                        self.eval[i].append(self._pool(feats, view.window_frames, view.hop_frames))
                bar.update()
        bar.close()

    @staticmethod
    def _pool(features: torch.Tensor, window: int, hop: int) -> np.ndarray:
        from training.musicnn import interleaved_pool

        starts = grid_starts(features.shape[1], window, hop)
        return interleaved_pool(torch.stack([features[:, s:s + window] for s in starts])).numpy()

    def sample(self, track: int, rng: np.random.Generator, variant: str) -> np.ndarray:
        """A random training window of ``track`` from a random view: pooled features [2·channels]."""
        view = self.views[int(rng.integers(len(self.views)))]
        rows = self.train[(view.name, variant)][track]
        return rows[int(rng.integers(len(rows)))]

    def eval_slices(self, track: int) -> list[np.ndarray]:
        return self.eval[track]


def _forward(net: nn.Module, x: torch.Tensor, pooled: bool) -> torch.Tensor:
    return net.pooled_logits(x) if pooled else net(x)


def predict(net: nn.Module, data: SliceData | PooledData, tracks: Sequence[int], batch: int = 64
            ) -> list[list[np.ndarray]]:
    """Softmax probabilities per track, per view: [n slices, classes] each."""
    pooled = isinstance(data, PooledData)
    net.eval()
    out = []
    with torch.no_grad():
        for i in tracks:
            per_view = []
            for slices in data.eval_slices(i):
                probs = [F.softmax(_forward(net, torch.from_numpy(slices[j:j + batch]), pooled), dim=1).numpy()
                         for j in range(0, len(slices), batch)]
                per_view.append(np.concatenate(probs))
            out.append(per_view)
    return out


def evaluate_predictions(per_track: list[list[np.ndarray]], y: np.ndarray, labels: Sequence[str]) -> dict:
    """Slice-level, track-level (mean of slice probabilities over all views) and majority-vote reports."""
    slice_probs = np.concatenate([np.concatenate(views) for views in per_track])
    slice_y = np.concatenate([np.full(sum(len(v) for v in views), y[i]) for i, views in enumerate(per_track)])
    track_probs = np.stack([np.concatenate(views).mean(axis=0) for views in per_track])
    vote_probs = np.stack([majority_vote(np.concatenate(views), mean)
                           for views, mean in zip(per_track, track_probs, strict=True)])
    return {"slice": classification_report(slice_y, slice_probs, labels),
            "track": classification_report(y, track_probs, labels),
            "track_vote": classification_report(y, vote_probs, labels),
            "track_probs": track_probs.tolist()}


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(net: nn.Module, spec: ArchSpec, data: SliceData | PooledData, train_idx: np.ndarray,
          valid_idx: np.ndarray, y: np.ndarray, labels: Sequence[str], cfg: TrainConfig,
          out: Path | None = None, progress: bool = True) -> dict:
    """Train ``net`` in place on ``train_idx``; early stopping on the validation tracks' slice loss.

    With ``out``: ``train_log.csv``, ``checkpoint.pt`` (each epoch, resumable), ``best.pt`` and
    ``curves.png`` are written there, and a run with a checkpoint resumes from it.
    Returns a summary: epochs run, best epoch, seconds, and the stopping reason.
    """
    pooled = isinstance(data, PooledData)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    n_classes = len(labels)
    params = [p for p in net.parameters() if p.requires_grad]
    lr = cfg.lr if cfg.lr is not None else spec.lr
    optimizer = torch.optim.AdamW(params, lr=lr,
                                  weight_decay=cfg.weight_decay if cfg.weight_decay is not None else spec.weight_decay)
    per_epoch = cfg.slices_per_epoch or 8 * len(train_idx)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, cfg.warmup_epochs * steps_per_epoch))
    # Class-balanced sampling: each class equally likely, each of its tracks equally likely.
    counts = np.bincount(y[train_idx], minlength=n_classes)
    weights = 1.0 / counts[y[train_idx]]
    weights /= weights.sum()
    variants = ["none", *AUGMENTED_VARIANTS] if cfg.augment else ["none"]
    state = {"epoch": 0, "best_loss": float("inf"), "best_epoch": -1, "stale": 0, "seconds": 0.0, "history": []}
    checkpoint = out / "checkpoint.pt" if out else None
    if checkpoint and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = json.loads(saved["state"])
        rng.bit_generator.state = json.loads(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed %s at epoch %d", out, state["epoch"])
    if state["epoch"] == 0:
        best_state = {k: v.clone() for k, v in net.state_dict().items()}
    else:
        best_state = torch.load(out / "best.pt", weights_only=True)["model"]
    reason = "epochs"
    valid_y = y[valid_idx]
    while state["epoch"] < cfg.epochs:
        started = time.perf_counter()
        net.train()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for _ in bar:
            tracks = rng.choice(train_idx, size=cfg.batch_size, p=weights)
            xs = []
            for t in tracks:
                x = data.sample(int(t), rng, variants[int(rng.integers(len(variants)))])
                if cfg.augment and not pooled:
                    x = spec_augment(x, rng, max_time=max(1, x.shape[0] // 8), max_freq=max(1, x.shape[1] // 10))
                xs.append(x)
            batch = np.stack(xs)
            target = np.eye(n_classes, dtype=np.float32)[y[tracks]]
            if cfg.augment and cfg.mixup_alpha > 0:
                batch, target, _ = mixup(batch, target, rng, cfg.mixup_alpha)
            logits = _forward(net, torch.from_numpy(batch.astype(np.float32)), pooled)
            loss = torch.sum(-torch.from_numpy(target) * F.log_softmax(logits, dim=1), dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        probs = predict(net, data, valid_idx)
        slice_probs = [np.concatenate(v) for v in probs]
        valid_loss = float(np.mean([-np.log(np.clip(p[:, c], 1e-7, 1)).mean()
                                    for p, c in zip(slice_probs, valid_y, strict=True)]))
        track_pred = np.array([p.mean(axis=0).argmax() for p in slice_probs])
        valid_acc = float((track_pred == valid_y).mean()) if len(valid_y) else float("nan")
        state["seconds"] += time.perf_counter() - started
        state["epoch"] += 1
        row = {"epoch": state["epoch"], "train_loss": float(np.mean(losses)), "valid_loss": valid_loss,
               "valid_track_accuracy": valid_acc, "lr": scheduler.get_last_lr()[0], "seconds": state["seconds"]}
        state["history"].append(row)
        if valid_loss < state["best_loss"] - 1e-4:
            state.update(best_loss=valid_loss, best_epoch=state["epoch"], stale=0)
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            state["stale"] += 1
        if out:
            _write_epoch(out, net, optimizer, scheduler, state, rng, best_state, row)
        if progress:
            tqdm.write(f"epoch {state['epoch']}: train loss {row['train_loss']:.3f}, valid loss {valid_loss:.3f}, "
                       f"valid track accuracy {valid_acc:.3f} ({state['seconds']:.0f} s)")
        if state["stale"] >= cfg.patience:
            reason = f"early stop (no better validation loss for {cfg.patience} epochs)"
            break
        if cfg.budget_seconds and state["seconds"] >= cfg.budget_seconds:
            reason = f"time budget ({cfg.budget_seconds:.0f} s)"
            break
    net.load_state_dict(best_state)
    if out:
        plot_curves(state["history"], out / "curves.png", spec.name)
    return {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "seconds": state["seconds"],
            "stopped": reason, "history": state["history"]}


def _write_epoch(out: Path, net: nn.Module, optimizer, scheduler, state: dict, rng: np.random.Generator,
                 best_state: dict, row: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.csv"
    new = not log_path.exists()
    with log_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    if state["best_epoch"] == state["epoch"]:
        _save(out / "best.pt", {"model": best_state})
    # Plain tensors and JSON strings only, so torch.load(weights_only=True) reads it back.
    _save(out / "checkpoint.pt", {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "state": json.dumps(state),
                                  "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()})


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def plot_curves(history: list[dict], path: Path, title: str) -> Path:
    """Training and validation loss, and validation track accuracy, per epoch (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    left.plot(epochs, [h["train_loss"] for h in history], label="train")
    left.plot(epochs, [h["valid_loss"] for h in history], label="validation")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    right.plot(epochs, [h["valid_track_accuracy"] for h in history], color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel("validation track accuracy")
    right.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def inner_validation(tracks: Sequence[Track], train_idx: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split training tracks into (fit, validation) by group, stratified: about ``fraction`` of each
    class's groups (at least one where the class has two or more) go to validation."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, dict[str, list[int]]] = {}
    for i in train_idx:
        t = tracks[i]
        # GTZAN groups are genres: use runs of 4 neighbouring ids as the grouping instead.
        group = t.group if t.group != t.label else f"{t.label}/{_gtzan_run(t)}"
        by_label.setdefault(t.label, {}).setdefault(group, []).append(int(i))
    valid: list[int] = []
    for groups in by_label.values():
        names = sorted(groups)
        if len(names) < 2:
            continue
        k = max(1, round(fraction * len(names)))
        for name in rng.choice(names, size=k, replace=False):
            valid += groups[name]
    valid_set = set(valid)
    fit = np.array([i for i in train_idx if int(i) not in valid_set])
    return fit, np.array(sorted(valid_set), dtype=int)


def _gtzan_run(t: Track) -> str:
    try:
        return str(gtzan_number(t.track_id) // 4)
    except ValueError:
        return t.track_id


def prepare_data(arch: str, spec: ArchSpec, net: nn.Module, cache: SpectrogramCache, tracks: Sequence[Track],
                 augment: bool, progress: bool = True) -> SliceData | PooledData:
    """Fill the cache for the architecture's views (and the augmentation bank) and load it."""
    views = model_views(spec)
    variants = ["none", *AUGMENTED_VARIANTS] if augment else ["none"]
    fill_cache(cache, tracks, sorted({v.front_end for v in views}, key=lambda f: f.hop_length), variants, progress)
    if isinstance(net, MusicnnTransfer) and net.finetune_from is None:
        return PooledData(net, cache, tracks, views, variants, progress=progress)
    return SliceData(cache, tracks, views, variants)


def fill_cache(cache: SpectrogramCache, tracks: Sequence[Track], front_ends: Sequence[FrontEndConfig],
               variants: Sequence[str], progress: bool = True) -> None:
    bank = AudioAugment(noise_p=0.7, pitch_p=0.5, stretch_p=0.5)
    errors = cache.fill(tracks, front_ends, {v: (None if v == "none" else bank) for v in variants}, progress)
    if errors:
        raise RuntimeError(f"{len(errors)} track(s) could not be read; first: {errors[0]}")


def run_fold(arch: str, tracks: Sequence[Track], labels: Sequence[str], train_idx: np.ndarray,
             test_idx: np.ndarray, cfg: TrainConfig, cache: SpectrogramCache, out: Path | None = None,
             progress: bool = True, data: SliceData | PooledData | None = None) -> tuple[nn.Module, ArchSpec, dict]:
    """Train on ``train_idx`` (a grouped 15 % held out for early stopping) and evaluate on ``test_idx``."""
    y = np.array([labels.index(t.label) for t in tracks])
    torch.manual_seed(cfg.seed)
    net, spec = build(arch, len(labels), **cfg.arch_options)
    if data is None:
        data = prepare_data(arch, spec, net, cache, tracks, cfg.augment, progress)
    fit, valid = inner_validation(tracks, train_idx, 0.15, cfg.seed)
    summary = train(net, spec, data, fit, valid, y, labels, cfg, out, progress)
    if not len(test_idx):  # trained on everything: nothing held out to report on
        return net, spec, {"train": summary, "report": {}}
    report = evaluate_predictions(predict(net, data, test_idx), y[test_idx], labels)
    if out:
        plot_confusion(np.array(report["track"]["confusion"]), labels, out / "confusion.png",
                       f"{arch}: track level, accuracy {report['track']['accuracy']:.3f}")
        (out / "metrics.json").write_text(json.dumps({"arch": arch, "config": asdict(cfg), "train": summary,
                                                      "report": report}, indent=1))
    return net, spec, {"train": summary, "report": report}
