"""Nothing is lost: a genre write into a file that the daemon owes survives a kill -9 (it is stored with the
result, in the same transaction) and is made at the next start from the stored result, without tagging the
file again; a write that cannot be made fails for good, visibly, once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from daemon_helpers import INTERRUPTIBLE, Subscriber, free_endpoint, query, start_daemon, stop_daemon, wait_until

from service.config import Config
from service.events import TrackDone
from service.library import SCHEMA_VERSION, Library
from service.sinks import SinkContext, SinkHub
from service.sinks.tags import TagsSection, TagsSink
from tagger.filetags import audio_digest, read_state
from tagger.pipeline import Tagger

# The tiny test model's genres need a low threshold; the file tags may not go below the tagging one.
THRESHOLD = "0.3"


def _status(endpoint: str, predicate, timeout: float = 60.0) -> dict:
    """The first status message of the daemon at ``endpoint`` that satisfies ``predicate``."""
    sub = Subscriber(endpoint, ("status",))
    try:
        found = sub.wait_for(lambda msgs: any(predicate(m) for _, m in msgs), timeout)
        statuses = sub.of_type("status")
        assert found, statuses[-1:] or "no status message"
        return next(m for m in statuses if predicate(m))
    finally:
        sub.close()


def test_a_tag_write_the_daemon_was_killed_before_is_made_at_its_next_start(realworld: Path, tiny_model: Path,
                                                                             tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    # A long real recording (its MPEG frames 30 times over: 87 MB, 2 h 25 min) takes the writer seconds to
    # copy and verify, while tagging excerpts of it takes a fraction of one: the daemon has recorded the file
    # as tagged and is writing its tags when it is killed.
    song = music / "long.mp3"
    song.write_bytes((realworld / "asc-music" / "machine_wars.mp3").read_bytes() * 30)
    digest, mtime = audio_digest(song), song.stat().st_mtime_ns
    state = tmp_path / "state"
    db = state / "library.db"
    env = {"GENRE_TAGGER_TAGS_WRITE": "true", "GENRE_TAGGER_TAGS_THRESHOLD": THRESHOLD,
           "GENRE_TAGGER_TAGGING_THRESHOLD": THRESHOLD, "GENRE_TAGGER_TAGGING_COVERAGE": "excerpts:2x10"}
    args = ("--folder", str(music), "--settle", "0.2")

    daemon = start_daemon(state, tiny_model, *args, endpoint="", env=env)
    try:
        def writing() -> bool:  # the writer's temporary copy beside the file: the write has begun
            return any(p.name.endswith(".genre-tagger-tmp") for p in music.iterdir())

        wait_until(lambda: writing() or daemon.poll() is not None, 120, interval=0.01)
        assert writing(), (state.parent / "state.log").read_text()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert query(db, "SELECT status, tag_count FROM tracks") == [("tagged", 1)]
    assert read_state(song).genres == () and song.stat().st_mtime_ns == mtime  # the write was not made
    assert query(db, "SELECT count(*) FROM tag_writes") == [(0,)]

    # File tagging turned off meanwhile: the owed write is kept, counted, and not made.
    endpoint = free_endpoint()
    off = {**env, "GENRE_TAGGER_TAGS_WRITE": "false"}
    daemon = start_daemon(state, tiny_model, *args, endpoint=endpoint, env=off)
    try:
        assert _status(endpoint, lambda m: "tag_writes_owed" in m)["tag_writes_owed"] == 1
        time.sleep(1.0)
    finally:
        assert stop_daemon(daemon) == 0
    assert read_state(song).genres == () and song.stat().st_mtime_ns == mtime
    assert "1 genre writes into files are owed from before, and kept: file tagging is off" in \
        (state.parent / "state.log").read_text()

    # On again: the write is made from the stored result, the file is not tagged again.
    endpoint = free_endpoint()
    daemon = start_daemon(state, tiny_model, *args, endpoint=endpoint, env=env)
    try:
        assert wait_until(lambda: read_state(song).genres != (), 120), (state.parent / "state.log").read_text()
        assert _status(endpoint, lambda m: m.get("tag_writes_owed") == 0)["tag_writes_owed"] == 0
    finally:
        assert stop_daemon(daemon) == 0
    written = read_state(song)
    genre, = query(db, "SELECT label FROM genres WHERE output = 'genre' AND decided = 1")[0]
    assert written.genres[0] == genre and written.provenance == "tiny-test 0.0.1"
    assert audio_digest(song) == digest  # only the tags changed
    assert query(db, "SELECT status, tag_count FROM tracks") == [("tagged", 1)]  # not tagged again
    assert query(db, "SELECT count(*) FROM tag_writes") == [(1,)]
    assert query(db, "SELECT count(*) FROM tags_owed") == [(0,)]
    assert [p.name for p in music.iterdir()] == ["long.mp3"]  # the killed writer's copy is gone


def _owed_library(db: Path, files: list[Path], model: Path) -> list[int]:
    """Tag ``files`` for real and store each result with its write owed, as the daemon does; track ids."""
    library = Library(db)
    tagger = Tagger(model, threshold=float(THRESHOLD))
    ids = []
    try:
        for path in files:
            library.discover(path)
            row = library.get(path)
            assert library.record_result(row.id, tagger.tag_file(path), row.fingerprint, owe_tags=True)
            ids.append(row.id)
    finally:
        library.close()
    return ids


def _sink(db: Path, labels: dict, queue: int = 1000) -> tuple[TagsSink, SinkHub]:
    config = Config()
    config.daemon.library = str(db)
    config.tagging.threshold = float(THRESHOLD)
    sink = TagsSink(TagsSection(write=True, queue=queue), SinkContext(config, labels, "tiny-test 0.0.1"))
    hub = SinkHub([sink])
    hub.start()
    return sink, hub


def _owed(db: Path) -> tuple[int, int]:
    """(owed, failed for good) tag writes in the library."""
    return query(db, "SELECT count(*) - count(failed_at), count(failed_at) FROM tags_owed")[0]


def _beat(hub: SinkHub) -> None:
    from service.events import Status

    hub.status(Status(0.0, 0, 0, 0, 0.0, 0.0, "cpu", "tiny-test 0.0.1"))


def test_an_owed_write_that_cannot_be_made_fails_for_good_visibly_and_is_not_tried_again(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    good, stuck = music / "good.flac", music / "read-only.ogg"
    shutil.copy(format_files["flac"], good)
    shutil.copy(format_files["ogg"], stuck)
    stuck.chmod(0o444)
    db = tmp_path / "library.db"
    ids = _owed_library(db, [good, stuck], tiny_model)
    labels = {o.name: tuple(o.labels) for o in Tagger(tiny_model).manifest.outputs}

    # A start after a crash: no event for either file; the first heartbeat makes what is owed.
    sink, hub = _sink(db, labels)
    try:
        _beat(hub)
        assert wait_until(lambda: _owed(db) == (0, 1), 60)
    finally:
        hub.close(time.monotonic() + 4.0)
    assert read_state(good).genres != ()
    assert read_state(stuck).genres == ()
    row = query(db, "SELECT track_id, attempts, error FROM tags_owed WHERE failed_at IS NOT NULL")
    assert row == [(ids[1], 1, "read-only file, tags not written")]

    # Visible: `library stats` counts it, `library show` says why.
    stats = subprocess.run([sys.executable, "-m", "tagger.cli", "library", "--library", str(db), "stats"],
                           capture_output=True, text=True, timeout=120)
    assert "1 genre writes into files failed for good" in stats.stdout, stats.stdout + stats.stderr
    shown = subprocess.run([sys.executable, "-m", "tagger.cli", "library", "--library", str(db), "show", str(stuck)],
                           capture_output=True, text=True, timeout=120)
    assert json.loads(shown.stdout)["tags_owed"]["error"] == "read-only file, tags not written"

    # The next start does not try it again (a new result, or retry_errors, would).
    sink, hub = _sink(db, labels)
    try:
        _beat(hub)
        assert wait_until(lambda: not sink._catch_up, 30)
    finally:
        hub.close(time.monotonic() + 4.0)
    assert query(db, "SELECT attempts FROM tags_owed") == [(1,)]
    library = Library(db)
    assert library.retry_failed_tag_writes() == 1 and library.owed_counts() == (1, 0)
    library.close()


def test_a_write_recorded_but_not_renamed_when_the_daemon_died_is_still_made(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """Killed after the write's hook recorded it (the row then has the rewritten copy's size, mtime and
    fingerprint) but before the rename: the file is still the one tagged, so its write is still owed."""
    music = tmp_path / "music"
    music.mkdir()
    song = music / "song.flac"
    shutil.copy(format_files["flac"], song)
    db = tmp_path / "library.db"
    track_id, = _owed_library(db, [song], tiny_model)
    library = Library(db)
    run = library.start_tag_run("daemon")  # what write_state's before_replace hook records, for a copy never renamed
    library.record_tag_write(run, track_id, song, {"genres": []}, {"genres": ["mid"]}, "if-empty", {}, "tiny-test",
                             "0.0.1", 1234, 1.0, "f" * 32)
    library.close()
    labels = {o.name: tuple(o.labels) for o in Tagger(tiny_model).manifest.outputs}
    sink, hub = _sink(db, labels)
    try:
        _beat(hub)
        assert wait_until(lambda: _owed(db) == (0, 0), 60)
    finally:
        hub.close(time.monotonic() + 4.0)
    assert read_state(song).genres != () and sink.written == 1
    library = Library(db)
    try:
        assert library.discover(song) == "unchanged"  # the row describes the rewritten file again
    finally:
        library.close()


def test_tag_writes_a_running_sink_lost_are_made_from_the_library_at_the_next_heartbeat(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, caplog) -> None:
    """Its queue of 1 overflows: the lost writes stay owed in the library and the next heartbeat makes them
    from there (nothing is queued to be tagged again)."""
    music = tmp_path / "music"
    music.mkdir()
    files = []
    for suffix in ("flac", "ogg", "opus", "mp3"):
        files.append(music / f"song.{suffix}")
        shutil.copy(format_files[suffix], files[-1])
    db = tmp_path / "library.db"
    library = Library(db)
    for path in files:
        library.discover(path)
    tagger = Tagger(tiny_model, threshold=float(THRESHOLD))
    labels = {o.name: tuple(o.labels) for o in tagger.manifest.outputs}
    sink, hub = _sink(db, labels, queue=1)
    try:
        _beat(hub)  # the start's catch-up: nothing owed yet
        assert wait_until(lambda: not sink._catch_up, 30)
        events = []
        for path in files:  # as the daemon's worker: the result and its owed write in one transaction
            row, result = library.get(path), tagger.tag_file(path)
            assert library.record_result(row.id, result, row.fingerprint, owe_tags=True)
            events.append(TrackDone(row.id, str(path), result))
        for event in events:
            hub.track(event)
        counts = hub.counts
        assert wait_until(lambda: sum(counts()["tags"].get(k, 0) for k in ("delivered", "skipped", "dropped"))
                          == len(files), 60)  # the heartbeat that found nothing owed is not counted
        dropped = counts()["tags"]["dropped"]
        assert dropped >= 2 and _owed(db) == (dropped, 0)  # at most one queued, one being written
        assert sum(read_state(p).genres == () for p in files) == dropped
        assert any(f"{dropped} files' tags were not written now" in r.getMessage() for r in caplog.records)
        _beat(hub)
        assert wait_until(lambda: _owed(db) == (0, 0), 60)
    finally:
        hub.close(time.monotonic() + 4.0)
        library.close()
    assert all(read_state(p).genres != () for p in files)
    assert query(db, "SELECT status, tag_count FROM tracks") == [("tagged", 1)] * 4


def test_the_v7_migration_adds_the_owed_writes_once(tmp_path: Path) -> None:
    db = tmp_path / "library.db"
    Library(db).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE tags_owed")
    conn.execute("PRAGMA user_version = 6")
    conn.commit()
    conn.close()
    for _ in range(2):
        library = Library(db)
        assert library.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert library.owed_counts() == (0, 0)
        library.close()
    assert os.path.exists(db)


def test_a_library_retag_interrupted_before_a_write_makes_it_when_resumed(realworld: Path, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    """Ctrl-C while `library retag` rewrites a file (the new result already recorded): the write stays owed and
    the resumed run makes it, without re-tagging the file."""
    from models import export_tiny

    tiny_v2 = export_tiny(tmp_path / "v2" / "tiny-test.onnx", version="0.0.2")
    song = tmp_path / "long.mp3"  # seconds to rewrite (see the daemon's test above)
    song.write_bytes((realworld / "asc-music" / "machine_wars.mp3").read_bytes() * 30)
    db = tmp_path / "library.db"
    env = {**os.environ, "GENRE_TAGGER_TAGGING_THRESHOLD": THRESHOLD, "GENRE_TAGGER_TAGGING_COVERAGE": "excerpts:2x10"}
    cli = [sys.executable, "-m", "tagger.cli"]
    first = subprocess.run([*cli, "tag", "--write-tags", "--model", str(tiny_model), "--threshold", THRESHOLD,
                            "--coverage", "excerpts:2x10", "--library", str(db), str(song)],
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0 and read_state(song).provenance == "tiny-test 0.0.1", first.stderr
    retag = [*cli, "library", "--library", str(db), "retag", "--outdated", "--model", str(tiny_v2)]

    def writing() -> bool:  # the writer's temporary copy beside the file: the write has begun
        return any(p.name.endswith(".genre-tagger-tmp") for p in tmp_path.iterdir())

    with subprocess.Popen([*INTERRUPTIBLE, *retag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as run:
        try:
            wait_until(lambda: writing() or run.poll() is not None, 120, interval=0.01)
            assert writing(), run.stderr.read().decode() if run.poll() is not None else "no write within 120 s"
            run.send_signal(signal.SIGINT)
            run.wait(60)
        finally:
            if run.poll() is None:
                run.kill()
    assert read_state(song).provenance == "tiny-test 0.0.1"  # interrupted: the file as it was
    assert query(db, "SELECT model_version, tag_count FROM tracks") == [("0.0.2", 2)]  # the new result is recorded
    assert _owed(db) == (1, 0)

    resumed = subprocess.run(retag, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 re-tagged, 1 files' tags rewritten" in resumed.stderr
    assert read_state(song).provenance == "tiny-test 0.0.2"
    assert query(db, "SELECT model_version, tag_count FROM tracks") == [("0.0.2", 2)]  # not tagged again
    assert _owed(db) == (0, 0)


def test_an_owed_write_is_never_made_below_the_threshold_its_result_was_judged_at(realworld: Path, tiny_model: Path,
                                                                                 tmp_path: Path) -> None:
    """Owed at tagging.threshold 0.5, made after the threshold was lowered to 0.3 (file tagging off meanwhile,
    or a restart after a kill): the library's genres were decided at 0.5 and the file is not tagged again, so
    a label between 0.3 and 0.5 is one the library calls uncertain and must not become a file tag."""
    music = tmp_path / "music"
    music.mkdir()
    song = music / "song.mp3"
    shutil.copy(realworld / "asc-music" / "machine_wars.mp3", song)
    song.chmod(0o644)  # the shared copy is read-only
    db = tmp_path / "library.db"
    library = Library(db)
    tagger = Tagger(tiny_model, threshold=0.5)
    try:
        library.discover(song)
        row = library.get(song)
        result = tagger.tag_file(song)
        assert result.music and result.outputs["tags"].decided  # something to write at 0.5
        assert library.record_result(row.id, result, row.fingerprint, owe_tags=True)
    finally:
        library.close()
    decided = {label for label, in query(db, "SELECT label FROM genres WHERE output = 'tags' AND decided = 1")}
    uncertain = {label for label, score in query(db, "SELECT label, score FROM genres WHERE output = 'tags' "
                                                     "AND decided = 0") if score >= 0.3}
    assert uncertain, "no label between 0.3 and 0.5: the test shows nothing"
    labels = {o.name: tuple(o.labels) for o in tagger.manifest.outputs}
    config = Config()
    config.daemon.library = str(db)
    config.tagging.threshold = 0.3  # lowered since the write was owed
    sink = TagsSink(TagsSection(write=True, outputs=["tags"]), SinkContext(config, labels, "tiny-test 0.0.1"))
    hub = SinkHub([sink])
    hub.start()
    try:
        _beat(hub)
        assert wait_until(lambda: _owed(db) == (0, 0), 60)
    finally:
        hub.close(time.monotonic() + 4.0)
    written = {g.casefold() for g in read_state(song).genres}
    assert written, "the owed write was not made"
    assert written <= {label.casefold() for label in decided}, (written, decided, uncertain)


def test_the_copy_a_killed_writer_left_beside_a_file_goes_even_when_its_write_is_not_made(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """Killed while writing: the writer's temporary copy (a whole copy of the file) stays in the music folder.
    The file then changed (the user tagged it in another program): the owed write is dropped, not made, and
    the copy must go too, not stay beside the user's file for good (only a later write of it removed it)."""
    from mutagen.flac import FLAC

    music = tmp_path / "music"
    music.mkdir()
    song = music / "song.flac"
    shutil.copy(format_files["flac"], song)
    db = tmp_path / "library.db"
    _owed_library(db, [song], tiny_model)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = music / f".{song.name}.{dead.pid}.genre-tagger-tmp"
    shutil.copy(song, left)
    tags = FLAC(song)
    tags["genre"] = ["Their own"]
    tags.save()
    labels = {o.name: tuple(o.labels) for o in Tagger(tiny_model).manifest.outputs}
    sink, hub = _sink(db, labels)
    try:
        _beat(hub)
        assert wait_until(lambda: _owed(db) == (0, 0), 60)
    finally:
        hub.close(time.monotonic() + 4.0)
    assert read_state(song).genres == ("Their own",) and sink.written == 0  # changed: not written
    assert not left.exists(), "the killed writer's copy was left in the music folder"
