"""Nothing is lost: a genre write into a file that the daemon owes survives a kill -9 (it is stored with the
result, in the same transaction) and is made at the next start from the stored result, without tagging the
file again; a write that fails for a passing reason is tried again while the daemon runs; a write that
cannot be made fails for good, visibly, once; the daemon and `library retag` never write one file at once."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    INTERRUPTIBLE,
    Run,
    Subscriber,
    daemon_log,
    free_endpoint,
    query,
    running,
    start_daemon,
    stop_daemon,
    wait_until,
)

from service.config import Config
from service.events import TrackDone
from service.library import SCHEMA_VERSION, Library
from service.sinks import SinkContext, SinkHub
from service.sinks.tags import TagsSection, TagsSink
from tagger.filetags import audio_digest, read_state
from tagger.pipeline import Tagger

# The tiny test model's genres need a low threshold; the file tags may not go below the tagging one.
THRESHOLD = "0.3"
CLI = [sys.executable, "-m", "tagger.cli"]
# A daemon that tags excerpts of each file and writes the decided genres into it.
WRITING = {"GENRE_TAGGER_TAGS_WRITE": "true", "GENRE_TAGGER_TAGS_THRESHOLD": THRESHOLD,
           "GENRE_TAGGER_TAGGING_THRESHOLD": THRESHOLD, "GENRE_TAGGER_TAGGING_COVERAGE": "excerpts:2x10"}


@pytest.fixture
def music(tmp_path: Path) -> Path:
    folder = tmp_path / "music"
    folder.mkdir()
    return folder


@pytest.fixture
def labels(tiny_model: Path) -> dict[str, tuple[str, ...]]:
    """The tiny model's labels by output, as the daemon hands them to its sinks."""
    return {o.name: tuple(o.labels) for o in Tagger(tiny_model).manifest.outputs}


def _long_recording(realworld: Path, path: Path) -> Path:
    """A long real recording (its MPEG frames 30 times over: 87 MB, 2 h 25 min): the writer takes seconds to
    copy and verify it, while tagging excerpts of it takes a fraction of one."""
    path.write_bytes((realworld / "asc-music" / "machine_wars.mp3").read_bytes() * 30)
    return path


def _daemon_on_long_recording(realworld: Path, model: Path, tmp_path: Path, music: Path
                              ) -> tuple[Path, Path, subprocess.Popen]:
    """A long recording in ``music`` and a daemon started on the folder, writing file tags: (the recording, the
    daemon's library file, the daemon); its state is ``tmp_path/state``."""
    song = _long_recording(realworld, music / "long.mp3")
    state = tmp_path / "state"
    daemon = start_daemon(state, model, "--folder", str(music), "--settle", "0.2", endpoint="", env=WRITING)
    return song, state / "library.db", daemon


def _writing(folder: Path) -> bool:
    """Whether a writer's temporary copy is beside a file in ``folder``: a write has begun."""
    return any(p.name.endswith(".genre-tagger-tmp") for p in folder.iterdir())


def _log(state: Path) -> str:
    return (state.parent / f"{state.name}.log").read_text()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


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
                                                                             tmp_path: Path, music: Path) -> None:
    # The daemon has recorded the long file as tagged and is writing its tags when it is killed.
    song = _long_recording(realworld, music / "long.mp3")
    digest, mtime = audio_digest(song), song.stat().st_mtime_ns
    state = tmp_path / "state"
    db = state / "library.db"
    env = WRITING
    args = ("--folder", str(music), "--settle", "0.2")

    daemon = start_daemon(state, tiny_model, *args, endpoint="", env=env)
    try:
        wait_until(lambda: _writing(music) or daemon.poll() is not None, 120, interval=0.01)
        assert _writing(music), _log(state)
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
    assert "1 genre writes into files are owed from before, and kept: file tagging is off" in _log(state)

    # On again: the write is made from the stored result, the file is not tagged again.
    endpoint = free_endpoint()
    daemon = start_daemon(state, tiny_model, *args, endpoint=endpoint, env=env)
    try:
        assert wait_until(lambda: read_state(song).genres != (), 120), _log(state)
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


