"""The Python API: tag a file, feed a stream block by block, and the same answers both ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagger import ConfigError, DecodeError, Tagger
from tagger.decode import decode_file


def test_tag_file_covers_the_whole_track_with_both_views(tiny_model: Path, realworld: Path) -> None:
    tagger = Tagger(tiny_model)
    result = tagger.tag_file(realworld / "warzone2100-music" / "menu.opus")
    genre = result.outputs["genre"]
    assert abs(result.duration_s - 180.0) < 0.1
    # 2.56 s windows every 1.28 s over 180 s: 139 + an end-aligned last one; 5.12 s every 2.56 s: 69 + 1.
    assert genre.slices == {"2.56s": 140, "5.12s": 70}
    assert sum(s.score for s in genre.scores) == pytest.approx(1.0, abs=1e-5)
    assert result.provider == "CPUExecutionProvider"
    assert set(result.outputs) == {"genre", "tags"}


def test_streaming_equals_file_tagging(tiny_model: Path, realworld: Path) -> None:
    tagger = Tagger(tiny_model)
    path = realworld / "asc-music" / "machine_wars.mp3"
    whole = tagger.tag_file(path, keep_slices=True)
    audio = decode_file(path, tagger.sample_rate)
    stream = tagger.stream(keep_slices=True)
    rng = np.random.default_rng(5)
    pos = 0
    while pos < audio.size:
        n = int(rng.integers(1, 20000))
        stream.feed(audio[pos:pos + n])
        pos += n
    final = stream.finish()
    for name, est in whole.outputs.items():
        for a, b in zip(est.scores, final[name].scores, strict=True):
            assert a.label == b.label
            assert a.score == pytest.approx(b.score, abs=1e-5)
    assert len(stream.slices) == len(whole.slices)


def test_live_stream_follows_the_music_with_a_horizon(tiny_model: Path) -> None:
    tagger = Tagger(tiny_model)
    rate = tagger.sample_rate
    t = np.arange(20 * rate) / rate
    low = (0.5 * np.sin(2 * np.pi * 90 * t)).astype(np.float32)
    high = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    stream = tagger.stream(horizon_seconds=6.0)
    tops = []
    for signal in (low, high):
        for start in range(0, signal.size, rate // 4):
            if stream.feed(signal[start:start + rate // 4]):
                tops.append(stream.estimate()["genre"].top)
    assert tops[len(tops) // 3] == "low"
    assert tops[-1] == "high"


def test_hop_fraction_changes_slice_counts_and_bad_settings_fail(tiny_model: Path, realworld: Path) -> None:
    tagger = Tagger(tiny_model, hop_fraction=1.0)
    result = tagger.tag_file(realworld / "warzone2100-music" / "menu.opus")
    assert result.outputs["genre"].slices == {"2.56s": 71, "5.12s": 36}
    with pytest.raises(ConfigError):
        Tagger(tiny_model, hop_fraction=0.0)
    with pytest.raises(ConfigError):
        Tagger(tiny_model, threshold=2.0)
    with pytest.raises(DecodeError):
        tagger.tag_file(realworld / "nope.mp3")


def test_the_runtime_never_imports_torch(tiny_model: Path, realworld: Path) -> None:
    code = (
        "import sys, tagger, tagger.cli\n"
        f"tagger.Tagger({str(tiny_model)!r}).tag_file({str(realworld / 'warzone2100-music' / 'menu.opus')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
