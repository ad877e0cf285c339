"""``--live-file``: a file played in real time through the live path, looping or not; an unreachable
stream retried with backoff (its password never shown); a bad location is one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import encode

from service.events import GenreChanged, LiveUpdate
from service.live import ChangeSettings
from service.livefile import LiveFile
from tagger import Tagger


class Collect:
    def __init__(self) -> None:
        self.updates: list[LiveUpdate] = []
        self.changes: list[GenreChanged] = []

    def live(self, event: LiveUpdate) -> None:
        self.updates.append(event)

    def genre_changed(self, event: GenreChanged) -> None:
        self.changes.append(event)


@pytest.fixture(scope="module")
def short_clip(excerpt, tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio, rate = excerpt
    return encode(audio[: 3 * rate], rate, tmp_path_factory.mktemp("clip") / "three-seconds.flac", "flac", "flac")


def _play(tagger: Tagger, location: str, loop: bool, seconds: float) -> tuple[LiveFile, Collect, float]:
    sink = Collect()
    player = LiveFile(tagger, sink, location, "demo", loop=loop, changes=ChangeSettings(10.0, hysteresis=1))
    stop = threading.Event()
    started = time.monotonic()
    player.start(stop)
    player.finished.wait(seconds)
    elapsed = time.monotonic() - started
    stop.set()
    player.join(5)
    return player, sink, elapsed


def test_a_file_plays_in_real_time_and_ends_or_loops(tiny_model: Path, short_clip: Path) -> None:
    tagger = Tagger(tiny_model)
    player, sink, elapsed = _play(tagger, str(short_clip), loop=False, seconds=30)
    assert player.finished.is_set() and not player.status.running and player.status.error == ""
    assert 2.8 <= elapsed < 15  # paced to real time: 3 s of audio take about 3 s
    assert sink.updates and sink.changes and sink.updates[-1].stream_s <= 3.0  # an update per completed slice
    assert all(u.source == "demo" and u.latency_ms is not None for u in sink.updates)
    looped, sink, _ = _play(tagger, str(short_clip), loop=True, seconds=7.5)
    assert not looped.finished.wait(0) or looped.status.restarts == 0
    assert sink.updates[-1].stream_s > 5.0  # went round at least once more, as one continuous stream


def test_an_unreachable_stream_is_retried_with_backoff_and_its_password_hidden(tiny_model: Path, caplog) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    player, sink, _ = _play(Tagger(tiny_model), f"http://dj:s3cret@127.0.0.1:{port}/live.mp3", loop=False, seconds=2.5)
    assert not sink.updates and player.status.restarts >= 2
    assert "cannot open http://dj:***@127.0.0.1" in player.status.error and "s3cret" not in player.status.error
    assert player.status.device == f"http://dj:***@127.0.0.1:{port}/live.mp3"
    assert "s3cret" not in caplog.text and "retrying in 0.5 s" in caplog.text


def test_a_live_file_that_does_not_exist_is_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tagger.cli", "daemon", "--state-dir", str(tmp_path),
                           "--live-file", str(tmp_path / "nope.flac")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"genre-tagger: error: config live.file: '{tmp_path / 'nope.flac'}' is neither "
                                   f"an audio file nor a URL (set by --live-file {tmp_path / 'nope.flac'})")
