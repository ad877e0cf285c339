"""Honest numbers for the default model: artist-grouped nested cross-validation of its genre head,
calibration, the music detector's errors, and accuracy under degradations.

Everything here works on cached pooled features (:mod:`training.feature_cache`): per clip and variant,
each view's windows [windows, 1506] as the runtime's fast path makes them. A track's estimate is the
runtime's: the mean of its windows' probabilities per view, then the mean over views.

- Folds: scikit-learn's ``StratifiedGroupKFold`` over all labelled clips, grouped by artist
  (:func:`training.datasets.load_gtzan_by_artist`), stratified by genre, seeded.
- Nested CV: in each outer fold, an inner artist-grouped CV over the outer training clips picks the
  head (logistic regression on the 1506 pooled channels or on the 200-d MSD embedding) and its
  regularisation C; the winner is refitted on the outer training clips and scored on the outer test
  clips. The plain baseline (logistic regression on the track-mean 200-d embedding, C = 1) and the
  previous recipe (pooled channels, C = 1, no choice) run on the same folds.
- Calibration: one temperature for the genre logits, fitted on out-of-fold predictions. Its ECE is
  cross-fitted: each fold's predictions are scaled by the temperature fitted on the other folds.
- Music detector: logistic regression on the pooled channels, music clips against non-music clips
  (:mod:`training.negatives`), the non-music held out by group (a kind, a kind in one language, one
  package) on the same folds, and by voice.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.datasets import GTZAN_GENRES, Track
from training.metrics import classification_report, expected_calibration_error

VIEW_NAMES = ("2.56s", "5.12s")
C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.1)
SPACES = ("pooled", "embedding")
TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 241))
# A clip-mean fit has one row per clip instead of ~10 windows: the same C would regularise it 10× harder.
MEAN_C_FACTOR = 10.0
# Chosen with the threshold on the detector's CV with the packaged music (fewest out-of-fold errors over
# clip-variants at each C's best threshold: C 0.001 → 55, 0.003 → 54 at 0.35, 0.01 → 57, 0.03 → 81, 0.1 → 83).
DETECTOR_C = 0.003
SCALE_FLOOR = 1e-3  # see LinearModel.fit


@dataclass
class Clips:
    """Slice features of many clips: per variant, per clip, per view, per space [windows, dims]."""

    ids: list[str]
    features: dict[str, list[dict[str, dict[str, np.ndarray]]]] = field(default_factory=dict)

    def get(self, variant: str, i: int, space: str) -> dict[str, np.ndarray]:
        return {v: f[space] for v, f in self.features[variant][i].items()}


def load_clips(cache, ids: Sequence[str], variants: Sequence[str], transform: Callable[[np.ndarray], dict]
               ) -> Clips:
    """Read cached features (``cache.get`` must hit) and apply ``transform`` (pooled → per space)."""
    clips = Clips(list(ids))
    for variant in variants:
        rows = []
        for cid in ids:
            views = cache.get(variant, cid, _not_cached(cid))
            rows.append({v: transform(views[v]) for v in VIEW_NAMES})
        clips.features[variant] = rows
    return clips


def _not_cached(cid: str) -> Callable[[], np.ndarray]:
    def fail() -> np.ndarray:
        raise FileNotFoundError(f"{cid}: features not cached (run python -m training.feature_cache)")

    return fail


@dataclass
class LinearModel:
    """Softmax (or, with one class, sigmoid) regression in the raw feature space: ``x @ weight.T + bias``."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, n_classes: int) -> LinearModel:
        """Standardised logistic regression with the standardisation folded in: ``n_classes`` > 1 is the
        multinomial (softmax) model, 1 the binary (sigmoid) one with ``y`` in {0, 1}.

        The objective is scikit-learn's (``C · Σ wᵢ·lossᵢ + ½‖W‖²``, weights normalised to mean 1, bias not
        penalised), minimised by full-batch L-BFGS in PyTorch (scikit-learn's lbfgs took 25-50 s per fit on
        this box, this about 1-3 s). Channels that barely vary (std below SCALE_FLOOR of the largest) are
        scaled as if they had that std: dividing by 1e-14 would fold weights of 1e6+ into the graph.
        """
        import torch

        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.maximum(scale, SCALE_FLOOR * scale.max())
        xs = torch.from_numpy(((x - mean) / scale).astype(np.float32))
        sw = torch.from_numpy((w / w.mean()).astype(np.float32))
        outputs = 1 if n_classes == 1 else n_classes
        present = np.unique(y) if n_classes > 1 else np.array([0])
        weight = torch.zeros(outputs, x.shape[1], requires_grad=True)
        bias = torch.zeros(outputs, requires_grad=True)
        target = torch.from_numpy(y.astype(np.int64))
        # A class absent from training must never win: its logit is pinned far below.
        mask = torch.zeros(outputs, dtype=torch.bool)
        mask[torch.from_numpy(present)] = True
        optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=1000, tolerance_grad=1e-5,
                                      tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")
        total = float(sw.sum())

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            z = xs @ weight.T + bias
            if n_classes == 1:
                losses = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], target.float(),
                                                                              reduction="none")
            else:
                losses = torch.nn.functional.cross_entropy(z.masked_fill(~mask, -1e4), target, reduction="none")
            loss = (c * (sw * losses).sum() + 0.5 * (weight ** 2).sum()) / total
            loss.backward()
            return loss

        optimiser.step(closure)
        coef = weight.detach().double().numpy() / scale
        intercept = bias.detach().double().numpy() - coef @ mean
        if n_classes > 1:
            intercept[~mask.numpy()] = -1e4
        return cls(coef, intercept)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def track_probs(view_logits: Sequence[dict[str, np.ndarray]], temperature: float = 1.0) -> np.ndarray:
    """Per track: mean over views of the mean over windows of softmax(logits / T) [tracks, classes]."""
    return np.stack([np.mean([softmax(z / temperature).mean(axis=0) for z in views.values()], axis=0)
                     for views in view_logits])


