"""The daemon says what it does: a line per tagged file, the scan summary, and a queue bar on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import termios
import time
from pathlib import Path

from daemon_helpers import query, start_daemon, stop_daemon, wait_until

from service.config import Config
from service.events import Status, TrackDone
from service.sinks import SinkContext
from service.sinks.console import ConsoleSection, ConsoleSink, describe_track
from tagger import Tagger


def test_a_line_per_file_says_the_genre_or_uncertain(tiny_model: Path, realworld: Path) -> None:
    song = realworld / "warzone2100-music" / "menu.opus"
    decided = Tagger(tiny_model, threshold=0.0).tag_file(song)
    doubtful = Tagger(tiny_model, threshold=1.0).tag_file(song)
    genre = decided.outputs["genre"]
    assert describe_track(TrackDone(1, str(song), decided)) == \
        f"tagged  {song}  → {genre.top} ({100 * genre.confidence:.0f} %)"
    line = describe_track(TrackDone(1, str(song), doubtful))
    assert line.startswith(f"tagged  {song}  → uncertain: {doubtful.outputs['genre'].candidates[0]} / "), line
    assert describe_track(TrackDone(2, "/x.mp3", error="truncated")) == ""  # the daemon's warning says it


def test_the_daemon_prints_each_file_and_the_scan_summary(tiny_model: Path, tmp_path: Path, realworld: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    for name in ("asc-music/frontiers.mp3", "warzone2100-music/menu.opus"):
        shutil.copy(realworld / name, music / Path(name).name)
    (music / "broken.mp3").write_text("not audio\n" * 50)
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--settle", "0.2", endpoint="")
    db = tmp_path / "state" / "library.db"
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status != 'pending'")[0][0] == 3, 120)
        assert wait_until(lambda: "broken.mp3" in daemon.log_path.read_text(), 30)
    finally:
        assert stop_daemon(daemon) == 0
    log = daemon.log_path.read_text()
    assert "scan done: 3 files, 3 queued, in " in log, log
    for name in ("frontiers.mp3", "menu.opus"):
        assert any(line.startswith(f"tagged  {music / name}  → ") and line.endswith("%)")
                   for line in log.splitlines()), log
    assert f"WARNING: {music / 'broken.mp3'}: " in log


def test_on_a_terminal_a_bar_counts_the_queue_down(tiny_model: Path, realworld: Path) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a 100-column terminal
    os.set_blocking(master, False)
    terminal = os.fdopen(slave, "w", buffering=1)
    lines = open(os.devnull, "w")  # noqa: SIM115  (the per-file lines; the bar is what this test reads)
    sink = ConsoleSink(ConsoleSection(), SinkContext(Config()), out=lines, err=terminal)
    assert sink.use_bar
    result = Tagger(tiny_model).tag_file(realworld / "warzone2100-music" / "menu.opus")

    def status(queued: int) -> Status:
        return Status(uptime_s=1.0, queue_depth=queued, tagged=0, errors=0, audio_seconds=0.0, realtime_factor=0.0,
                      provider="CPUExecutionProvider", model="tiny")

    sink.status(status(3))
    for i in range(3):
        sink.track(TrackDone(i, f"/m/{i}.opus", result))
        time.sleep(0.15)
    sink.status(status(0))
    time.sleep(0.2)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        shown += chunk
    sink.close(time.monotonic() + 1)
    terminal.close()
    lines.close()
    os.close(master)
    text = shown.decode(errors="replace")
    assert "queue:" in text and "3/3" in text, text
