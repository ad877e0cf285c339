"""training.level_check: the same music played quieter, through the runtime, and the card's section of it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import encode

from training.level_check import main, summarise
from training.model_card import _level_section


def test_level_check_tags_quieter_copies_and_the_card_shows_them(excerpt, tmp_path: Path) -> None:
    audio, rate = excerpt
    (tmp_path / "data" / "realworld").mkdir(parents=True)
    track = encode(audio, rate, tmp_path / "data" / "realworld" / "machine_wars.mp3", "libmp3lame", "mp3")
    digest = hashlib.sha256(track.read_bytes()).hexdigest()
    out = tmp_path / "level.json"
    assert main(["--data", str(tmp_path / "data"), "--gains=0,-20,-40", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["files"]["realworld/machine_wars.mp3"]
    assert [r["gain_db"] for r in rows] == [0.0, -20.0, -40.0]
    # The copies are what they say: 20 dB apart (16-bit WAV keeps -40 dB music well above its floor).
    assert rows[0]["level_dbfs"] - rows[1]["level_dbfs"] == pytest.approx(20.0, abs=0.01)
    assert rows[0]["music"] is True
    # The shipped model's floor: the -40 dB copy (about -54 dBFS) went through the runtime raised to it, and
    # the same copies through the model without its floor were not.
    floor = doc["level_floor_dbfs"]
    assert rows[0]["raised_db"] == 0.0 and rows[2]["level_dbfs"] < floor
    assert rows[2]["raised_db"] == pytest.approx(min(floor - rows[2]["level_dbfs"], doc["level_max_gain_db"]), abs=0.01)
    assert [r["raised_db"] for r in doc["files_without_floor"]["realworld/machine_wars.mp3"]] == [0.0, 0.0, 0.0]
    assert len(doc["summary_without_floor"]) == 3
    first = doc["summary"][0]
    assert first["top_genre_changed"] == 0 and first["mean_abs_confidence_change"] == 0.0
    assert hashlib.sha256(track.read_bytes()).hexdigest() == digest  # the user's file is only read
    section = _level_section(out)
    assert "## Level: the same music played quieter" in section and "| -40 dB | 1 | 1 |" in section
    assert f"`level_floor_dbfs` {floor:g} dBFS" in section and "Live input is raised by a running floor" in section


def test_level_check_live_plays_the_copies_through_the_live_path(excerpt, tmp_path: Path) -> None:
    """--live: each copy through an eager stream; the quiet one is raised by the running floor, the card says so."""
    audio, rate = excerpt
    (tmp_path / "data" / "realworld").mkdir(parents=True)
    encode(audio, rate, tmp_path / "data" / "realworld" / "machine_wars.mp3", "libmp3lame", "mp3")
    out = tmp_path / "level-live.json"
    assert main(["--data", str(tmp_path / "data"), "--gains=0,-40", "--live", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    own, quiet = doc["files"]["realworld/machine_wars.mp3"]
    assert doc["path"] == "live" and own["raised_db"] == 0.0 and quiet["raised_db"] > 10.0
    assert [r["raised_db"] for r in doc["files_without_floor"]["realworld/machine_wars.mp3"]] == [0.0, 0.0]
    section = _level_section(tmp_path / "missing.json", live_path=out)
    assert section == ""  # no file level check: no section
    (tmp_path / "level.json").write_text(out.read_text().replace('"path": "live"', '"path": "file"'))
    section = _level_section(tmp_path / "level.json", live_path=out)
    assert "running floor" in section and "| -40 dB | 1 | " in section


def test_summarise_counts_changes_decided_ones_and_no_music() -> None:
    files = {"a": [{"genre": "rock", "confidence": 0.8, "decided": True, "music": True},
                   {"genre": "classical", "confidence": 0.7, "decided": True, "music": True}],
             "b": [{"genre": "jazz", "confidence": 0.5, "decided": False, "music": True},
                   {"genre": "classical", "confidence": 0.3, "decided": False, "music": False}]}
    quiet = summarise(files, (0.0, -20.0))[1]
    assert (quiet["top_genre_changed"], quiet["changed_and_decided"], quiet["no_music"]) == (2, 1, 1)
    assert quiet["mean_abs_confidence_change"] == pytest.approx(0.15)
    assert quiet["changes"] == {"rock → classical": 1, "jazz → classical": 1}


@pytest.mark.parametrize("gains", ["0,+6", "-10,0", "0,loud"])
def test_level_check_refuses_gains_it_cannot_honour(gains: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path), f"--gains={gains}", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert f"--gains: {gains!r}" in capsys.readouterr().err


def test_the_shared_wav_writer_rounds_and_clips(tmp_path: Path) -> None:
    import wave

    import numpy as np

    from training.datasets import write_pcm16_wav

    steps = np.array([1.6, -1.6, 0.4, 32766.6, 40000.0, -40000.0]) / 32767.0
    path = write_pcm16_wav(tmp_path / "x.wav", steps, 16000)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert pcm.tolist() == [2, -2, 0, 32767, 32767, -32767]  # rounded (truncation gives 1, -1), clipped
