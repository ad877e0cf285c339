"""What any decision rule could do with the live windows: a floor under the switch delay, and a frontier of rules.

:mod:`training.live_eval` records each artist half's streams through the model trained without that half and
replays them through the daemon's :class:`service.live.ChangeDetector`. This module asks of the same recorded
windows what no tuning of a rule can change:

- **The floor** (:func:`switch_floors`): per switch stream, the earliest time after the switch (seconds, from
  the switch to the update that reports the window, as live_eval's delays) at which

  - a window *wholly after the switch* (clean) ranks the second clip's own label first: of the shortest view
    (2.56 s), of the longest (5.12 s), of either; and of either view with that label decided too (its
    probability at or above the model's threshold: the only genres a rule may announce);
  - any window ending after the switch (straddling ones too) ranks it first: the loosest;
  - the sum of log-probabilities over the clean windows since the switch ranks it first (shortest view, all
    views): what an ideal evidence rule that knew where the switch was would see first.

  A rule that only announces a genre the windows rank first cannot announce the second clip's genre sooner.
  If a switch's floor is over 8 s, "worst ≤ 8 s" cannot be met by any such rule with these windows.
- **The frontier** (:func:`frontier`): simple rule families swept finely, each measured by live_eval's own
  :func:`training.live_eval.measure` on the switch and single-genre streams: (a) :class:`LastWindows`, a
  change to g once the last k windows of the shortest view all rank g first (k = 1…10; with and without
  "decided"), and (b) the daemon's evidence rule over a grid wider than live_eval's tuning
  (:func:`evidence_grid`). Rows are chosen on the very streams they are reported on: an optimistic bound,
  never a tuning.

Limits: own labels are each half model's own decision over the clip's stretch, not ground truth; the floor
covers rules that announce a genre some window ranks first (a rule could announce a genre no window ranks
first, but never for a reason the windows give).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from service.live import ChangeSettings
from tagger.pipeline import Tagger
from training.live_eval import Recording, Streams, measure

SWITCH_LIMIT_S = 8.0  # the worst switch delay
TARGET_MEDIAN_S = 5.0  # the median switch delay

# The floors per switch: (name, what it is).
FLOORS = (
    ("clean_shortest", "a clean window of the shortest view ranks it first"),
    ("clean_longest", "a clean window of the longest view ranks it first"),
    ("clean_either", "a clean window of either view ranks it first"),
    ("clean_either_decided", "a clean window of either view ranks it first and decides it (p ≥ threshold)"),
    ("any_window", "any window ending after the switch (straddling ones too) ranks it first"),
    ("any_window_decided", "any window ending after the switch ranks it first and decides it (p ≥ threshold)"),
    ("summed_shortest", "the sum of log-probabilities over the clean shortest-view windows ranks it first"),
    ("summed_all", "the sum of log-probabilities over the clean windows of both views ranks it first"),
)


def _view_seconds(tagger: Tagger) -> np.ndarray:
    """Each view's window length (s), in the order of ``Tagger.views`` (a recording's ``view`` indices)."""
    return np.array([tagger.manifest.view_seconds(v)[0] for v in tagger.views])


def _shortest(tagger: Tagger) -> int:
    """The index (in ``Tagger.views``) of the shortest view."""
    return int(np.argmin([v.window_frames for v in tagger.views]))


def clean(rec: Recording, tagger: Tagger) -> np.ndarray:
    """Per slice of a switch stream, whether its window lies wholly after the switch (starts at or after it)."""
    assert rec.switch_s is not None
    start = rec.end - _view_seconds(tagger)[rec.view.astype(np.int64)]
    return start >= rec.switch_s - 1e-6


def first_ranked_delay(rec: Recording, label: int, slices: np.ndarray, threshold: float | None = None
                       ) -> float | None:
    """Seconds from the switch to the first update reporting a slice among ``slices`` (a mask) whose top genre
    is ``label`` (its index), at or above ``threshold`` when given; None if none does."""
    assert rec.switch_s is not None
    hit = slices & (np.argmax(rec.genre, axis=1) == label)
    if threshold is not None:
        hit &= rec.genre[:, label] >= threshold
    idx = np.flatnonzero(hit)
    return float(rec.t[idx[0]] - rec.switch_s) if idx.size else None


def summed_delay(rec: Recording, label: int, slices: np.ndarray) -> float | None:
    """Seconds from the switch to the first update after which the log-probabilities summed over the slices
    among ``slices`` (a mask) reported so far rank ``label`` first (ties are not first); None if never."""
    assert rec.switch_s is not None
    total = np.zeros(rec.genre.shape[1])
    for t, idx in rec.updates():
        mine = idx[slices[idx]]
        if not mine.size:
            continue
        total += np.log(np.maximum(rec.genre[mine].astype(np.float64), 1e-12)).sum(axis=0)
        others = np.delete(total, label)
        if total[label] > others.max():
            return t - rec.switch_s
    return None


def floors_of(rec: Recording, tagger: Tagger) -> dict[str, float | None]:
    """Every floor of :data:`FLOORS` for one switch stream (seconds after the switch; None: never within it)."""
    assert rec.switch_s is not None
    labels = tagger.manifest.genre_outputs[0].labels
    b = labels.index(rec.second)
    ok = clean(rec, tagger)
    short = rec.view == _shortest(tagger)
    after = rec.end > rec.switch_s + 1e-6
    return {"clean_shortest": first_ranked_delay(rec, b, ok & short),
            "clean_longest": first_ranked_delay(rec, b, ok & (rec.view != _shortest(tagger))),
            "clean_either": first_ranked_delay(rec, b, ok),
            "clean_either_decided": first_ranked_delay(rec, b, ok, tagger.threshold),
            "any_window": first_ranked_delay(rec, b, after),
            "any_window_decided": first_ranked_delay(rec, b, after, tagger.threshold),
            "summed_shortest": summed_delay(rec, b, ok & short),
            "summed_all": summed_delay(rec, b, ok)}


def _distribution(delays: Sequence[float | None], rest: Sequence[float]) -> dict:
    """Median, 90th percentile and worst (s) of ``delays`` (a None counts as the rest of its stream, ``rest``,
    as live_eval counts a miss), how many are over 8 s and how many never came."""
    d = np.array([x if x is not None else r for x, r in zip(delays, rest, strict=True)]) if delays else np.zeros(1)
    return {"median_s": round(float(np.median(d)), 3), "p90_s": round(float(np.percentile(d, 90)), 3),
            "worst_s": round(float(d.max()), 3), "over_8s": int((d > SWITCH_LIMIT_S).sum()),
            "never": sum(1 for x in delays if x is None)}


def _within_limit(rec: Recording, tagger: Tagger) -> dict:
    """What the windows ending after the switch and reported within 8 s of it say: how many rank each genre first
    (most first), and the second clip's own label's highest probability among them."""
    assert rec.switch_s is not None
    labels = tagger.manifest.genre_outputs[0].labels
    near = (rec.end > rec.switch_s + 1e-6) & (rec.t - rec.switch_s <= SWITCH_LIMIT_S)
    counts = np.bincount(np.argmax(rec.genre[near], axis=1), minlength=len(labels))
    own = rec.genre[near, labels.index(rec.second)]
    return {"windows_rank_first": {labels[i]: int(counts[i]) for i in np.argsort(-counts, kind="stable")
                                   if counts[i]},
            "own_label_highest_probability": round(float(own.max()), 3) if own.size else None}


LATE_FLOORS = ("clean_either", "any_window_decided")  # a switch over 8 s on either is listed


def switch_floors(parts: dict[str, Sequence[Recording]], tagger: Tagger) -> dict:
    """The floors' distributions per part (e.g. "held_out", "tuning", "all": their switch streams), and every
    switch (of the parts but "all") whose floor is over 8 s or never comes on one of :data:`LATE_FLOORS`: its
    stream, labels, floors, and what the windows after the switch reported within 8 s rank first instead."""
    out: dict = {"floors": dict(FLOORS), "limit_s": SWITCH_LIMIT_S}
    late: dict[str, list[dict]] = {}
    for part, switches in parts.items():
        per = [floors_of(rec, tagger) for rec in switches]
        rest = [rec.seconds - (rec.switch_s or 0.0) for rec in switches]
        out[part] = {"pairs": len(switches),
                     **{name: _distribution([p[name] for p in per], rest) for name, _ in FLOORS}}
        if part == "all":
            continue
        late[part] = [{"stream": rec.name, "first": rec.first, "second": rec.second,
                       "second_stretch_s": round(rec.seconds - (rec.switch_s or 0.0), 2),
                       **{name: None if p[name] is None else round(p[name], 3) for name, _ in FLOORS},
                       **_within_limit(rec, tagger)}
                      for rec, p in zip(switches, per, strict=True)
                      if any(p[name] is None or p[name] > SWITCH_LIMIT_S for name in LATE_FLOORS)]
    out["over_8s"] = late
    return out


@dataclass(frozen=True)
class LastWindows:
    """Rule family (a): announce genre g once the last ``windows`` windows of the shortest view all rank g first
    (with ``decided``, each at or above the model's threshold; an undecided window breaks the run), and g is
    not the current genre. It never announces "no music" and needs no music detector.

    Attributes:
        windows: how many consecutive shortest-view windows must agree (k ≥ 1).
        decided: whether each of them must also decide its top genre (probability ≥ the threshold).
    """

    windows: int = 3
    decided: bool = False

    def events(self, rec: Recording, tagger: Tagger) -> list[tuple[float, str, bool]]:
        """The announcements (stream time in seconds, genre, False) over ``rec``."""
        labels = tagger.manifest.genre_outputs[0].labels
        short = _shortest(tagger)
        events: list[tuple[float, str, bool]] = []
        current, run_label, run = None, -1, 0
        for t, idx in rec.updates():
            for i in idx:
                if rec.view[i] != short:
                    continue
                top = int(np.argmax(rec.genre[i]))
                if self.decided and rec.genre[i, top] < tagger.threshold:
                    run_label, run = -1, 0
                    continue
                run, run_label = (run + 1, top) if top == run_label else (1, top)
            if run >= self.windows and labels[run_label] != current:
                current = labels[run_label]
                events.append((t, current, False))
        return events


EVIDENCE_BOUNDS = (2.0, 3.0, 4.0, 6.0, 8.0)  # evidence_nats swept
EVIDENCE_CAPS = (2.0, 3.0, 4.0, 6.0)  # cap_nats swept
EVIDENCE_DRIFTS = (0.5, 1.0, 2.0, 3.0)  # drift_nats swept
EVIDENCE_HYSTERESIS = (2, 3, 4, 5, 6)  # hysteresis swept


def evidence_grid(defaults: ChangeSettings) -> list[ChangeSettings]:
    """The daemon's evidence rule over a grid wider than live_eval's tuning (:func:`training.live_eval.candidates`
    tries bounds 3–6 nats, caps 4 and 6, drifts 0.5 and 1, hysteresis 1–3): :data:`EVIDENCE_BOUNDS` × caps ×
    drifts × hysteresis (the other settings, the music evidence among them, as ``defaults``; a cap at or under the
    drift, which no window could pass, left out)."""
    return [replace(defaults, evidence_nats=bound, cap_nats=cap, drift_nats=drift, hysteresis=k)
            for bound, cap, drift, k in itertools.product(EVIDENCE_BOUNDS, EVIDENCE_CAPS, EVIDENCE_DRIFTS,
                                                          EVIDENCE_HYSTERESIS) if cap > drift]


KEEP = ("median_delay_s", "p90_delay_s", "worst_delay_s", "within_8s", "missed", "wrong_genre_changes")


def _figures(halves: Sequence[Streams], tagger: Tagger, rule: ChangeSettings | LastWindows) -> dict[str, dict]:
    """The rule's figures per half ("tuning", "held_out") and over both ("all"): live_eval's :func:`measure` on
    each half's switch and single-genre streams (the delays of both halves pooled for "all")."""
    out: dict[str, dict] = {}
    delays: list[float] = []
    for part, streams in zip(("tuning", "held_out"), halves, strict=True):
        r = measure(Streams(switches=streams.switches, steady=streams.steady), tagger, rule)
        delays += r["delays_s"]
        out[part] = {k: r[k] for k in KEEP} | {
            "over_8s": int(np.sum(np.array(r["delays_s"]) > SWITCH_LIMIT_S)),
            "clips_spurious_changes": r.get("clips_spurious_changes", 0) + r.get("pairs_spurious_changes", 0),
            "realworld_spurious_changes": r.get("realworld_spurious_changes", 0)}
    d = np.array(delays)
    both = {k: out["tuning"][k] + out["held_out"][k] for k in ("over_8s", "missed", "wrong_genre_changes",
                                                              "clips_spurious_changes", "realworld_spurious_changes")}
    out["all"] = {"median_delay_s": float(np.median(d)), "p90_delay_s": float(np.percentile(d, 90)),
                  "worst_delay_s": float(d.max()), "within_8s": round(float(np.mean(d <= SWITCH_LIMIT_S)), 4), **both}
    for r in out.values():
        for k in ("median_delay_s", "p90_delay_s", "worst_delay_s"):
            r[k] = round(r[k], 3)
    return out


def _describe(rule: ChangeSettings | LastWindows) -> dict:
    """A rule's family and parameters, for the JSON."""
    if isinstance(rule, LastWindows):
        return {"family": "last_windows", **asdict(rule)}
    s = asdict(rule)
    return {"family": "evidence", **{k: s[k] for k in ("evidence_nats", "cap_nats", "drift_nats", "hysteresis",
                                                       "horizon_seconds", "evidence_views")}}


def _spurious(r: dict) -> int:
    return r["clips_spurious_changes"] + r["realworld_spurious_changes"]


def pareto(rows: Sequence[dict], part: str) -> list[dict]:
    """The rows of ``part`` no other row beats on both the worst switch delay and the spurious changes on
    single-genre streams (clips and pairs plus realworld), by worst delay."""
    keep = []
    for r in rows:
        a = r[part]
        if not any(o[part]["worst_delay_s"] <= a["worst_delay_s"] and _spurious(o[part]) <= _spurious(a)
                   and (o[part]["worst_delay_s"], _spurious(o[part])) != (a["worst_delay_s"], _spurious(a))
                   for o in rows):
            keep.append(r)
    unique = {(r[part]["worst_delay_s"], _spurious(r[part])): r for r in reversed(keep)}
    return sorted(unique.values(), key=lambda r: r[part]["worst_delay_s"])


def _fewest(rows: Sequence[dict], part: str, worst: float | None = None, median: float | None = None,
            over_8s: int | None = None) -> dict | None:
    """The row with the fewest spurious changes (clips and pairs plus realworld, then clips and pairs, then the
    worst delay) among those within ``worst`` and ``median`` (s) and with at most ``over_8s`` switches over 8 s
    (None: no limit); None if no row is."""
    ok = [r for r in rows if (worst is None or r[part]["worst_delay_s"] <= worst)
          and (median is None or r[part]["median_delay_s"] <= median)
          and (over_8s is None or r[part]["over_8s"] <= over_8s)]
    if not ok:
        return None
    return min(ok, key=lambda r: (_spurious(r[part]), r[part]["clips_spurious_changes"], r[part]["worst_delay_s"]))


def _quickest_quiet(rows: Sequence[dict], part: str, realworld: bool) -> dict | None:
    """The row with the smallest worst delay (then median) among those with no spurious change on the GTZAN/FMA
    clips and pairs (and with ``realworld``, none on the realworld tracks either); None if no row has none."""
    ok = [r for r in rows if r[part]["clips_spurious_changes"] == 0
          and (not realworld or r[part]["realworld_spurious_changes"] == 0)]
    return min(ok, key=lambda r: (r[part]["worst_delay_s"], r[part]["median_delay_s"])) if ok else None


def frontier(halves: Sequence[Streams], tagger: Tagger, defaults: ChangeSettings, floor_over_8s: dict[str, int],
             last_windows: Sequence[int] = tuple(range(1, 11)), grid: Sequence[ChangeSettings] | None = None) -> dict:
    """Every rule of both families measured per half and over both. Per part: the Pareto frontier (worst delay
    against spurious changes); the fewest spurious changes of any rule within worst ≤ 8 s, within median ≤ 5 s,
    within both, and with no more switches over 8 s than the floor has (``floor_over_8s``, per part); the
    smallest worst delay of a rule with no spurious change. Kept: every last-windows row, the evidence rule's
    rows on a frontier or picked, and the shipped defaults' row."""
    rules: list[ChangeSettings | LastWindows] = [LastWindows(k, decided) for decided in (False, True)
                                                 for k in last_windows]
    rules += list(evidence_grid(defaults) if grid is None else grid)
    rows = [{"rule": _describe(rule), **_figures(halves, tagger, rule)} for rule in rules]
    out: dict = {"rules": len(rows), "evidence_grid": {"evidence_nats": EVIDENCE_BOUNDS, "cap_nats": EVIDENCE_CAPS,
                                                       "drift_nats": EVIDENCE_DRIFTS,
                                                       "hysteresis": EVIDENCE_HYSTERESIS},
                 "defaults": {"rule": _describe(defaults), **_figures(halves, tagger, defaults)}}
    kept: list[dict] = []
    for part in ("held_out", "tuning", "all"):
        picks = {"worst_le_8s": _fewest(rows, part, worst=SWITCH_LIMIT_S),
                 "median_le_5s": _fewest(rows, part, median=TARGET_MEDIAN_S),
                 "worst_le_8s_and_median_le_5s": _fewest(rows, part, worst=SWITCH_LIMIT_S, median=TARGET_MEDIAN_S),
                 "over_8s_as_floor": _fewest(rows, part, over_8s=floor_over_8s[part]),
                 "over_8s_as_floor_and_median_le_5s": _fewest(rows, part, median=TARGET_MEDIAN_S,
                                                              over_8s=floor_over_8s[part]),
                 "no_clip_change_quickest": _quickest_quiet(rows, part, realworld=False),
                 "no_change_quickest": _quickest_quiet(rows, part, realworld=True)}
        front = pareto(rows, part)
        out[part] = {"pareto": front, "picks": picks,
                     "best_worst_delay_s": min(r[part]["worst_delay_s"] for r in rows),
                     "fewest_spurious": min(_spurious(r[part]) for r in rows)}
        kept += front + [r for r in picks.values() if r is not None]
    out["rows"] = [r for r in rows if r["rule"]["family"] == "last_windows" or any(r is k for k in kept)]
    return out


def bound(halves: Sequence[Streams], tagger: Tagger, defaults: ChangeSettings,
          grid: Sequence[ChangeSettings] | None = None) -> dict:
    """The floor and the frontier over ``halves`` (tuning, held-out), as recorded by live_eval (the evidence rule
    over ``grid``, by default :func:`evidence_grid`)."""
    floors = switch_floors({"held_out": halves[1].switches, "tuning": halves[0].switches,
                            "all": halves[0].switches + halves[1].switches}, tagger)
    over = {part: floors[part]["any_window"]["over_8s"] for part in ("held_out", "tuning", "all")}
    return {"floor": floors, "frontier": frontier(halves, tagger, defaults, over, grid=grid)}


def _rule_text(rule: dict) -> str:
    """A rule in a few words."""
    if rule["family"] == "last_windows":
        return f"last {rule['windows']} windows{' decided' if rule['decided'] else ''}"
    return (f"evidence {rule['evidence_nats']:g}/cap {rule['cap_nats']:g}/drift {rule['drift_nats']:g}/"
            f"hysteresis {rule['hysteresis']}")


def row_text(row: dict | None, part: str) -> str:
    """A frontier row's figures on ``part`` in one line ("none" for no row)."""
    if row is None:
        return "none"
    r = row[part]
    return (f"{_rule_text(row['rule'])}: median {r['median_delay_s']:.2f} s, p90 {r['p90_delay_s']:.2f} s, worst "
            f"{r['worst_delay_s']:.2f} s, over 8 s {r['over_8s']}, missed {r['missed']}, spurious "
            f"{r['clips_spurious_changes']} (clips and pairs) + {r['realworld_spurious_changes']} (realworld)")


def summary_lines(doc: dict) -> list[str]:
    """:func:`bound`'s result in a few lines (held-out first), for the command's output."""
    lines = []
    for part in ("held_out", "tuning", "all"):
        f = doc["floor"][part]
        lines.append(f"{part}: floor (clean window of either view) median {f['clean_either']['median_s']:.2f} s, "
                     f"worst {f['clean_either']['worst_s']:.2f} s, over 8 s {f['clean_either']['over_8s']}; "
                     f"any window {f['any_window']['worst_s']:.2f} s; deciding it "
                     f"{f['any_window_decided']['worst_s']:.2f} s, over 8 s {f['any_window_decided']['over_8s']}; "
                     f"summed {f['summed_all']['worst_s']:.2f} s")
        front = doc["frontier"][part]
        for name, row in front["picks"].items():
            lines.append(f"  {name}: {row_text(row, part)}")
    return lines
