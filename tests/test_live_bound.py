"""training.live_bound: the floor under the switch delay and the rule families, on hand-made window sequences whose
answers follow from their construction (the shipped model gives the views, labels and threshold; no audio)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.live import ChangeSettings
from tagger import Tagger
from training.live_bound import LastWindows, bound, floors_of, switch_floors
from training.live_eval import Recording, Streams, measure
from training.model_card import _live_bound, _live_section

SWITCH_S = 10.0
LATENCY_S = 1.25  # a window is reported this long after its end (the live path's is 1.17 s, in 0.25 s blocks)


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    return Tagger()


def probs(tagger: Tagger, **p: float) -> np.ndarray:
    """A probability vector over the model's genres: ``p`` as given, the rest shared evenly."""
    labels = tagger.manifest.genre_outputs[0].labels
    out = np.full(len(labels), (1.0 - sum(p.values())) / (len(labels) - len(p)))
    for label, value in p.items():
        out[labels.index(label)] = value
    return out


def recording(tagger: Tagger, short: dict[float, np.ndarray], long: dict[float, np.ndarray], seconds: float = 30.0,
              default: np.ndarray | None = None) -> Recording:
    """A switch stream (blues, then metal at ``SWITCH_S``) whose windows end where the model's views end them (the
    2.56 s view every 1.28 s, the 5.12 s view every 2.56 s); a window ending at a key of ``short`` / ``long`` has
    those probabilities, any other ``default`` (blues first)."""
    default = probs(tagger, blues=0.7) if default is None else default
    rows = []
    for v, view in enumerate(tagger.views):
        window, hop = tagger.manifest.view_seconds(view)
        given = short if window < 3 else long
        end = window
        while end + LATENCY_S <= seconds:
            rows.append((end + LATENCY_S, v, end, given.get(round(end, 2), default)))
            end = round(end + hop, 2)
    rows.sort(key=lambda r: (r[0], r[1]))
    return Recording("blues → metal", np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.int8),
                     np.array([r[2] for r in rows]), np.array([r[3] for r in rows], dtype=np.float32),
                     np.ones(len(rows), dtype=np.float32), seconds, switch_s=SWITCH_S, first="blues", second="metal")


def constructed(tagger: Tagger) -> Recording:
    """After the switch at 10 s, the clean 2.56 s windows (those ending from 12.56 s) rank jazz first until the one
    ending at 15.36 s ranks metal first undecided (0.55); from 16.64 s metal is decided (0.8). The straddling one
    ending at 11.52 s ranks metal first (0.5). The clean 5.12 s windows rank jazz first until the one ending at
    20.48 s, which ranks metal first (0.9)."""
    jazz = probs(tagger, jazz=0.5, metal=0.3)
    short = {11.52: probs(tagger, metal=0.5, blues=0.3), 12.8: jazz, 14.08: jazz,
             15.36: probs(tagger, metal=0.55, jazz=0.3)}
    short |= {round(12.8 + 1.28 * j, 2): probs(tagger, metal=0.8, jazz=0.05) for j in range(3, 12)}
    long = {15.36: probs(tagger, jazz=0.6, metal=0.2), 17.92: probs(tagger, jazz=0.6, metal=0.2),
            20.48: probs(tagger, metal=0.9), 23.04: probs(tagger, metal=0.9)}
    return recording(tagger, short, long)


def test_the_floor_is_the_first_window_after_the_switch_that_ranks_the_new_genre_first(tagger: Tagger) -> None:
    floors = floors_of(constructed(tagger), tagger)
    after = {end: pytest.approx(end + LATENCY_S - SWITCH_S) for end in (11.52, 15.36, 16.64, 20.48)}
    assert floors == {
        "clean_shortest": after[15.36],  # metal first, undecided
        "clean_longest": after[20.48],
        "clean_either": after[15.36],
        "clean_either_decided": after[16.64],  # 0.55 is under the 0.6 threshold
        "any_window": after[11.52],  # the straddling window counts here only
        "any_window_decided": after[16.64],
        # Summed log-probabilities of the clean 2.56 s windows: jazz 2 ln 0.5 + ln 0.3 = -2.59 against metal
        # 2 ln 0.3 + ln 0.55 = -3.01 at 15.36 s; at 16.64 s jazz -2.59 + ln 0.05 = -5.59, metal -3.01 + ln 0.8 = -3.23.
        "summed_shortest": after[16.64],
        # The 5.12 s window ending at 15.36 s (jazz 0.6, metal 0.2) adds its ln ratio: metal first at 16.64 s too.
        "summed_all": after[16.64]}
    assert tagger.threshold == pytest.approx(0.6)


