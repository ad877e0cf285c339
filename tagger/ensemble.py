"""Ensembles of slice probabilities: running means per view and combined, and their summaries.

As in the research, a track's estimate is the mean of its slice probabilities. Each view keeps its
own mean; the combined estimate is the mean of the view means, so each view (time scale) counts the
same whatever its slice count. With ``horizon_seconds`` only the slices that ended within that
horizon of the newest one count (a live display that follows a DJ set).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tagger.model import OutputSpec

DEFAULT_THRESHOLD = 0.6
DEFAULT_TOP_K = 5
# What every consumer shows instead of a genre when the model's music detector says the audio is not
# music (silence, noise, speech, applause...): an answer, never a genre label.
NO_MUSIC = "no music"


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class OutputEstimate:
    """The summary of one model output.

    Attributes:
        output: the output's name; ``title`` its display title.
        multi_label: True for sigmoid outputs (several labels may apply).
        scores: every label with its probability, best first (after aliases).
        top: the best label; ``confidence`` its probability; ``margin`` its lead over the second.
        decided: labels at or above the threshold (one at most for single-label outputs).
        uncertain: no label reached the threshold; ``candidates`` then lists the top-k labels.
        per_view: each view's own best-first scores.
        slices: slices that contributed, per view.
    """

    output: str
    title: str
    multi_label: bool
    scores: list[LabelScore]
    top: str
    confidence: float
    margin: float
    decided: list[str]
    uncertain: bool
    candidates: list[str]
    threshold: float
    per_view: dict[str, list[LabelScore]] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)

    def top_k(self, k: int) -> list[LabelScore]:
        return self.scores[:k]

    def as_dict(self, top_k: int | None = None) -> dict:
        scores = self.scores if top_k is None else self.scores[:top_k]
        return {
            "title": self.title,
            "multi_label": self.multi_label,
            "top": self.top,
            "confidence": round(self.confidence, 6),
            "margin": round(self.margin, 6),
            "decided": self.decided,
            "uncertain": self.uncertain,
            "candidates": self.candidates,
            "threshold": self.threshold,
            "scores": {s.label: round(s.score, 6) for s in scores},
            "views": {v: {s.label: round(s.score, 6) for s in (sc if top_k is None else sc[:top_k])}
                      for v, sc in self.per_view.items()},
            "slices": self.slices,
        }


def apply_aliases(labels: Sequence[str], probs: np.ndarray, multi_label: bool,
                  aliases: Mapping[str, str] | None) -> tuple[list[str], np.ndarray]:
    """Rename labels to the user's names, merging labels that map to one name.

    Merged single-label (softmax) probabilities add up (they are exclusive events); merged
    multi-label (sigmoid) probabilities take the maximum.
    """
    if not aliases:
        return list(labels), probs
    names: list[str] = []
    index: dict[str, int] = {}
    for label in labels:
        name = aliases.get(label, label)
        if name not in index:
            index[name] = len(names)
            names.append(name)
    merged = np.zeros(len(names), dtype=np.float64)
    for label, p in zip(labels, probs, strict=True):
        i = index[aliases.get(label, label)]
        merged[i] = max(merged[i], p) if multi_label else merged[i] + p
    return names, merged


def summarise(spec: OutputSpec, combined: np.ndarray, per_view: Mapping[str, np.ndarray],
              slices: Mapping[str, int], threshold: float = DEFAULT_THRESHOLD, top_k: int = DEFAULT_TOP_K,
              aliases: Mapping[str, str] | None = None) -> OutputEstimate:
    """Turn mean probabilities into an :class:`OutputEstimate` (threshold, margin, candidates)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not within 0..1")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    labels, probs = apply_aliases(spec.labels, np.asarray(combined, dtype=np.float64), spec.multi_label, aliases)
    order = np.argsort(-probs, kind="stable")
    scores = [LabelScore(labels[i], float(probs[i])) for i in order]
    top = scores[0]
    margin = top.score - (scores[1].score if len(scores) > 1 else 0.0)
    decided = [s.label for s in scores if s.score >= threshold]
    if not spec.multi_label:
        decided = decided[:1]
    uncertain = not decided
    candidates = [s.label for s in scores[:top_k]] if uncertain else []
    views = {}
    for view, p in per_view.items():
        vl, vp = apply_aliases(spec.labels, np.asarray(p, dtype=np.float64), spec.multi_label, aliases)
        vo = np.argsort(-vp, kind="stable")
        views[view] = [LabelScore(vl[i], float(vp[i])) for i in vo]
    return OutputEstimate(spec.name, spec.title or spec.name, spec.multi_label, scores, top.label, top.score,
                          margin, decided, uncertain, candidates, threshold, views, dict(slices))


