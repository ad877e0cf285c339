"""The comparison table: every architecture, with and without augmentation, grouped k-fold CV.

``genre-tagger compare`` (defaults: the shared GTZAN clips, 5 folds that keep neighbouring GTZAN ids
together, every architecture) trains one model per (architecture, augmentation, fold) on the other
folds, evaluates it at track level on the held-out fold, and writes a Markdown table with pooled
out-of-fold accuracy and macro F1, their spread over folds, and training time. Each run is saved
(``--runs``), so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from training.architectures import ARCHITECTURES, build
from training.datasets import folds_for, labels_of, load_dataset
from training.metrics import classification_report
from training.spectrograms import SpectrogramCache
from training.train import TrainConfig, model_views, prepare_data, run_fold

# What the papers reported, for context only: other data, other splits, other budgets.
RESEARCH = {
    "meza": "92.7 % slice-level, random slice split (leaks tracks)",
    "meza3": "—",
    "choi_fcn": "auto-tagging AUC, not genre accuracy",
    "choi_crnn": "auto-tagging AUC, not genre accuracy",
    "mfcc_cnn": "56 % (GTZAN)",
    "mfcc_lstm": "42 % (GTZAN)",
    "cheng": "—",
    "cheng_freq": "—",
    "musicnn_transfer": "—",
}


def compare(data: str, archs: list[str] | None, n_folds: int, out: Path, runs: Path, cfg: TrainConfig,
            cache_dir: str, progress: bool = True) -> dict:
    tracks = load_dataset(data)
    labels = list(labels_of(tracks))
    y = np.array([labels.index(t.label) for t in tracks])
    folds = folds_for(tracks, n_folds, cfg.seed)
    cache = SpectrogramCache(cache_dir, cfg.seed)
    # Saved runs are reused only by a comparison with the same data, folds and settings.
    settings = json.dumps({"data": data, "folds": n_folds, **{k: v for k, v in cfg.__dict__.items() if k != "augment"}},
                          sort_keys=True)
    runs = runs / hashlib.blake2b(settings.encode(), digest_size=6).hexdigest()
    runs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for arch in archs or list(ARCHITECTURES):
        torch.manual_seed(cfg.seed)
        net, spec = build(arch, len(labels), **cfg.arch_options)
        params = sum(p.numel() for p in net.parameters())
        for augment in (False, True):
            key = f"{arch}{' +aug' if augment else ''}"
            run_cfg = TrainConfig(**{**cfg.__dict__, "augment": augment})
            files = [runs / f"{arch}-{'aug' if augment else 'plain'}-fold{k}.json" for k in range(n_folds)]
            data_cache = None
            for k, path in enumerate(files):
                if path.exists():
                    continue
                if data_cache is None:
                    data_cache = prepare_data(arch, spec, net, cache, tracks, augment, progress)
                started = time.perf_counter()
                train_idx, test_idx = np.where(folds != k)[0], np.where(folds == k)[0]
                _, _, result = run_fold(arch, tracks, labels, train_idx, test_idx, run_cfg, cache, None,
                                        progress=False, data=data_cache)
                result["wall_seconds"] = time.perf_counter() - started
                result["test_idx"] = test_idx.tolist()
                path.write_text(json.dumps(result))
                if progress:
                    print(f"{key} fold {k}: track accuracy {result['report']['track']['accuracy']:.3f}, "
                          f"{result['train']['epochs']} epochs, {result['train']['seconds']:.0f} s "
                          f"({result['train']['stopped']})", flush=True)
            per_fold = [json.loads(p.read_text()) for p in files]
            oof = np.zeros((len(tracks), len(labels)))
            for r in per_fold:
                oof[r["test_idx"]] = np.array(r["report"]["track_probs"])
            report = classification_report(y, oof, labels)
            accs = [r["report"]["track"]["accuracy"] for r in per_fold]
            f1s = [r["report"]["track"]["macro_f1"] for r in per_fold]
            results[key] = {
                "arch": arch, "augment": augment, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                "accuracy_fold_mean": float(np.mean(accs)), "accuracy_fold_std": float(np.std(accs)),
                "macro_f1_fold_std": float(np.std(f1s)),
                "vote_accuracy": float(np.mean([r["report"]["track_vote"]["accuracy"] for r in per_fold])),
                "slice_accuracy": float(np.mean([r["report"]["slice"]["accuracy"] for r in per_fold])),
                "epochs": [r["train"]["epochs"] for r in per_fold],
                "stopped": [r["train"]["stopped"] for r in per_fold],
                "train_seconds": float(np.mean([r["train"]["seconds"] for r in per_fold])),
                "wall_seconds": float(np.mean([r["wall_seconds"] for r in per_fold])),
                "params": params,
            }
    majority = np.zeros((len(tracks), len(labels)))
    majority[:, np.bincount(y, minlength=len(labels)).argmax()] = 1.0
    floor = classification_report(y, majority, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, data, len(tracks), n_folds, cfg, floor))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return results


def _shipped_line() -> str:
    cv = Path(__file__).resolve().parent.parent / "models" / "msd-musicnn-gtzan.cv.json"
    if not cv.is_file():
        return ""
    doc = json.loads(cv.read_text())
    shipped = doc["cv"]["genre"]["rows"][doc["shipped"]["row"]]
    return (f" The shipped default model (`models/msd-musicnn-gtzan.md`: {doc['shipped']['head']}, the same "
            f"backbone, but artist-grouped folds over 391 clips, so not the same folds) reaches "
            f"{shipped['accuracy']:.3f} accuracy and {shipped['macro_f1']:.3f} macro F1.")


def _epochs(result: dict) -> str:
    marks = {"time": "b", "earl": "e"}
    return ", ".join(f"{n}{marks.get(why[:4], '')}" for n, why in zip(result["epochs"], result["stopped"], strict=True))


def markdown(results: dict, data: str, n_tracks: int, n_folds: int, cfg: TrainConfig, floor: dict) -> str:
    lines = [
        "# Architecture comparison on the shared GTZAN clips",
        "",
        f"Produced by `genre-tagger compare --data {data} --folds {n_folds} --epochs {cfg.epochs} --slices-per-epoch "
        f"{cfg.slices_per_epoch} --budget-seconds {cfg.budget_seconds:g} --threads {cfg.threads} --seed {cfg.seed}` "
        f"(the defaults; {n_tracks} tracks, grouped {n_folds}-fold CV: "
        "within each genre, neighbouring GTZAN ids stay in one fold, so one artist rarely sits on both sides). "
        "Every number is track level (the mean of slice probabilities over both views), pooled over the "
        "out-of-fold predictions; ± is the standard deviation over folds.",
        "",
        f"Budget per run, on this 2-core CPU box ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}): at most {cfg.epochs} epochs of {cfg.slices_per_epoch or '8 × tracks'} "
        f"class-balanced slices, batch {cfg.batch_size}, stopped after the epoch passing {cfg.budget_seconds:g} s "
        f"of training, or earlier by early stopping (patience {cfg.patience}) on a grouped 15 % of the "
        "training tracks; the best validation epoch is evaluated. '+aug' adds the audio bank (pitch ±4 "
        "semitones, time stretch 0.8–1.25, noise σ 0.001–0.015; two seeded versions per track), SpecAugment "
        "and mixup (α 0.2). Models with a 5.12 s view see zoomed-out slices in both columns.",
        "",
        "| architecture | augmentation | track accuracy | macro F1 | slice accuracy | majority-vote accuracy "
        "| epochs per fold (b: time budget, e: early stop) | train s / run | parameters | the paper reported |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        lines.append(
            f"| {r['arch']} | {'yes' if r['augment'] else 'no'} | {r['accuracy']:.3f} ± {r['accuracy_fold_std']:.3f} "
            f"| {r['macro_f1']:.3f} ± {r['macro_f1_fold_std']:.3f} | {r['slice_accuracy']:.3f} "
            f"| {r['vote_accuracy']:.3f} | {_epochs(r)} | {r['train_seconds']:.0f} "
            f"| {r['params'] / 1e3:.0f} k | {RESEARCH.get(r['arch'], '—')} |")
    top = max(floor["per_class"], key=lambda k: floor["per_class"][k]["support"])
    lines.append(f"| *always '{top}' (the majority class)* | — | {floor['accuracy']:.3f} | {floor['macro_f1']:.3f} "
                 "| — | — | — | 0 | 0 | — |")
    lines += [
        "",
        "The frozen musicnn transfer trains a head on pooled backbone features computed once before its five "
        "folds (about 1.5 minutes per augmentation setting, not in 'train s / run')." + _shipped_line() +
        " Rows marked b stopped on the time budget: those ran while other work shared the two cores, so their "
        "epoch counts vary by fold.",
        "",
        "Reading it: 161 clips, of which 89 are classical (8 per other genre), so accuracy leans on classical; "
        "macro F1 weighs every genre equally. The networks trained from scratch get seconds of CPU each and "
        "eight clips per genre: their numbers say what such a budget buys, not what the architectures can do "
        "with GTZAN's 1000 clips and a GPU. The research's figures come from other data, splits and budgets "
        "(Meza & Nalianya's 92.7 % is slice-level on a random slice split, which puts slices of one track on "
        "both sides); they are context, not a comparison.",
        "",
        "Views: " + "; ".join(f"{a}: " + ", ".join(f"{v.name} = {v.window_frames} frames at "
                                                  f"{v.front_end.sample_rate / v.front_end.hop_length:.1f}/s"
                                                  for v in model_views(ARCHITECTURES[a]().spec))
                              for a in dict.fromkeys(r["arch"] for r in results.values())) + ".",
        "",
    ]
    return "\n".join(lines)