def _sink(db: Path, labels: dict, queue: int = 1000, threshold: float = float(THRESHOLD),
          **section) -> tuple[TagsSink, SinkHub]:
    """A started tags sink (``[tags] write = true`` and ``section``) on the library ``db``, and its hub."""
    config = Config()
    config.daemon.library = str(db)
    config.tagging.threshold = threshold
    sink = TagsSink(TagsSection(write=True, queue=queue, **section), SinkContext(config, labels, "tiny-test 0.0.1"))
    hub = SinkHub([sink])
    hub.start()
    return sink, hub


def _catch_up(db: Path, labels: dict, done: Callable[[], bool], **sink) -> TagsSink:
    """A sink started as after a crash (no events): its first heartbeat makes what is owed, until ``done``."""
    started, hub = _sink(db, labels, **sink)
    try:
        _beat(hub)
        assert wait_until(done, 60)
    finally:
        hub.close(time.monotonic() + 4.0)
    return started


def _owed(db: Path) -> tuple[int, int]:
    """(owed, failed for good) tag writes in the library."""
    return query(db, "SELECT count(*) - count(failed_at), count(failed_at) FROM tags_owed")[0]


def _beat(hub: SinkHub) -> None:
    from service.events import Status

    hub.status(Status(0.0, 0, 0, 0, 0.0, 0.0, "cpu", "tiny-test 0.0.1"))


def test_an_owed_write_that_cannot_be_made_fails_for_good_visibly_and_is_not_tried_again(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict) -> None:
    good, stuck = music / "good.flac", music / "read-only.ogg"
    shutil.copy(format_files["flac"], good)
    shutil.copy(format_files["ogg"], stuck)
    stuck.chmod(0o444)
    db = tmp_path / "library.db"
    ids = _owed_library(db, [good, stuck], tiny_model)

    # A start after a crash: no event for either file; the first heartbeat makes what is owed.
    _catch_up(db, labels, lambda: _owed(db) == (0, 1))
    assert read_state(good).genres != ()
    assert read_state(stuck).genres == ()
    row = query(db, "SELECT track_id, attempts, error FROM tags_owed WHERE failed_at IS NOT NULL")
    assert row == [(ids[1], 1, "read-only file, tags not written")]

    # Visible: `library stats` counts it, `library show` says why.
    stats = _cli("library", "--library", str(db), "stats")
    assert "1 genre writes into files failed for good" in stats.stdout, stats.stdout + stats.stderr
    shown = _cli("library", "--library", str(db), "show", str(stuck))
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
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict) -> None:
    """Killed after the write's hook recorded it (the row then has the rewritten copy's size, mtime and
    fingerprint) but before the rename: the file is still the one tagged, so its write is still owed."""
    song = music / "song.flac"
    shutil.copy(format_files["flac"], song)
    db = tmp_path / "library.db"
    track_id, = _owed_library(db, [song], tiny_model)
    library = Library(db)
    run = library.start_tag_run("daemon")  # what write_state's before_replace hook records, for a copy never renamed
    library.record_tag_write(run, track_id, song, {"genres": []}, {"genres": ["mid"]}, "if-empty", {}, "tiny-test",
                             "0.0.1", 1234, 1.0, "f" * 32)
    library.close()
    sink = _catch_up(db, labels, lambda: _owed(db) == (0, 0))
    assert read_state(song).genres != () and sink.written == 1
    library = Library(db)
    try:
        assert library.discover(song) == "unchanged"  # the row describes the rewritten file again
    finally:
        library.close()


def test_tag_writes_a_running_sink_lost_are_made_from_the_library_at_the_next_heartbeat(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict, caplog) -> None:
    """Its queue of 1 overflows: the lost writes stay owed in the library and the next heartbeat makes them
    from there (nothing is queued to be tagged again)."""
    files = []
    for suffix in ("flac", "ogg", "opus", "mp3"):
        files.append(music / f"song.{suffix}")
        shutil.copy(format_files[suffix], files[-1])
    db = tmp_path / "library.db"
    library = Library(db)
    for path in files:
        library.discover(path)
    tagger = Tagger(tiny_model, threshold=float(THRESHOLD))
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