class Ensemble:
    """Running mean of slice probabilities, per view and per output.

    Args:
        outputs: the model's outputs.
        views: the view names, in display order.
        horizon_seconds: None for the whole stream (a track's mean); otherwise only slices whose end
            lies within this many seconds of the newest slice's end count.
    """

    def __init__(self, outputs: Sequence[OutputSpec], views: Sequence[str],
                 horizon_seconds: float | None = None) -> None:
        if horizon_seconds is not None and horizon_seconds <= 0:
            raise ValueError("horizon_seconds must be positive")
        self.outputs = list(outputs)
        self.views = list(views)
        self.horizon_seconds = horizon_seconds
        self._sums = {v: {o.name: np.zeros(len(o.labels)) for o in self.outputs} for v in self.views}
        self._counts = dict.fromkeys(self.views, 0)
        self._recent: dict[str, deque[tuple[float, dict[str, np.ndarray]]]] = {v: deque() for v in self.views}
        self._latest_end = 0.0

    def add(self, view: str, end_s: float, probabilities: Mapping[str, np.ndarray]) -> None:
        """Add one slice's probabilities (each output's vector) ending at ``end_s`` seconds."""
        if view not in self._sums:
            raise KeyError(f"unknown view {view!r}")
        probs = {o.name: np.asarray(probabilities[o.name], dtype=np.float64) for o in self.outputs}
        self._latest_end = max(self._latest_end, end_s)
        if self.horizon_seconds is None:
            for name, p in probs.items():
                self._sums[view][name] += p
            self._counts[view] += 1
            return
        self._recent[view].append((end_s, probs))
        self._expire()

    def _expire(self) -> None:
        assert self.horizon_seconds is not None
        oldest = self._latest_end - self.horizon_seconds
        for recent in self._recent.values():
            # Keep at least the newest slice of each view, so a long hop still yields an estimate.
            while len(recent) > 1 and recent[0][0] < oldest:
                recent.popleft()

    def count(self, view: str) -> int:
        if self.horizon_seconds is None:
            return self._counts[view]
        return len(self._recent[view])

    def view_mean(self, view: str, output: str) -> np.ndarray | None:
        n = self.count(view)
        if n == 0:
            return None
        if self.horizon_seconds is None:
            return self._sums[view][output] / n
        return np.mean([p[output] for _, p in self._recent[view]], axis=0)

    def combined(self, output: str) -> np.ndarray | None:
        means = [m for v in self.views if (m := self.view_mean(v, output)) is not None]
        return np.mean(means, axis=0) if means else None

    @property
    def empty(self) -> bool:
        return all(self.count(v) == 0 for v in self.views)

    def estimate(self, threshold: float = DEFAULT_THRESHOLD, top_k: int = DEFAULT_TOP_K,
                 aliases: Mapping[str, str] | None = None) -> dict[str, OutputEstimate]:
        """Summaries of every output; empty while no slice has been added."""
        if self.empty:
            return {}
        result = {}
        for out in self.outputs:
            combined = self.combined(out.name)
            assert combined is not None
            per_view = {v: m for v in self.views if (m := self.view_mean(v, out.name)) is not None}
            counts = {v: self.count(v) for v in self.views}
            result[out.name] = summarise(out, combined, per_view, counts, threshold, top_k, aliases)
        return result
