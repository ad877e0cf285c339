"""training.live_eval's out-of-fold measurement: each artist half's streams are recorded with a model that never
trained on that half's artists (training.live_models), and recordings are kept per model file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from tagger import Tagger
from tagger.decode import decode_file
from tagger.ensemble import NO_MUSIC
from training.live_eval import (
    Clip,
    held_out_artists,
    held_out_sounds,
    label_clips,
    nonmusic_of_half,
    own_label,
    record,
    recording_folder,
    replay_tagger,
    split_artists,
    talk_voices,
)
from training.live_models import labelled_tracks, training_indices


def gtzan_clips() -> list[Clip]:
    """The shared gtzan/ clips as live_eval names them, labelled by labels.csv (no audio: the split needs none)."""
    with (DATA / "gtzan" / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    from training.live_eval import _gtzan_artists

    artists = _gtzan_artists(DATA)
    empty = np.zeros(0, np.float32)
    return [Clip(f"gtzan/{Path(r['path']).stem}", artists[f"gtzan/{Path(r['path']).stem}"], empty, empty,
                 r["label"], True) for r in rows]


def test_a_half_model_trains_on_no_clip_by_an_artist_of_its_half() -> None:
    clips = gtzan_clips()
    half = split_artists(clips)
    tracks = labelled_tracks(DATA)
    by_id = {t.track_id: t for t in tracks}
    held = held_out_artists(half)
    assert len(held) == 2 and not held[0] & held[1]
    for h in (0, 1):
        trained = {tracks[i].track_id for i in training_indices(tracks, held[h])}
        mine = [c for c in clips if half[c.artist] == h]
        others = [c for c in clips if half[c.artist] != h]
        assert mine and others
        # No clip of the half is trained on, nor any clip (gtzan or gtzan-excerpts) by one of its artists.
        assert not trained & {c.name.removeprefix("gtzan/") for c in mine}
        half_artists = {by_id[c.name.removeprefix("gtzan/")].group for c in mine}
        assert not [tid for tid in trained if by_id[tid].group in half_artists]
        # Every labelled clip by an artist of neither half's streams is trained on, the other half's clips too.
        assert {c.name.removeprefix("gtzan/") for c in others} <= trained
        assert len(trained) == sum(1 for t in tracks if t.group not in half_artists)
        # The excerpts share artists with the long clips: some excerpts are left out with the half.
        assert any(t.path.parent.parent.name == "gtzan-excerpts" and t.group in half_artists for t in tracks)


def test_a_half_model_trains_on_no_sound_its_half_plays() -> None:
    from training.negatives import ESPEAK_VOICES, SPEECH_TEXTS, all_non_music

    # Today a half's talk voices are also among its non-music clips; one clip fewer shifts the non-music ones.
    for negatives in (all_non_music(), all_non_music()[1:]):
        ids = {n.clip_id for n in negatives}
        held = held_out_sounds(negatives)
        for h in (0, 1):
            played = {c.clip_id for c in nonmusic_of_half(negatives, h)}
            # The talk streams' espeak speech: the training clip of the same language and voice.
            spoken = {f"espeak-{language}-{voice.lstrip('+') or 'default'}" for language, _, voice in talk_voices(h)}
            assert played and spoken and spoken <= ids
            assert played | spoken <= held[h]
            assert len(held[h]) < len(negatives)  # the other half's sounds are trained on
    # Every language and voice talks in exactly one half.
    voices = [(language, voice) for h in (0, 1) for language, _, voice in talk_voices(h)]
    assert len(voices) == len(set(voices)) == len(SPEECH_TEXTS) * len(ESPEAK_VOICES)


def test_recordings_are_kept_per_model_file(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the second tiny model is exported from PyTorch (the train extra)")
    from models import export_tiny

    other = export_tiny(tmp_path / "other.onnx", version="0.0.2")
    a, b = Tagger(tiny_model), Tagger(other)
    audio = np.random.default_rng(3).uniform(-0.3, 0.3, 6 * a.sample_rate).astype(np.float32)
    root = tmp_path / "recordings"
    assert recording_folder(root, a) != recording_folder(root, b)
    first = record(a, audio, "noise", cache=recording_folder(root, a))
    from_b = record(b, audio, "noise", cache=recording_folder(root, b))
    kept = sorted(recording_folder(root, a).iterdir())
    assert len(kept) == 1 and len(list(recording_folder(root, b).iterdir())) == 1
    stamp = kept[0].stat().st_mtime_ns
    again = record(a, audio, "noise", cache=recording_folder(root, a))
    assert kept[0].stat().st_mtime_ns == stamp  # read back, not recorded again
    np.testing.assert_array_equal(again.genre, first.genre)
    np.testing.assert_array_equal(again.end, first.end)
    assert first.genre.size and from_b.genre.shape == first.genre.shape


def test_halves_replayed_as_one_must_read_alike(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the second tiny model is exported from PyTorch (the train extra)")
    from models import export_tiny

    same = Tagger(export_tiny(tmp_path / "same.onnx", version="0.0.3"))
    assert replay_tagger([Tagger(tiny_model), same]).engine.path == Tagger(tiny_model).engine.path
    renamed = Tagger(export_tiny(tmp_path / "renamed.onnx", genres=("low", "mid", "top")))
    with pytest.raises(ValueError, match="differ in what a replay reads"):
        replay_tagger([Tagger(tiny_model), renamed])


def test_a_switch_target_is_the_label_of_the_stretch_played() -> None:
    """A realworld track's own label (a switch's target) is taken from its stretch, the audio its streams play,
    as a GTZAN clip's is; only the split's deal takes the track whole."""
    tagger = Tagger()
    music = decode_file(DATA / "gtzan" / "classical" / "classical.00000.flac", tagger.sample_rate)[
        : 15 * tagger.sample_rate]
    silence = np.zeros(20 * tagger.sample_rate, np.float32)
    heard = own_label(tagger, music)
    assert heard[0] != NO_MUSIC and own_label(tagger, silence) == (NO_MUSIC, True)
    track = Clip("realworld/some-package/track.ogg", "realworld:some-package", music, silence)
    label_clips([track], [tagger])
    assert (track.label, track.decided) == heard
    label_clips([track], [tagger], whole_tracks=True)
    assert (track.label, track.decided) == (NO_MUSIC, True)


def test_a_half_model_is_rebuilt_when_the_level_floor_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor changes what the live path feeds a half model, so a model cached under another floor must not
    be reused (its recordings would lack the shipped floor)."""
    import json

    import training.shipped as shipped
    from training.live_models import model_key

    repo = Path(__file__).resolve().parent.parent
    recipe = shipped.recipe_of_report(json.loads((repo / "models" / "msd-musicnn-gtzan.cv.json").read_text()))
    before = model_key(["blues.00000"], ["silence-digital"], recipe)
    assert model_key(["blues.00000"], ["silence-digital"], recipe) == before
    monkeypatch.setattr(shipped, "LEVEL_FLOOR_DBFS", shipped.LEVEL_FLOOR_DBFS - 3.0)
    assert model_key(["blues.00000"], ["silence-digital"], recipe) != before