def test_a_switch_whose_genre_no_window_ranks_first_is_never_reached_and_listed(tagger: Tagger) -> None:
    never = recording(tagger, {}, {}, seconds=22.0)
    late = constructed(tagger)
    out = switch_floors({"held_out": [late, never]}, tagger)
    rest = 22.0 - SWITCH_S
    assert floors_of(never, tagger) == dict.fromkeys(out["floors"])
    late_s = 15.36 + LATENCY_S - SWITCH_S
    assert out["held_out"]["clean_either"] == {"median_s": pytest.approx((late_s + rest) / 2, abs=1e-3),
                                               "p90_s": pytest.approx(late_s + 0.9 * (rest - late_s), abs=1e-3),
                                               "worst_s": rest, "over_8s": 1, "never": 1}
    listed = out["over_8s"]["held_out"]
    assert [r["stream"] for r in listed] == [never.name] and listed[0]["clean_either"] is None
    # What the windows ending after the switch and reported within 8 s of it rank first instead: blues, every one.
    near = int(np.sum((never.end > SWITCH_S) & (never.t - SWITCH_S <= 8.0)))
    assert near and listed[0]["windows_rank_first"] == {"blues": near}
    assert listed[0]["own_label_highest_probability"] == pytest.approx(0.3 / 9, abs=1e-3)


def test_the_last_k_windows_rule_is_measured_by_live_evals_own_metrics(tagger: Tagger) -> None:
    rec = constructed(tagger)
    # Two 2.56 s windows in a row ranking one genre first: blues (2.56, 3.84 s), jazz (12.8, 14.08 s), metal (15.36,
    # 16.64 s); decided ones (0.6 and over): blues, then metal (16.64, 17.92 s), jazz at 0.5 never.
    assert LastWindows(2).events(rec, tagger) == [(pytest.approx(3.84 + LATENCY_S), "blues", False),
                                                  (pytest.approx(14.08 + LATENCY_S), "jazz", False),
                                                  (pytest.approx(16.64 + LATENCY_S), "metal", False)]
    assert LastWindows(2, decided=True).events(rec, tagger) == [(pytest.approx(3.84 + LATENCY_S), "blues", False),
                                                                (pytest.approx(17.92 + LATENCY_S), "metal", False)]
    r = measure(Streams(switches=[rec]), tagger, LastWindows(2))
    assert r["delays_s"] == [pytest.approx(16.64 + LATENCY_S - SWITCH_S, abs=1e-3)]
    assert r["missed"] == 0 and r["wrong_genre_changes"] == 1  # jazz, neither clip's genre
    # One window ranks another genre first (the straddling one, metal) on a single-genre stream: k = 1 changes
    # twice after its first claim (to metal and back), k = 2 never.
    steady = recording(tagger, {11.52: probs(tagger, metal=0.5, blues=0.3)}, {})
    steady.switch_s = None
    steady.name = "gtzan/blues.00000"
    assert measure(Streams(steady=[steady]), tagger, LastWindows(1))["clips_spurious_changes"] == 2
    assert measure(Streams(steady=[steady]), tagger, LastWindows(2))["clips_spurious_changes"] == 0


def test_the_card_says_what_the_bound_found(tagger: Tagger, tmp_path: Path) -> None:
    late = constructed(tagger)
    never = recording(tagger, {}, {}, seconds=22.0, default=probs(tagger, jazz=0.5, blues=0.3))
    never.name = "gtzan/blues.00001 → gtzan/metal.00001"
    steady = recording(tagger, {11.52: probs(tagger, metal=0.5, blues=0.3)}, {})
    steady.switch_s, steady.name = None, "gtzan/blues.00000"
    halves = [Streams(switches=[late], steady=[steady]), Streams(switches=[late, never], steady=[steady])]
    doc = {"bound": bound(halves, tagger, ChangeSettings(), grid=[ChangeSettings()])}
    text = _live_bound(doc)
    flat = " ".join(text.split())
    assert ("12.00 s at worst; 1 of 2 switches are over 8 s (gtzan/metal.00001 as the second clip, own genre metal; "
            "in the 8 s after the switch its windows rank jazz first most often)") in flat
    # The first deciding window (0.8 from 16.64 s; the 11.52 s one is 0.5): 7.89 s and never.
    assert f"median {(16.64 + LATENCY_S - SWITCH_S + 12.0) / 2:.2f} s, worst 12.00 s, 1 switches over 8 s" in flat
    assert "worst ≤ 8 s is out of reach whatever the rule" in flat
    assert "Over 21 rules" in flat
    # k = 2 (metal from 16.64 s on, jazz at 14.08 s) is the quickest with no change on the single-genre stream.
    quiet = doc["bound"]["frontier"]["held_out"]["picks"]["no_clip_change_quickest"]
    assert quiet["rule"] == {"family": "last_windows", "windows": 2, "decided": False}
    median = quiet["held_out"]["median_delay_s"]
    assert f"at best 0 on the GTZAN/FMA clips and pairs, 0 on realworld (median {median:.2f}" in flat
    assert _live_bound({}) == ""
    # In the card's Live section, after the tables.
    live = json.loads(Path("models/msd-musicnn-gtzan.live.json").read_text()) | doc
    (tmp_path / "m.live.json").write_text(json.dumps(live))
    section = _live_section(tmp_path / "m.live.json")
    assert section.index("| detector |") < section.index(text.strip()[:60])