@pytest.mark.parametrize("version, dropped", [(6, ("tags_owed", "tag_claims")), (7, ("tag_claims",)), (8, ())])
def test_the_v7_to_v9_migrations_add_the_owed_writes_their_claims_and_retry_times_once(
        tmp_path: Path, version: int, dropped: tuple[str, ...]) -> None:
    db = tmp_path / "library.db"
    Library(db).close()
    conn = sqlite3.connect(db)
    for table in dropped:
        conn.execute(f"DROP TABLE {table}")
    if version == 8:
        conn.execute("ALTER TABLE tags_owed DROP COLUMN retry_at")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    for _ in range(2):
        library = Library(db)
        assert library.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
        assert library.owed_counts() == (0, 0)
        assert {"tags_owed", "tag_claims"} <= set(library.db.table_names())
        assert "retry_at" in library.db["tags_owed"].columns_dict
        assert library.claim_tag_write(1) is None  # the claims table works
        library.release_tag_write(1)
        # An owed write's id is never used again (a writer tells by it that its row is still the one owed).
        add = "INSERT INTO tags_owed (track_id, result, owed_at) VALUES (1, '{}', '')"
        first = library.db.execute(add).lastrowid
        library.db.execute("DELETE FROM tags_owed")
        assert library.db.execute(add).lastrowid > first
        library.db.execute("DELETE FROM tags_owed")
        library.close()
    assert os.path.exists(db)


