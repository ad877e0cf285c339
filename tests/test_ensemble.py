"""The ensemble: means per view and combined, thresholds, uncertainty, aliases, top-k, horizon."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.ensemble import Ensemble, apply_aliases, summarise
from tagger.model import OutputSpec

GENRE = OutputSpec("genre", "genre", "softmax", ("folk", "rock", "jazz"), "Genre")
TAGS = OutputSpec("tags", "tags", "sigmoid", ("instrumental", "vocal", "acoustic"), "Tags")


def _ensemble(horizon=None) -> Ensemble:
    return Ensemble([GENRE, TAGS], ["short", "long"], horizon)


def test_track_estimate_is_the_mean_of_view_means() -> None:
    e = _ensemble()
    e.add("short", 1.0, {"genre": [0.8, 0.1, 0.1], "tags": [0.9, 0.1, 0.5]})
    e.add("short", 2.0, {"genre": [0.6, 0.3, 0.1], "tags": [0.7, 0.3, 0.5]})
    e.add("long", 2.0, {"genre": [0.2, 0.7, 0.1], "tags": [0.5, 0.5, 0.5]})
    np.testing.assert_allclose(e.view_mean("short", "genre"), [0.7, 0.2, 0.1])
    np.testing.assert_allclose(e.view_mean("long", "genre"), [0.2, 0.7, 0.1])
    np.testing.assert_allclose(e.combined("genre"), [0.45, 0.45, 0.1])
    est = e.estimate(threshold=0.4, top_k=2)
    assert est["genre"].slices == {"short": 2, "long": 1}
    assert [s.label for s in est["genre"].per_view["short"]] == ["folk", "rock", "jazz"]


def test_threshold_decides_or_reports_uncertain_with_candidates() -> None:
    e = _ensemble()
    e.add("short", 1.0, {"genre": [0.5, 0.4, 0.1], "tags": [0.9, 0.2, 0.65]})
    est = e.estimate(threshold=0.6, top_k=2)
    genre = est["genre"]
    assert genre.uncertain and genre.decided == [] and genre.candidates == ["folk", "rock"]
    assert genre.top == "folk"
    assert genre.confidence == pytest.approx(0.5)
    assert genre.margin == pytest.approx(0.1)
    tags = est["tags"]  # multi-label: a song can be instrumental and acoustic at once
    assert not tags.uncertain and tags.decided == ["instrumental", "acoustic"] and tags.candidates == []
    decided = e.estimate(threshold=0.45, top_k=2)["genre"]
    assert decided.decided == ["folk"] and not decided.uncertain


def test_top_k_limits_candidates_and_exported_scores() -> None:
    e = _ensemble()
    e.add("long", 3.0, {"genre": [0.3, 0.35, 0.35], "tags": [0.1, 0.1, 0.1]})
    est = e.estimate(top_k=1)
    assert est["genre"].candidates == ["rock"]  # stable order on ties
    assert list(est["genre"].as_dict(top_k=2)["scores"]) == ["rock", "jazz"]
    assert est["tags"].uncertain and len(est["tags"].candidates) == 1


def test_aliases_rename_and_merge() -> None:
    labels, probs = apply_aliases(["hiphop", "rap", "rock"], np.array([0.2, 0.3, 0.5]), False,
                                  {"hiphop": "Hip-Hop", "rap": "Hip-Hop"})
    assert labels == ["Hip-Hop", "rock"]
    np.testing.assert_allclose(probs, [0.5, 0.5])  # exclusive classes add up
    merge = {"hiphop": "Hip-Hop", "rap": "Hip-Hop"}
    labels, probs = apply_aliases(["hiphop", "rap"], np.array([0.2, 0.3]), True, merge)
    np.testing.assert_allclose(probs, [0.3])  # independent tags take the max
    est = summarise(GENRE, np.array([0.5, 0.3, 0.2]), {}, {}, 0.6, 3, {"folk": "Folk", "jazz": "rock"})
    assert [(s.label, round(s.score, 3)) for s in est.scores] == [("Folk", 0.5), ("rock", 0.5)]


def test_horizon_keeps_only_recent_slices() -> None:
    e = _ensemble(horizon=10.0)
    for t in range(1, 31):
        genre = [1.0, 0.0, 0.0] if t <= 20 else [0.0, 1.0, 0.0]
        e.add("short", float(t), {"genre": genre, "tags": [0, 0, 0]})
    assert e.count("short") == 11  # ends 20..30
    np.testing.assert_allclose(e.view_mean("short", "genre"), [1 / 11, 10 / 11, 0.0])
    assert e.estimate()["genre"].top == "rock"


def test_empty_ensemble_has_no_estimate_and_bad_arguments_fail() -> None:
    assert _ensemble().estimate() == {}
    with pytest.raises(ValueError):
        Ensemble([GENRE], ["v"], horizon_seconds=0)
    with pytest.raises(KeyError):
        _ensemble().add("nope", 1.0, {"genre": [1, 0, 0], "tags": [0, 0, 0]})
    with pytest.raises(ValueError):
        summarise(GENRE, np.array([1.0, 0, 0]), {}, {}, threshold=1.5)
