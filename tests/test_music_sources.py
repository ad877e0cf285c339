"""The music detector's extra positives (Debian soundtracks) and how its threshold is chosen.

No package is downloaded here: the build (`make default-model`) fetches them; these tests check the rules
that keep the evaluation honest (the realworld fixtures' packages are never sources, excerpts are capped,
packages are held out whole, the threshold comes from the out-of-fold errors only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluation import choose_threshold, detector_error_rates, group_folds
from training.music_sources import (
    EXCLUDED_PACKAGES,
    SEGMENT_SECONDS,
    SOURCES,
    TRACKS_PER_PACKAGE,
    MusicSource,
    excerpt_offsets,
    fetch,
    tracks,
)


def test_no_source_is_a_package_of_the_realworld_fixtures(realworld: Path) -> None:
    fixtures = {p.name for p in realworld.iterdir() if p.is_dir()}  # warzone2100-music, asc-music, ...
    assert fixtures <= EXCLUDED_PACKAGES
    for source in SOURCES:
        assert source.package not in EXCLUDED_PACKAGES
        assert not any(name.split("-")[0] in source.package for name in fixtures), source.package
        assert source.licence and source.style
    with pytest.raises(ValueError, match="never trained on"):
        fetch(MusicSource("warzone2100-music", "usr/share/games/warzone2100/music", "GPL-2+", "x"))


@pytest.mark.parametrize(("duration", "offsets"), [(12.0, [0.0]), (SEGMENT_SECONDS + 10, [8.0]),
                                                   (300.0, [8.0, 140.0])])
def test_excerpts_are_capped_per_track(duration: float, offsets: list[float]) -> None:
    assert excerpt_offsets(duration) == offsets


def test_tracks_per_package_are_capped_and_spread(tmp_path: Path) -> None:
    source = MusicSource("some-game-data", "usr/share/games/some/music", "GPL-2+", "test")
    folder = tmp_path / source.package / source.folder
    folder.mkdir(parents=True)
    for i in range(40):
        (folder / f"track{i:02d}.ogg").write_bytes(b"")
    (folder / "readme.txt").write_text("not audio")
    chosen = tracks(source, tmp_path)
    assert len(chosen) == TRACKS_PER_PACKAGE
    assert chosen[0].name == "track00.ogg" and chosen[-1].name == "track39.ogg"
    assert len(set(chosen)) == len(chosen)


def test_group_folds_hold_each_package_out_whole() -> None:
    groups = [f"pkg{i % 7}" for i in range(70)]
    folds = group_folds(groups, 5, seed=3)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups, strict=True) if gg == g}) == 1
    assert set(folds) == set(range(5))


def test_the_threshold_makes_the_fewest_out_of_fold_errors() -> None:
    rng = np.random.default_rng(0)
    det = {"music_probabilities": {"clean": rng.uniform(0.3, 1.0, 200).tolist()},
           "packaged_probabilities": {"clean": rng.uniform(0.3, 1.0, 100).tolist()},
           "non_music_probabilities": {"clean": rng.uniform(0.0, 0.5, 100).tolist()}}
    threshold, rates = choose_threshold(det)
    assert 0.3 <= threshold <= 0.5
    best = rates[f"{threshold:g}"]
    assert best == detector_error_rates(det, threshold)
    assert best["errors"] == min(r["errors"] for r in rates.values())
    music = np.array(det["music_probabilities"]["clean"] + det["packaged_probabilities"]["clean"])
    assert best["errors"] == (music < threshold).sum() + (np.array(det["non_music_probabilities"]["clean"])
                                                          >= threshold).sum()