def test_a_library_retag_interrupted_before_a_write_makes_it_when_resumed(realworld: Path, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    """Ctrl-C while `library retag` rewrites a file (the new result already recorded): the write stays owed and
    the resumed run makes it, without re-tagging the file."""
    from models import export_tiny

    tiny_v2 = export_tiny(tmp_path / "v2" / "tiny-test.onnx", version="0.0.2")
    song = _long_recording(realworld, tmp_path / "long.mp3")  # seconds to rewrite
    db = tmp_path / "library.db"
    env = {"GENRE_TAGGER_TAGGING_THRESHOLD": THRESHOLD, "GENRE_TAGGER_TAGGING_COVERAGE": "excerpts:2x10"}
    first = _cli("tag", "--write-tags", "--model", str(tiny_model), "--threshold", THRESHOLD, "--coverage",
                 "excerpts:2x10", "--library", str(db), str(song), env=env)
    assert first.returncode == 0 and read_state(song).provenance == "tiny-test 0.0.1", first.stderr
    retag = ("library", "--library", str(db), "retag", "--outdated", "--model", str(tiny_v2))

    with subprocess.Popen([*INTERRUPTIBLE, *CLI, *retag], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, **env}) as run:
        try:
            wait_until(lambda: _writing(tmp_path) or run.poll() is not None, 120, interval=0.01)
            assert _writing(tmp_path), run.stderr.read().decode() if run.poll() is not None else "no write in 120 s"
            run.send_signal(signal.SIGINT)
            run.wait(60)
        finally:
            if run.poll() is None:
                run.kill()
    assert read_state(song).provenance == "tiny-test 0.0.1"  # interrupted: the file as it was
    assert query(db, "SELECT model_version, tag_count FROM tracks") == [("0.0.2", 2)]  # the new result is recorded
    assert _owed(db) == (1, 0)

    resumed = _cli(*retag, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 re-tagged, 1 files' tags rewritten" in resumed.stderr
    assert read_state(song).provenance == "tiny-test 0.0.2"
    assert query(db, "SELECT model_version, tag_count FROM tracks") == [("0.0.2", 2)]  # not tagged again
    assert _owed(db) == (0, 0)


def test_an_owed_write_is_never_made_below_the_threshold_its_result_was_judged_at(
        realworld: Path, tiny_model: Path, tmp_path: Path, music: Path, labels: dict) -> None:
    """Owed at tagging.threshold 0.5, made after the threshold was lowered to 0.3 (file tagging off meanwhile,
    or a restart after a kill): the library's genres were decided at 0.5 and the file is not tagged again, so
    a label between 0.3 and 0.5 is one the library calls uncertain and must not become a file tag."""
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
    # tagging.threshold lowered to 0.3 since the write was owed
    _catch_up(db, labels, lambda: _owed(db) == (0, 0), threshold=0.3, outputs=["tags"])
    written = {g.casefold() for g in read_state(song).genres}
    assert written, "the owed write was not made"
    assert written <= {label.casefold() for label in decided}, (written, decided, uncertain)


def test_the_copy_a_killed_writer_left_beside_a_file_goes_even_when_its_write_is_not_made(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict) -> None:
    """Killed while writing: the writer's temporary copy (a whole copy of the file) stays in the music folder.
    The file then changed (the user tagged it in another program): the owed write is dropped, not made, and
    the copy must go too, not stay beside the user's file for good (only a later write of it removed it)."""
    from mutagen.flac import FLAC

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
    sink = _catch_up(db, labels, lambda: _owed(db) == (0, 0))
    assert read_state(song).genres == ("Their own",) and sink.written == 0  # changed: not written
    assert not left.exists(), "the killed writer's copy was left in the music folder"


def test_restore_tags_drops_the_writes_the_daemon_still_owes_for_the_files_it_restores(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict) -> None:
    """`library restore-tags` puts files' own genres back; a write the daemon still owed for such a file (a result
    recorded, its write not made yet: the file was locked, the daemon stopped, file tagging was off) must not put
    genre-tagger's genres back afterwards. One file is restored (re-tagged since its write, that write owed); the
    other's genre the user had removed by hand (the daemon then re-tagged it, its write owed): restore-tags finds it
    as it was and marks it restored. Before, both owed writes stayed: the second was then made (the file is the one
    its result is for), writing the genre back."""
    from mutagen.flac import FLAC

    restored, by_hand = music / "restored.flac", music / "by-hand.flac"
    for path in (restored, by_hand):
        shutil.copy(format_files["flac"], path)
    originals = {path: read_state(path) for path in (restored, by_hand)}
    db = tmp_path / "library.db"
    _owed_library(db, [restored, by_hand], tiny_model)
    _catch_up(db, labels, lambda: _owed(db) == (0, 0))  # the daemon's writes
    assert all(read_state(p).genres and read_state(p).genres != originals[p].genres for p in originals)
    tags = FLAC(by_hand)  # the user removes genre-tagger's genre in another program
    for key in ("genre", "genre_tagger_model"):
        del tags[key]
    tags.save()
    assert read_state(by_hand) == originals[by_hand]
    library = Library(db)
    tagger = Tagger(tiny_model, threshold=float(THRESHOLD))
    try:
        assert library.discover(by_hand) == "queued"  # changed: the daemon's watcher queues it
        for path in (restored, by_hand):  # each tagged again (a newer model, a changed file); the writes owed
            row = library.get(path)
            library.queue_again([row.id])
            assert library.record_result(row.id, tagger.tag_file(path), row.fingerprint, owe_tags=True)
    finally:
        library.close()
    assert _owed(db) == (2, 0)

    restore = _cli("library", "--library", str(db), "restore-tags")
    assert restore.returncode == 0, restore.stderr
    assert "2 of 2 files restored or already so; 2 genre writes the daemon still owed for them dropped" \
        in restore.stderr, restore.stderr
    assert _owed(db) == (0, 0)
    _catch_up(db, labels, lambda: True)  # a daemon starting after the restore: nothing owed is made
    assert {p: read_state(p) for p in originals} == originals
    assert query(db, "SELECT count(*) FROM tag_writes WHERE restored_at IS NULL") == [(0,)]


def _lock(path: Path) -> int:
    """Hold ``path`` locked (``flock``) as another program writing it would; close the fd to let go."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _owed_row(db: Path, name: str) -> tuple | None:
    """(attempts, failed for good, error) of the write owed for the file named ``name``; None when none is owed
    (or the daemon has not made its library yet)."""
    if not db.exists():
        return None
    with contextlib.suppress(sqlite3.OperationalError):
        rows = query(db, "SELECT o.attempts, o.failed_at IS NOT NULL, o.error FROM tags_owed o JOIN tracks t "
                         "ON t.id = o.track_id WHERE t.path LIKE ?", (f"%/{name}",))
        return rows[0] if rows else None
    return None


def test_a_write_that_fails_for_a_passing_reason_is_tried_again_while_the_daemon_runs(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path) -> None:
    """Two files locked by another program (flock) when the daemon writes their genres: a passing failure. One is
    let go: the running daemon writes it at a later try, without a restart; the other stays locked and is
    recorded as failed for good at its ``write_attempts``-th failure. The daemon goes on all along."""
    released, stuck = music / "released.flac", music / "stuck.mp3"
    shutil.copy(format_files["flac"], released)
    shutil.copy(format_files["mp3"], stuck)
    locks = {released: _lock(released), stuck: _lock(stuck)}
    state = tmp_path / "state"
    db = state / "library.db"
    env = {**WRITING, "GENRE_TAGGER_TAGS_RETRY_SECONDS": "1", "GENRE_TAGGER_TAGS_WRITE_ATTEMPTS": "4"}
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0.2", endpoint="", env=env)
    try:
        assert wait_until(lambda: (_owed_row(db, released.name) or (0,))[0] >= 1, 120), _log(state)
        os.close(locks.pop(released))  # the other program is done with it
        assert wait_until(lambda: read_state(released).genres != (), 60), _log(state)
        assert wait_until(lambda: (_owed_row(db, stuck.name) or (0, 0))[1] == 1, 60), _log(state)
        assert daemon.poll() is None, _log(state)
    finally:
        for fd in locks.values():
            os.close(fd)
        if daemon.poll() is None:
            assert stop_daemon(daemon) == 0
    log = _log(state)
    assert f"{released}: skipped: locked by another program, tags not written (failure 1 of 4; tried again in 1 s)" \
        in log
    assert _owed_row(db, stuck.name) == (4, 1, "locked by another program, tags not written")
    assert "locked by another program, tags not written (not tried again" in log
    assert _owed_row(db, released.name) is None and read_state(stuck).genres == ()
    genre, = query(db, "SELECT g.label FROM genres g JOIN tracks t ON t.id = g.track_id WHERE g.output = 'genre' "
                       "AND g.decided = 1 AND t.path LIKE ?", (f"%/{released.name}",))[0]
    assert read_state(released).genres == (genre,) and read_state(released).provenance == "tiny-test 0.0.1"
    assert query(db, "SELECT status, tag_count FROM tracks") == [("tagged", 1)] * 2  # nothing tagged again
    assert query(db, "SELECT count(*) FROM tag_writes") == [(1,)]


def test_a_restart_keeps_to_the_retry_time_of_a_write_that_failed_for_a_passing_reason(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict) -> None:
    """A write that failed because its file was locked is tried again at its time after a restart too: before,
    each start tried every such write at once, so a few quick restarts (a crash loop, updates) used up its
    ``write_attempts`` in seconds instead of the half hour the schedule gives it."""
    locked, later = music / "locked.flac", music / "later.ogg"
    shutil.copy(format_files["flac"], locked)
    shutil.copy(format_files["ogg"], later)
    db = tmp_path / "library.db"
    _owed_library(db, [locked], tiny_model)
    fd = _lock(locked)
    try:
        # The first try fails (locked by another program): tried again in an hour.
        _catch_up(db, labels, lambda: (_owed_row(db, locked.name) or (0,))[0] == 1, retry_seconds=3600)
        (retry_at,) = query(db, "SELECT retry_at FROM tags_owed")[0]
        assert 3500 < (datetime.fromisoformat(retry_at) - datetime.now(UTC)).total_seconds() <= 3600
        # Restarted: a write owed since (a higher id, so the start's pass looks at the locked file first) is made,
        # and the locked file's is left to its time: not tried, its attempts kept.
        _owed_library(db, [later], tiny_model)
        _catch_up(db, labels, lambda: read_state(later).genres != (), retry_seconds=3600)
        assert _owed_row(db, locked.name) == (1, 0, "locked by another program, tags not written")
        assert query(db, "SELECT retry_at FROM tags_owed") == [(retry_at,)]
    finally:
        os.close(fd)
    # Its time come (set so here rather than waited for), the next start makes it.
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE tags_owed SET retry_at = ?", [(datetime.now(UTC) - timedelta(seconds=1)).isoformat()])
    _catch_up(db, labels, lambda: _owed_row(db, locked.name) is None, retry_seconds=3600)
    assert read_state(locked).genres != () and query(db, "SELECT count(*) FROM tag_writes") == [(2,)]


def test_library_retry_owed_makes_owed_writes_now_without_using_up_the_daemon_s_attempts(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path, labels: dict,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A user who fixed what made a write fail (closed the program that locked the file, made a read-only file
    writable) says "now" with `library retry-owed` instead of waiting for the time the daemon gave the write (up to
    an hour; a restart keeps to it). A try that still fails keeps its reason but uses none of the daemon's attempts
    and leaves its time; one that failed for good is tried only with --failed; a file another genre-tagger process
    is writing is waited for, then left (busy, exit 1)."""
    from test_tag_claims import holding

    from service import tagwriter
    from tagger.cli import main

    locked, stuck = music / "locked.flac", music / "read-only.ogg"
    shutil.copy(format_files["flac"], locked)
    shutil.copy(format_files["ogg"], stuck)
    stuck.chmod(0o444)
    db = tmp_path / "library.db"
    locked_id, _ = _owed_library(db, [locked, stuck], tiny_model)
    fd = _lock(locked)
    try:
        _catch_up(db, labels, lambda: _owed(db) == (1, 1), retry_seconds=3600)  # the daemon's first tries
        (retry_at,) = query(db, "SELECT retry_at FROM tags_owed WHERE failed_at IS NULL")[0]
        still = _cli("library", "--library", str(db), "retry-owed", "--progress", str(music))
        assert still.returncode == 1, still.stderr
        assert f"{locked}: skipped: locked by another program, tags not written" in still.stderr
        assert "1 owed genre writes tried: 0 written, 0 nothing to write, 1 failed, 0 busy; 1 failed for good not " \
               "tried (--failed tries them too)" in still.stderr and "1/1 [" in still.stderr, still.stderr
        assert _owed_row(db, locked.name) == (1, 0, "locked by another program, tags not written")
        assert query(db, "SELECT retry_at FROM tags_owed WHERE failed_at IS NULL") == [(retry_at,)]
    finally:
        os.close(fd)  # the other program is done with it

    # Another genre-tagger process writing the file: waited for (0.5 s here, 2 minutes really), then left.
    monkeypatch.setattr(tagwriter, "CLAIM_WAIT_S", 0.5)
    with holding(db, locked_id) as holder:
        assert main(("library", "--library", str(db), "retry-owed", "--no-progress")) == 1
        err = capsys.readouterr().err
        assert f"genre-tagger: {locked}: waiting for genre-tagger process {holder.pid}" in err, err
        assert "0 written, 0 nothing to write, 0 failed, 1 busy" in err and read_state(locked).genres == ()

    now = _cli("library", "--library", str(db), "retry-owed")
    assert now.returncode == 0, now.stderr
    assert now.stdout.startswith(f"{locked}: (none) → ") and "1 written, 0 nothing to write, 0 failed" in now.stderr
    genre, = query(db, "SELECT g.label FROM genres g JOIN tracks t ON t.id = g.track_id WHERE g.output = 'genre' "
                       "AND g.decided = 1 AND t.id = ?", (locked_id,))[0]
    assert read_state(locked).genres == (genre,) and _owed(db) == (0, 1)

    again = _cli("library", "--library", str(db), "retry-owed", "--failed")  # still read-only: still failed
    assert again.returncode == 1 and "read-only file, tags not written" in again.stderr, again.stderr
    assert _owed_row(db, stuck.name) == (1, 1, "read-only file, tags not written")
    stuck.chmod(0o644)
    assert "no genre writes owed (1 failed for good: --failed tries them too)" in \
        _cli("library", "--library", str(db), "retry-owed").stderr
    made = _cli("library", "--library", str(db), "retry-owed", "--failed")
    assert made.returncode == 0 and "1 written" in made.stderr, made.stderr
    assert read_state(stuck).genres != () and _owed(db) == (0, 0)
    assert query(db, "SELECT count(*) FROM tag_writes") == [(2,)] and query(db, "SELECT count(*) FROM tag_claims") \
        == [(0,)]


def test_retry_owed_and_restore_tags_take_a_path_through_a_symlink_and_refuse_one_that_does_not_exist(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path) -> None:
    """The daemon keeps its folders' real paths; a user types the music folder as they know it (a symlink to it).
    `library retry-owed LINK` and `restore-tags LINK` find the files under it (before: "no genre writes owed",
    nothing done). A PATH that does not exist is a one-line error naming it, exit 2 (before: "0 of 0 files
    restored", exit 0, the typo unseen)."""
    song = music / "song.flac"
    shutil.copy(format_files["flac"], song)
    db = tmp_path / "library.db"
    _owed_library(db, [song], tiny_model)
    link = tmp_path / "link"
    link.symlink_to(music, target_is_directory=True)
    typo = tmp_path / "msuic"
    for command in ("retry-owed", "restore-tags"):
        refused = _cli("library", "--library", str(db), command, str(typo))
        assert refused.returncode == 2 and refused.stderr == f"genre-tagger: error: {typo}: no such file or folder\n"
    assert _owed(db) == (1, 0) and read_state(song).genres == ()

    made = _cli("library", "--library", str(db), "retry-owed", str(link))
    assert made.returncode == 0 and "1 owed genre writes tried: 1 written" in made.stderr, made.stderr
    written = read_state(song).genres
    assert written != () and _owed(db) == (0, 0)
    restored = _cli("library", "--library", str(db), "restore-tags", str(link / "song.flac"))
    assert restored.returncode == 0 and "1 of 1 files restored" in restored.stderr, restored.stderr
    assert read_state(song).genres == ()
    nothing = _cli("library", "--library", str(db), "restore-tags", str(link))
    assert nothing.returncode == 0 and nothing.stderr == f"genre-tagger: no tag writes to undo under {link}\n"


def test_retry_owed_counts_a_write_it_cannot_make_from_its_stored_result_as_queued_again(
        format_files: dict[str, Path], tiny_model: Path, tmp_path: Path, music: Path) -> None:
    """An owed write whose stored result cannot be written from (here: unreadable) is handed back to the daemon:
    the track is queued to be tagged again. retry-owed's summary says so (before: counted "nothing to write", as
    if the file needed no genres)."""
    song = music / "song.flac"
    shutil.copy(format_files["flac"], song)
    db = tmp_path / "library.db"
    (track_id,) = _owed_library(db, [song], tiny_model)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tags_owed SET result = '{}'")
    conn.close()
    run = _cli("library", "--library", str(db), "retry-owed")
    assert run.returncode == 0, run.stderr
    assert "1 owed genre writes tried: 0 written, 0 nothing to write, 0 failed, 0 busy, 1 queued to be tagged " \
        "again (the daemon writes its new result)" in run.stderr, run.stderr
    assert query(db, "SELECT status FROM tracks WHERE id = ?", (track_id,)) == [("pending",)] and _owed(db) == (0, 0)
    assert read_state(song).genres == ()


def test_library_retag_beside_the_daemon_waits_for_the_file_it_writes_and_no_replaced_result_is_written(
        realworld: Path, tiny_model: Path, tmp_path: Path, music: Path) -> None:
    """The daemon is writing a file's genres (stopped there, SIGSTOP) when a newer result for the file is recorded
    (model 0.0.2, its write owed, as `library retag` records it) and `library retag --write-tags` comes to make
    that write. Before: retag collided with the daemon's write ("locked by another program", a failure counted)
    and the daemon then wrote the replaced 0.0.1 result over the library's 0.0.2. Now retag waits for the
    daemon's claim on the file, the daemon drops the write whose result was replaced, and the file gets 0.0.2
    once: one write, no failure."""
    from models import export_tiny

    tiny_v2 = export_tiny(tmp_path / "v2" / "tiny-test.onnx", version="0.0.2")
    song, db, daemon = _daemon_on_long_recording(realworld, tiny_model, tmp_path, music)
    digest = audio_digest(song)
    with running(daemon) as suspender:
        suspender.suspend_when(lambda: _writing(music))
        assert query(db, "SELECT count(*) FROM tag_writes") == [(0,)] and _owed_row(db, song.name)[0] == 0

        library = Library(db)
        try:
            row = library.get(song)
            newer = Tagger(tiny_v2, threshold=float(THRESHOLD), coverage="excerpts:2x10").tag_file(song)
            assert library.queue_again([row.id]) == 1
            assert library.record_result(row.id, newer, row.fingerprint, owe_tags=True)
        finally:
            library.close()

        retag = Run("library", "--library", str(db), "retag", "--outdated", "--write-tags", "--model", str(tiny_v2),
                    env={"GENRE_TAGGER_TAGGING_THRESHOLD": THRESHOLD, "GENRE_TAGGER_TAGGING_COVERAGE": "excerpts:2x10"})
        waiting = f"waiting for genre-tagger process {daemon.pid}"
        waited = retag.says(waiting)
        suspender.resume()
        code, _, stderr = retag.finish()
        assert waited and code == 0, stderr
        assert "0 re-tagged, 1 files' tags rewritten, 0 failed" in stderr, stderr + daemon_log(daemon)
        assert wait_until(lambda: not _writing(music), 60), daemon_log(daemon)  # the daemon dropped its copy
    assert "locked by another program" not in stderr + daemon_log(daemon)
    assert read_state(song).provenance == "tiny-test 0.0.2"  # the library's result, not the replaced one
    genre, = query(db, "SELECT label FROM genres WHERE output = 'genre' AND decided = 1")[0]
    assert read_state(song).genres == (genre,)
    assert query(db, "SELECT model_version FROM tag_writes") == [("0.0.2",)]  # one write: the replaced one never
    assert query(db, "SELECT model_version, tag_count FROM tracks") == [("0.0.2", 2)]
    assert query(db, "SELECT count(*) FROM tags_owed") == [(0,)] and query(db, "SELECT count(*) FROM tag_claims") \
        == [(0,)]
    assert audio_digest(song) == digest


def test_a_claim_on_a_file_s_write_holds_while_its_process_lives_and_is_taken_over_after(tmp_path: Path) -> None:
    """The claims the daemon and `library retag` take before writing a file: another live process's claim holds;
    a killed one's is taken over (else its file would never be written again), as is one left by an earlier
    process that had this process's pid (a daemon restarted in a container gets the same pid)."""
    db = tmp_path / "library.db"
    library = Library(db)
    try:
        assert library.claim_tag_write(1) is None and library.claim_tag_write(1) is None  # ours, and ours again
        claim = ("import sys; from service.library import Library; "
                 f"assert Library({str(db)!r}).claim_tag_write(2) is None; print('claimed', flush=True); "
                 "sys.stdin.read()")
        with subprocess.Popen([sys.executable, "-c", claim], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) as other:
            assert other.stdout.readline() == "claimed\n"
            assert library.claim_tag_write(2) == other.pid  # held while that process lives
            other.kill()
            other.wait(30)
        assert library.claim_tag_write(2) is None  # killed: taken over
        library.release_tag_write(2)
        library.db.execute("UPDATE tag_claims SET started = 'earlier' WHERE track_id = 1")  # this pid, another life
        library.db.execute("INSERT INTO tag_claims VALUES (3, 'another-host', 1, '', ?)",
                           [time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())])
        assert library.claim_tag_write(1) is None
        assert library.claim_tag_write(3) == 1  # another machine's: cannot be asked, trusted for an hour
        library.release_tag_write(1)
        assert query(db, "SELECT track_id FROM tag_claims") == [(3,)]
    finally:
        library.close()


@pytest.mark.parametrize("key, value, needle", [("retry_seconds", 0.0, "must be positive"),
                                                ("write_attempts", 0, "must be at least 1")])
def test_the_retry_settings_are_checked(key: str, value: float, needle: str) -> None:
    from tagger.errors import ConfigError

    section = TagsSection(write=True, **{key: value})
    with pytest.raises(ConfigError, match=f"config tags.{key}: {needle}"):
        section.validate("tags")
    assert TagsSection().retry_seconds == 60.0 and TagsSection().write_attempts == 6  # the documented defaults


def test_library_retry_owed_names_the_config_file_that_set_a_bad_tags_setting(tmp_path: Path) -> None:
    """retry-owed checks the daemon's [tags] settings itself: an error names the file that set the key."""
    db = tmp_path / "library.db"
    Library(db).close()
    config = tmp_path / "genre-tagger.toml"
    config.write_text("[tags]\nretry_seconds = 0\n")
    refused = _cli("library", "--library", str(db), "--config", str(config), "retry-owed")
    assert refused.returncode == 2 and refused.stderr == \
        f"genre-tagger: error: {config}: tags.retry_seconds: must be positive (seconds)\n", refused.stderr
