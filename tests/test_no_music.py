"""'No music' is an answer: the manifest's music detector, TrackResult, the chart, --json and live.

A tiny exported model whose detector calls quiet audio "no music" stands in for the default model here;
tests/test_default_model.py checks the shipped model itself on silence, noise, speech and music.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from service.live import ChangeSettings, LiveTagger
from tagger import Tagger
from tagger.ensemble import NO_MUSIC
from tagger.errors import ModelError
from tagger.model import ModelManifest

RATE = 16000


@pytest.fixture(scope="module")
def music_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models import export_tiny_music

    return export_tiny_music(tmp_path_factory.mktemp("music") / "tiny-music.onnx")


def write_wav(path: Path, samples: np.ndarray) -> Path:
    from conftest import encode

    return encode(samples, RATE, path, "pcm_s16le", "wav")


def loud(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, int(seconds * RATE)).astype(np.float32)


def test_track_result_says_no_music_for_silence_and_music_otherwise(music_model: Path, tmp_path: Path) -> None:
    tagger = Tagger(music_model)
    silent = tagger.tag_file(write_wav(tmp_path / "silence.wav", np.zeros(6 * RATE, np.float32)))
    assert silent.music is False and silent.music_probability is not None and silent.music_probability < 0.5
    assert "music" not in silent.outputs  # the detector is not a genre output
    sound = tagger.tag_file(write_wav(tmp_path / "noise.wav", loud(6)))
    assert sound.music is True and sound.music_probability > 0.5
    d = silent.as_dict()
    assert d["music"] is False and d["music_probability"] == pytest.approx(silent.music_probability, abs=1e-6)


def test_a_short_silence_inside_a_file_does_not_flip_it(music_model: Path, tmp_path: Path) -> None:
    audio = np.concatenate([loud(12, 1), np.zeros(3 * RATE, np.float32), loud(12, 2)])
    result = Tagger(music_model).tag_file(write_wav(tmp_path / "gap.wav", audio))
    assert result.music is True


def test_a_model_without_detector_reports_music(tiny_model: Path, tmp_path: Path) -> None:
    result = Tagger(tiny_model).tag_file(write_wav(tmp_path / "silence.wav", np.zeros(6 * RATE, np.float32)))
    assert result.music is True and result.music_probability is None
    assert result.as_dict()["music"] is True


def test_tag_chart_and_json_say_no_music(music_model: Path, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "silence.wav", np.zeros(6 * RATE, np.float32))
    chart = subprocess.run([sys.executable, "-m", "tagger.cli", "tag", "--model", str(music_model), str(path)],
                           capture_output=True, text=True, check=True).stdout
    assert f"→ {NO_MUSIC}" in chart and "Genre" not in chart
    out = subprocess.run([sys.executable, "-m", "tagger.cli", "tag", "--json", "--model", str(music_model), str(path)],
                         capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert doc["music"] is False and 0 <= doc["music_probability"] < 0.5


class Collect:
    """A live sink that keeps every event's message, validated against the message schema."""

    def __init__(self) -> None:
        from service.publish import load_schema

        self.validator = jsonschema.Draft202012Validator(load_schema())
        self.messages: list[tuple[str, dict]] = []

    def _keep(self, event) -> None:
        topic, message = event.as_message()
        self.validator.validate({**message, "schema": "genre-tagger.messages/1", "seq": len(self.messages)})
        self.messages.append((topic, message))

    live = genre_changed = _keep


def test_live_turns_to_no_music_and_back(music_model: Path) -> None:
    sink = Collect()
    live = LiveTagger(Tagger(music_model), "test", RATE, ChangeSettings(4.0, hysteresis=2), sink=sink)
    for part in (loud(12, 3), np.zeros(12 * RATE, np.float32), loud(12, 4)):
        for start in range(0, part.size, RATE // 10):
            live.feed(part[start:start + RATE // 10])
    updates = [m for t, m in sink.messages if t == "live.test"]
    changes = [m for t, m in sink.messages if t == "change.test"]
    assert any(m["music"] is False and m["top"] == NO_MUSIC for m in updates)
    assert all(m["top"] != NO_MUSIC for m in updates if m["music"])
    silent = [m for m in updates if not m["music"]]
    assert all(m["confidence"] == pytest.approx(1 - m["music_probability"], abs=1e-5) for m in silent)
    # A genre, then "no music" for the silence, then a genre again.
    current = [m["current"] for m in changes]
    assert NO_MUSIC in current and current[0] != NO_MUSIC and current[-1] != NO_MUSIC
    assert all(m["music"] is (m["current"] != NO_MUSIC) for m in changes)


def test_manifest_rejects_a_bad_music_detector(music_model: Path) -> None:
    from tagger.model import read_manifest

    doc = json.loads(read_manifest(music_model).to_json())
    assert doc["music"] == {"output": "music", "threshold": 0.5}
    for bad in ({"output": "genre"}, {"output": "nothing"}, {"output": "music", "threshold": 1.5}, {"threshold": 0.5}):
        with pytest.raises(ModelError, match="music"):
            ModelManifest.from_dict({**doc, "music": bad})
    manifest = ModelManifest.from_dict(doc)
    assert [o.name for o in manifest.genre_outputs] == ["genre", "tags"]
