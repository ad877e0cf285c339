"""Coverage excerpts (:mod:`tagger.coverage`): parsing, seeking instead of decoding the whole file, the
same samples as a full decode at each excerpt, windows inside excerpts, short tracks in full, the
isolated decoder, the CLI and the library."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagger.coverage import FULL, Coverage, DecodeStats, Segment, decode_coverage, track_duration
from tagger.decode import decode_file
from tagger.errors import ConfigError
from tagger.isolated import IsolatedDecoder
from tagger.pipeline import Tagger

RATE = 16000


def test_parse_and_spans() -> None:
    assert Coverage.parse("full") is FULL and Coverage.parse(None) is FULL
    three = Coverage.parse("excerpts:3x30")
    assert (three.excerpts, three.seconds, str(three)) == (3, 30.0, "excerpts:3x30")
    assert str(Coverage.parse(" Excerpts:2×12.5 ")) == "excerpts:2x12.5"
    for bad in ("excerpts", "excerpts:3", "excerpts:0x30", "excerpts:3x1", "half", "excerpts:3x30s"):
        with pytest.raises(ConfigError, match="coverage"):
            Coverage.parse(bad)
    spans = three.spans(300.0)
    assert spans == [(35.0, 30.0), (135.0, 30.0), (235.0, 30.0)]  # centred at 1/6, 3/6, 5/6 of the track
    assert three.spans(134.9) is None and three.spans(135.0) is not None  # under 1.5 × 90 s: in full
    assert three.spans(None) is None and FULL.spans(300.0) is None


@pytest.mark.parametrize("name", ["asc-music/frontiers.mp3", "singularity-music/Nebula.ogg",
                                  "warzone2100-music/track1.opus"])
def test_excerpts_are_read_by_seeking_and_hold_the_full_decode_s_samples(realworld: Path, name: str) -> None:
    path = realworld / name
    stats = DecodeStats()
    segments: list[Segment] = []
    parts: list[list[np.ndarray]] = []
    for item in decode_coverage(path, RATE, coverage="excerpts:3x10", stats=stats):
        if isinstance(item, Segment):
            segments.append(item)
            parts.append([])
        else:
            parts[-1].append(item)
    duration = track_duration(path)
    assert [s.start_s for s in segments] == [start for start, _ in Coverage.parse("excerpts:3x10").spans(duration)]
    # Seeking: FFmpeg decoded about the excerpts' 30 s (plus the packets before each start), not the track.
    assert 30 <= stats.decoded_s < 40 < duration / 4
    full = decode_file(path, RATE)
    for segment, blocks in zip(segments, parts, strict=True):
        excerpt = np.concatenate(blocks)
        assert excerpt.size == 10 * RATE
        start = round(segment.start_s * RATE)
        # The same audio at the same position: the best alignment with the full decode is within one sample
        # (a resampler restarted at a codec frame's start can sit a fraction of a sample apart; one 20-26 ms
        # codec frame off would be hundreds of samples), and the two agree closely once aligned.
        lags = range(-800, 801)
        errors = [np.abs(excerpt[RATE:] - full[start + RATE + lag:start + lag + excerpt.size]).mean() for lag in lags]
        assert abs(lags[int(np.argmin(errors))]) <= 1
        reference = full[start:start + excerpt.size]
        assert np.corrcoef(excerpt[RATE:], reference[RATE:])[0, 1] > 0.95


def test_tagging_excerpts_keeps_every_window_inside_one_excerpt(realworld: Path) -> None:
    tagger = Tagger()  # the default model's fast path: features restart at each excerpt
    path = realworld / "warzone2100-music" / "track9.opus"
    result = tagger.tag_file(path, keep_slices=True, coverage="excerpts:2x12")
    spans = Coverage.parse("excerpts:2x12").spans(track_duration(path))
    assert result.coverage == "excerpts:2x12" and result.analysed_s == pytest.approx(24.0, abs=0.01)
    assert result.duration_s == pytest.approx(track_duration(path), abs=0.1)
    assert result.slices and result.as_dict()["coverage"] == "excerpts:2x12"
    for s in result.slices:  # within an excerpt, give or take the front end's last frame (centred STFT)
        assert any(start - 1e-6 <= s.start_s and s.end_s <= start + length + 0.05 for start, length in spans), s
    assert {round(s.start_s, 3) for s in result.slices} >= {round(start, 3) for start, _ in spans}
    # In a separate decoding process (the daemon's), the very same result.
    with IsolatedDecoder() as decoder:
        isolated = tagger.tag_file(path, decode=decoder.blocks, coverage="excerpts:2x12")
    assert isolated.outputs["genre"].scores == result.outputs["genre"].scores
    assert isolated.coverage == result.coverage and isolated.analysed_s == result.analysed_s


def test_a_track_too_short_for_its_excerpts_is_tagged_in_full(tiny_model: Path, realworld: Path) -> None:
    tagger = Tagger(tiny_model, coverage="excerpts:3x60")  # menu.opus is 180 s < 1.5 × 180 s
    path = realworld / "warzone2100-music" / "menu.opus"
    short = tagger.tag_file(path)
    assert short.coverage == "full" and short.analysed_s == short.duration_s
    assert short.outputs["genre"].scores == Tagger(tiny_model).tag_file(path).outputs["genre"].scores


def test_cli_coverage_option_and_its_errors(tiny_model: Path, realworld: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tagger.cli", "tag", "--model", str(tiny_model), *args],
                              capture_output=True, text=True, timeout=600)

    done = run("--json", "--coverage", "excerpts:3x20", str(realworld / "asc-music"))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3 and all(r["coverage"] == "excerpts:3x20" and r["analysed_s"] == 60.0 for r in records)
    bad = run("--coverage", "excerpts:3", str(realworld))
    assert bad.returncode == 2 and "excerpts:3" in bad.stderr and "Traceback" not in bad.stderr


def test_the_library_records_the_coverage_and_migrates_old_files(tiny_model: Path, realworld: Path,
                                                                 tmp_path: Path) -> None:
    from service.library import SCHEMA_VERSION, Library

    db = tmp_path / "library.db"
    library = Library(db)
    path = realworld / "asc-music" / "machine_wars.mp3"
    library.discover(path)
    row = library.next_pending()
    assert library.record_result(row.id, Tagger(tiny_model, coverage="excerpts:2x10").tag_file(path),
                                 row.fingerprint)
    track = library.track(str(path))
    assert track["coverage"] == "excerpts:2x10" and track["analysed_s"] == pytest.approx(20.0)
    library.close()
    # A v5 file (before coverage): the columns are added once, old rows keep NULL (they were all full).
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE tracks DROP COLUMN coverage")
    conn.execute("ALTER TABLE tracks DROP COLUMN analysed_s")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    for _ in range(2):
        reopened = Library(db)
        assert reopened.track(str(path))["coverage"] is None
        assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        reopened.close()