def slice_arrays(clips: Clips, indices: Sequence[int], labels: np.ndarray, space: str, variants: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training slices, labels and weights: each class weighs the same, then each track within it, each
    view within the track, each variant within the view."""
    class_tracks = np.bincount(labels[list(indices)], minlength=len(GTZAN_GENRES))
    x, y, w = [], [], []
    for i in indices:
        for variant in variants:
            for feats in clips.get(variant, i, space).values():
                x.append(feats)
                y.append(np.full(len(feats), labels[i]))
                w.append(np.full(len(feats), 1.0 / (class_tracks[labels[i]] * len(feats) * len(variants))))
    return np.concatenate(x), np.concatenate(y), np.concatenate(w)


@dataclass(frozen=True)
class HeadChoice:
    """A genre head: a logistic regression in ``space`` (``pooled`` channels or MSD ``embedding``) with
    regularisation ``c``, fitted on every window (``mean`` False) or on each clip's mean over its windows
    (``mean`` True, as the baseline; applied to windows all the same, a linear model's logits of the
    mean being the mean of its logits)."""

    space: str
    c: float
    mean: bool = False

    @property
    def name(self) -> str:
        return f"{self.space}{' track-mean' if self.mean else ''} C={self.c:g}"


def track_mean_arrays(clips: Clips, indices, labels: np.ndarray, space: str, variants: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per clip and variant: the mean over all its windows (both views); each class weighs the same."""
    class_tracks = np.bincount(labels[list(indices)], minlength=len(GTZAN_GENRES))
    x, y, w = [], [], []
    for i in indices:
        for variant in variants:
            x.append(np.concatenate(list(clips.get(variant, i, space).values())).mean(axis=0))
            y.append(labels[i])
            w.append(1.0 / (class_tracks[labels[i]] * len(variants)))
    return np.stack(x), np.array(y), np.array(w)


def fit_head(clips: Clips, indices, labels, choice: HeadChoice, variants=("clean",)) -> LinearModel:
    arrays = track_mean_arrays if choice.mean else slice_arrays
    x, y, w = arrays(clips, indices, labels, choice.space, variants)
    return LinearModel.fit(x, y, w, choice.c, len(GTZAN_GENRES))


def head_logits(model: LinearModel, clips: Clips, indices, space: str, variant: str = "clean"
                ) -> list[dict[str, np.ndarray]]:
    return [{v: model.logits(f) for v, f in clips.get(variant, i, space).items()} for i in indices]


def artist_folds(labels: np.ndarray, groups: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold per clip: stratified by label, every group (artist) within one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, list(groups))):
        folds[test] = k
    return folds


def choose_head(clips: Clips, indices: np.ndarray, labels: np.ndarray, groups: Sequence[str], seed: int,
                inner_folds: int = 4) -> tuple[HeadChoice, dict[str, float]]:
    """The candidate with the best inner artist-grouped CV accuracy (ties: macro F1, then smaller C)."""
    inner = artist_folds(labels[indices], [groups[i] for i in indices], inner_folds, seed)
    scores, choices = {}, {}
    for space, c, mean in itertools.product(SPACES, C_GRID, (False, True)):
        choice = HeadChoice(space, c if not mean else c * MEAN_C_FACTOR, mean)
        choices[choice.name] = choice
        probs = np.zeros((len(indices), len(GTZAN_GENRES)))
        for k in range(inner_folds):
            tr, te = indices[inner != k], np.flatnonzero(inner == k)
            model = fit_head(clips, tr, labels, choice)
            probs[te] = track_probs(head_logits(model, clips, indices[te], space))
        rep = classification_report(labels[indices], probs, GTZAN_GENRES)
        scores[choice.name] = (rep["accuracy"], rep["macro_f1"], -choice.c)
    best = max(scores, key=scores.get)
    return choices[best], {k: v[0] for k, v in scores.items()}


def inner_temperature(clips: Clips, indices: np.ndarray, labels: np.ndarray, groups: Sequence[str],
                      choice: HeadChoice, variants: Sequence[str], seed: int, inner_folds: int = 4) -> float:
    """The temperature for a head trained on ``indices`` (an outer fold's training clips) that never sees the
    outer test clips: the config ``choice``, trained as the outer head is (with ``variants``), is refitted on
    an inner artist-grouped split of ``indices`` (the folds :func:`choose_head` used) and the temperature is
    fitted on those inner out-of-fold predictions."""
    inner = artist_folds(labels[indices], [groups[i] for i in indices], inner_folds, seed)
    logits: list = [None] * len(indices)
    for k in range(inner_folds):
        tr, te = indices[inner != k], np.flatnonzero(inner == k)
        model = fit_head(clips, tr, labels, choice, variants)
        for j, z in zip(te, head_logits(model, clips, indices[te], choice.space), strict=True):
            logits[j] = z
    return fit_temperature(logits, labels[indices])


def fit_temperature(view_logits: Sequence[dict[str, np.ndarray]], labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the tracks' labels (grid search)."""
    nll = [-np.mean(np.log(np.clip(track_probs(view_logits, t)[np.arange(len(labels)), labels], 1e-12, None)))
           for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def summary(labels: np.ndarray, probs: np.ndarray, folds: np.ndarray) -> dict:
    """Pooled report plus per-fold accuracy and macro F1 with their spread."""
    rep = classification_report(labels, probs, GTZAN_GENRES)
    per_fold = [classification_report(labels[folds == k], probs[folds == k], GTZAN_GENRES)
                for k in range(folds.max() + 1)]
    accs = [r["accuracy"] for r in per_fold]
    f1s = [r["macro_f1"] for r in per_fold]
    return {"accuracy": rep["accuracy"], "accuracy_fold_mean": float(np.mean(accs)),
            "accuracy_fold_std": float(np.std(accs)), "macro_f1": rep["macro_f1"],
            "macro_f1_fold_mean": float(np.mean(f1s)), "macro_f1_fold_std": float(np.std(f1s)),
            "ece": rep["ece"], "per_fold": [{"accuracy": a, "macro_f1": f} for a, f in zip(accs, f1s, strict=True)],
            "report": rep}


def baseline_probs(clips: Clips, train, test, labels) -> np.ndarray:
    """Logistic regression (C = 1, classes balanced) on the standardised track-mean 200-d embedding."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def mean_embedding(i: int) -> np.ndarray:
        return np.concatenate(list(clips.get("clean", i, "embedding").values())).mean(axis=0)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced", C=1.0))
    model.fit(np.stack([mean_embedding(i) for i in train]), labels[train])
    probs = np.zeros((len(test), len(GTZAN_GENRES)))
    probs[:, model.classes_] = model.predict_proba(np.stack([mean_embedding(i) for i in test]))
    return probs


PREVIOUS = HeadChoice("pooled", 1.0)  # the recipe of model 1.0.0: pooled channels, sklearn's default C


def nested_cv(clips: Clips, tracks: Sequence[Track], folds: np.ndarray, seed: int,
              degradations: Sequence[str] = (), log: Callable[[str], None] = print) -> dict:
    """The genre table: baseline, previous recipe, nested choice (clean and augmented with the
    degradations' training copies), calibration, and accuracy under each degradation."""
    labels = np.array([GTZAN_GENRES.index(t.label) for t in tracks])
    groups = [t.group for t in tracks]
    n = len(tracks)
    k_folds = folds.max() + 1
    rows: dict[str, np.ndarray] = {name: np.zeros((n, len(GTZAN_GENRES))) for name in
                                   ("baseline", "previous", "nested", "nested+aug")}
    oof_logits: dict[str, list] = {"nested": [None] * n, "nested+aug": [None] * n}
    degraded: dict[str, dict[str, np.ndarray]] = {d: {r: np.zeros((n, len(GTZAN_GENRES))) for r in
                                                      ("previous", "nested", "nested+aug")} for d in degradations}
    degraded_logits: dict[str, dict[str, list]] = {d: {"nested": [None] * n, "nested+aug": [None] * n}
                                                   for d in degradations}
    chosen, inner_scores = [], []
    # Honest nested calibration: each outer fold's head scaled by a temperature fitted inside that fold.
    inner_t: dict[str, list[float]] = {"nested": [], "nested+aug": []}
    inner_scaled = {name: np.zeros((n, len(GTZAN_GENRES))) for name in inner_t}
    for k in range(k_folds):
        started = time.perf_counter()
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        rows["baseline"][test] = baseline_probs(clips, train, test, labels)
        previous = fit_head(clips, train, labels, PREVIOUS)
        rows["previous"][test] = track_probs(head_logits(previous, clips, test, PREVIOUS.space))
        choice, scores = choose_head(clips, train, labels, groups, seed + k)
        chosen.append(choice.name)
        inner_scores.append(scores)
        models = {"nested": fit_head(clips, train, labels, choice),
                  "nested+aug": fit_head(clips, train, labels, choice, ("clean", *degradations))}
        for name, model in models.items():
            logits = head_logits(model, clips, test, choice.space)
            rows[name][test] = track_probs(logits)
            for i, z in zip(test, logits, strict=True):
                oof_logits[name][i] = z
            variants = ("clean", *degradations) if name == "nested+aug" else ("clean",)
            t = inner_temperature(clips, train, labels, groups, choice, variants, seed + k)
            inner_t[name].append(t)
            inner_scaled[name][test] = track_probs(logits, t)
        for d in degradations:
            degraded[d]["previous"][test] = track_probs(head_logits(previous, clips, test, PREVIOUS.space, d))
            for name, model in models.items():
                logits = head_logits(model, clips, test, choice.space, d)
                degraded[d][name][test] = track_probs(logits)
                for i, z in zip(test, logits, strict=True):
                    degraded_logits[d][name][i] = z
        log(f"fold {k + 1}/{k_folds}: chose {choice.name} (inner accuracy {scores[choice.name]:.3f}); "
            f"outer accuracy nested {np.mean(rows['nested'][test].argmax(1) == labels[test]):.3f}, baseline "
            f"{np.mean(rows['baseline'][test].argmax(1) == labels[test]):.3f}; inner temperatures "
            f"{inner_t['nested'][-1]:.2f} / +aug {inner_t['nested+aug'][-1]:.2f}, fold ECE +aug "
            f"{expected_calibration_error(inner_scaled['nested+aug'][test], labels[test]):.3f} "
            f"({time.perf_counter() - started:.0f} s)")
    result: dict = {"labels": labels.tolist(), "folds": folds.tolist(), "chosen": chosen,
                    "inner_accuracy": inner_scores, "rows": {}, "degradations": {}}
    for name, probs in rows.items():
        result["rows"][name] = summary(labels, probs, folds)
    for name in ("nested", "nested+aug"):
        result["rows"][name]["calibration"] = calibration(oof_logits[name], labels, folds)
        t_all = result["rows"][name]["calibration"]["temperature"]
        result["rows"][name]["calibrated"] = summary(labels, track_probs(oof_logits[name], t_all), folds)
        result["rows"][name]["nested_calibration"] = nested_calibration(inner_scaled[name], labels, folds,
                                                                        inner_t[name])
    for d in degradations:
        result["degradations"][d] = {name: summary(labels, probs, folds)["accuracy"] for name, probs in
                                     degraded[d].items()}
        for name in ("nested", "nested+aug"):
            t = result["rows"][name]["calibration"]["temperature"]
            result["degradations"][d][f"{name} calibrated ECE"] = expected_calibration_error(
                track_probs(degraded_logits[d][name], t), labels)
    result["oof_probs"] = {name: probs.tolist() for name, probs in rows.items()}
    result["oof_logits"] = {name: [{v: z.tolist() for v, z in views.items()} for views in logits]
                            for name, logits in oof_logits.items()}
    return result


def nested_calibration(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, temperatures: Sequence[float]
                       ) -> dict:
    """ECE (15 equal-width bins of the top-1 confidence) of out-of-fold probabilities that were each scaled
    by a temperature fitted inside their outer fold: pooled over all clips, and per fold with its spread."""
    k_folds = folds.max() + 1
    fold_ece = [expected_calibration_error(probs[folds == k], labels[folds == k]) for k in range(k_folds)]
    return {"fold_temperatures": list(temperatures), "ece": expected_calibration_error(probs, labels),
            "ece_per_fold": fold_ece, "ece_fold_mean": float(np.mean(fold_ece)),
            "ece_fold_std": float(np.std(fold_ece)), "accuracy": float(np.mean(probs.argmax(1) == labels)),
            "bins": 15, "probs": probs.tolist()}


def calibration(view_logits: list[dict[str, np.ndarray]], labels: np.ndarray, folds: np.ndarray) -> dict:
    """Temperature on all out-of-fold predictions, and the cross-fitted ECE (each fold scaled by the
    temperature of the other folds) before and after."""
    k_folds = folds.max() + 1
    scaled = np.zeros((len(labels), len(GTZAN_GENRES)))
    per_fold = []
    for k in range(k_folds):
        rest, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        t = fit_temperature([view_logits[i] for i in rest], labels[rest])
        per_fold.append(t)
        scaled[test] = track_probs([view_logits[i] for i in test], t)
    raw = track_probs(view_logits)
    fold_ece = [expected_calibration_error(scaled[folds == k], labels[folds == k]) for k in range(k_folds)]
    return {"temperature": fit_temperature(view_logits, labels), "fold_temperatures": per_fold,
            "ece_before": expected_calibration_error(raw, labels),
            "ece_cross_fitted": expected_calibration_error(scaled, labels),
            "ece_cross_fitted_fold_mean": float(np.mean(fold_ece)),
            "ece_cross_fitted_fold_std": float(np.std(fold_ece)),
            "cross_fitted_probs": scaled.tolist()}


def reliability_diagram(series: dict[str, np.ndarray], labels: np.ndarray, path, title: str, bins: int = 15
                        ) -> None:
    """Accuracy against confidence of the top genre in ``bins`` equal-width bins (those of the ECE), one line
    per set of probabilities in ``series`` (label → [tracks, classes]), and the first set's tracks per bin (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(5.5, 6.5), dpi=110, gridspec_kw={"height_ratios": [3, 1]},
                                 sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for n, (name, probs) in enumerate(series.items()):
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == labels
        centres, accs = [], []
        for lo, hi in itertools.pairwise(edges):
            inside = (confidence > lo) & (confidence <= hi)
            if inside.any():
                centres.append(confidence[inside].mean())
                accs.append(correct[inside].mean())
        ax.plot(centres, accs, marker="o" if n == 0 else "s", markersize=4 if n else 5, label=name,
                alpha=1.0 if n == 0 else 0.6)
        if n == 0:
            bx.bar(edges[:-1], np.histogram(confidence, edges)[0], width=1 / bins, align="edge", color="tab:blue",
                   alpha=0.6)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    bx.set_xlabel("confidence of the top genre")
    bx.set_ylabel("tracks")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the music detector ---------------------------------------------------------------------------------


@dataclass
class DetectorData:
    """Pooled slices of music and non-music clips for the detector, by clip. ``packaged`` is more music
    (excerpts of Debian packages' soundtracks, :mod:`training.music_sources`), grouped by package."""

    music: Clips
    non_music: Clips
    music_variants: Sequence[str]
    non_music_variants: Sequence[str]
    packaged: Clips | None = None
    packaged_variants: Sequence[str] = ()
    packaged_groups: Sequence[str] = ()

    def packaged_count(self) -> int:
        return len(self.packaged.ids) if self.packaged is not None else 0


def detector_arrays(data: DetectorData, music_idx, non_music_idx, packaged_idx=()) -> tuple[np.ndarray, ...]:
    """Slices (pooled), targets (1 music) and weights: each clip (all its variants and views) weighs the
    same within its class (labelled and packaged music are one class), and the two classes weigh the same."""
    x, y, w = [], [], []
    music_share = 1.0 / max(1, len(music_idx) + len(packaged_idx))
    sets = [(data.music, music_idx, data.music_variants, 1, music_share),
            (data.non_music, non_music_idx, data.non_music_variants, 0, 1.0 / max(1, len(non_music_idx)))]
    if data.packaged is not None:
        sets.append((data.packaged, packaged_idx, data.packaged_variants, 1, music_share))
    for clips, indices, variants, target, share in sets:
        for i in indices:
            for variant in variants:
                views = clips.get(variant, i, "pooled")
                for feats in views.values():
                    x.append(feats)
                    y.append(np.full(len(feats), target))
                    w.append(np.full(len(feats), share / (len(feats) * len(views) * len(variants))))
    return np.concatenate(x), np.concatenate(y), np.concatenate(w)


def fit_detector(data: DetectorData, music_idx, non_music_idx, c: float = DETECTOR_C, packaged_idx=()
                 ) -> LinearModel:
    x, y, w = detector_arrays(data, music_idx, non_music_idx, packaged_idx)
    return LinearModel.fit(x, y, w, c, 1)


def music_probability(model: LinearModel, views: dict[str, np.ndarray]) -> float:
    """A track's mean music probability: per view the mean over windows, then the mean over views."""
    return float(np.mean([sigmoid(model.logits(f)[:, 0]).mean() for f in views.values()]))


def negative_folds(negatives: Sequence, n_folds: int, seed: int) -> np.ndarray:
    """Fold per non-music clip: whole groups (a kind, a kind in one language, one package) per fold."""
    return group_folds([n.group for n in negatives], n_folds, seed)


def group_folds(groups: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold per item: every item of one group in one fold, the groups dealt to folds in a seeded order."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[j]: rank % n_folds for rank, j in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=int)


def detector_cv(data: DetectorData, folds: np.ndarray, negatives: Sequence, held_out: Clips, seed: int,
                c: float = DETECTOR_C) -> dict:
    """The music detector's errors on unseen artists and unseen kinds of non-music.

    Music folds are the genre CV's artist folds; non-music clips are held out group by group (every
    clip of a kind, of a kind in one language, of one package is tested by a detector that saw none of
    them). ``held_out`` (FMA, realworld: never trained on) is scored by every fold's detector. Then each
    speech voice is held out on its own (a detector trained on everything else)."""
    k_folds = folds.max() + 1
    neg_folds = negative_folds(negatives, k_folds, seed)
    pkg_folds = group_folds(list(data.packaged_groups), k_folds, seed + 1)
    music_p = {v: np.zeros(len(data.music.ids)) for v in data.music_variants}
    neg_p = {v: np.zeros(len(data.non_music.ids)) for v in data.non_music_variants}
    pkg_p = {v: np.zeros(data.packaged_count()) for v in data.packaged_variants}
    held_p = np.zeros((k_folds, len(held_out.ids)))
    for k in range(k_folds):
        model = fit_detector(data, np.flatnonzero(folds != k), np.flatnonzero(neg_folds != k), c,
                             np.flatnonzero(pkg_folds != k))
        for v in data.music_variants:
            for i in np.flatnonzero(folds == k):
                music_p[v][i] = music_probability(model, data.music.get(v, i, "pooled"))
        for v in data.packaged_variants:
            for i in np.flatnonzero(pkg_folds == k):
                pkg_p[v][i] = music_probability(model, data.packaged.get(v, i, "pooled"))
        for v in data.non_music_variants:
            for i in np.flatnonzero(neg_folds == k):
                neg_p[v][i] = music_probability(model, data.non_music.get(v, i, "pooled"))
        for i in range(len(held_out.ids)):
            held_p[k, i] = music_probability(model, held_out.get("clean", i, "pooled"))
    voices = sorted({n.voice for n in negatives if n.voice})
    voice_p = {v: np.zeros(len(data.non_music.ids)) for v in data.non_music_variants}
    for voice in voices:
        out = np.array([n.voice == voice for n in negatives])
        model = fit_detector(data, np.arange(len(data.music.ids)), np.flatnonzero(~out), c,
                             np.arange(data.packaged_count()))
        for v in data.non_music_variants:
            for i in np.flatnonzero(out):
                voice_p[v][i] = music_probability(model, data.non_music.get(v, i, "pooled"))
    return {"c": c, "negative_folds": neg_folds.tolist(), "music_ids": list(data.music.ids),
            "non_music_ids": list(data.non_music.ids), "held_out_ids": list(held_out.ids),
            "music_probabilities": {v: p.tolist() for v, p in music_p.items()},
            "non_music_probabilities": {v: p.tolist() for v, p in neg_p.items()},
            "voice_probabilities": {v: p.tolist() for v, p in voice_p.items()},
            "held_out_probabilities": held_p.tolist(),
            "packaged_ids": list(data.packaged.ids) if data.packaged is not None else [],
            "packaged_groups": list(data.packaged_groups), "packaged_folds": pkg_folds.tolist(),
            "packaged_probabilities": {v: p.tolist() for v, p in pkg_p.items()}}


def detector_summary(det: dict, negatives: Sequence, threshold: float) -> dict:
    """Counts of :func:`detector_cv`'s probabilities at ``threshold``: non-music called no music by kind
    and by held-out voice, music called no music (labelled, per variant; FMA/realworld under any fold)."""
    music_p = {v: np.array(p) for v, p in det["music_probabilities"].items()}
    neg_p = {v: np.array(p) for v, p in det["non_music_probabilities"].items()}
    voice_p = {v: np.array(p) for v, p in det["voice_probabilities"].items()}
    held_p = np.array(det["held_out_probabilities"])
    kinds = sorted({n.kind for n in negatives})
    voices = sorted({n.voice for n in negatives if n.voice})
    by_kind = {kind: {v: _share_below(p, [n.kind == kind for n in negatives], threshold) for v, p in neg_p.items()}
               for kind in kinds}
    by_voice = {voice: {v: _share_below(p, [n.voice == voice for n in negatives], threshold)
                        for v, p in voice_p.items()} for voice in voices}
    return {
        "c": det["c"], "threshold": threshold,
        "music_missed": {v: int((p < threshold).sum()) for v, p in music_p.items()},
        "music_clips": len(det["music_ids"]),
        "music_lowest": {v: float(p.min()) for v, p in music_p.items()},
        "music_missed_clips": {v: [det["music_ids"][i] for i in np.flatnonzero(p < threshold)]
                               for v, p in music_p.items()},
        "non_music_by_kind": by_kind, "non_music_by_voice": by_voice,
        "non_music_missed": {v: [det["non_music_ids"][i] for i in np.flatnonzero(p >= threshold)]
                             for v, p in neg_p.items()},
        "held_out": {cid: {"lowest": float(held_p[:, i].min()), "highest": float(held_p[:, i].max())}
                     for i, cid in enumerate(det["held_out_ids"])},
        "held_out_missed": int((held_p.min(axis=0) < threshold).sum()),
        **_packaged_summary(det, threshold),
    }


def _packaged_summary(det: dict, threshold: float) -> dict:
    """Packaged music (each package held out whole) called no music, per package and variant."""
    pkg_p = {v: np.array(p) for v, p in det.get("packaged_probabilities", {}).items()}
    if not pkg_p:
        return {}
    groups = np.array(det["packaged_groups"])
    by_package = {}
    for package in sorted(set(groups)):
        mask = groups == package
        by_package[package] = {v: {"clips": int(mask.sum()), "no_music": int((p[mask] < threshold).sum()),
                                   "lowest": float(p[mask].min())} for v, p in pkg_p.items()}
    return {"packaged_by_package": by_package,
            "packaged_missed": {v: int((p < threshold).sum()) for v, p in pkg_p.items()},
            "packaged_clips": len(groups),
            "packaged_missed_clips": {v: [det["packaged_ids"][i] for i in np.flatnonzero(p < threshold)]
                                      for v, p in pkg_p.items()}}


THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.025))


def detector_error_rates(det: dict, threshold: float) -> dict[str, float]:
    """Out-of-fold errors at ``threshold`` over clip-variants: music (labelled and packaged) called no music,
    non-music (its group held out) called music, as shares of each and as a count of both together."""
    music = np.concatenate([np.ravel(p) for p in det["music_probabilities"].values()]
                           + [np.ravel(p) for p in det.get("packaged_probabilities", {}).values()])
    non_music = np.concatenate([np.ravel(p) for p in det["non_music_probabilities"].values()])
    missed, passed = int((music < threshold).sum()), int((non_music >= threshold).sum())
    return {"music_called_no_music": missed / music.size, "non_music_called_music": passed / non_music.size,
            "errors": missed + passed}


def choose_threshold(det: dict, grid: Sequence[float] = THRESHOLD_GRID) -> tuple[float, dict]:
    """The music threshold with the fewest out-of-fold errors of :func:`detector_cv`, each clip-variant
    counting once (never the FMA/realworld files: those are the check); ties go to the middle of the tied
    thresholds. (A balanced error, each class weighing the same, was tried: its ~10 music clip-variants per
    non-music one push it to 0.9, calling 4 % of music no music to spare a few unseen noises.)"""
    rates = {t: detector_error_rates(det, t) for t in grid}
    best = min(r["errors"] for r in rates.values())
    tied = [t for t, r in rates.items() if r["errors"] == best]
    chosen = float(tied[len(tied) // 2])
    return chosen, {f"{t:g}": r for t, r in rates.items()}


def _share_below(p: np.ndarray, mask, threshold: float) -> dict:
    mask = np.asarray(mask)
    return {"clips": int(mask.sum()), "no_music": int((p[mask] < threshold).sum()),
            "highest_music_probability": float(p[mask].max()) if mask.any() else 0.0}
