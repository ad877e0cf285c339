"""`tag --write-tags` and `library restore-tags` take the library's tag claims, as the daemon and `library retag`
do: a file another genre-tagger process (the daemon) is writing is waited for, with one line saying so, and
never written by two processes at once; one still held after the wait is left alone and said so. The other
process here is a real second process holding a real claim in the library file."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Run, daemon_log, query, running, wait_until

from service.library import Library
from tagger.filetags import audio_digest, read_state

CLI = [sys.executable, "-m", "tagger.cli"]
# The tiny test model decides genres at this threshold; ten seconds of the song are enough to tag it.
TAG = ("--threshold", "0.3", "--coverage", "excerpts:1x10")
# A second process that claims a track's file write and holds it until a line comes on its stdin.
HOLDER = ("import sys; from service.library import Library; library = Library(sys.argv[1]); "
          "assert library.claim_tag_write(int(sys.argv[2])) is None; print('claimed', flush=True); "
          "sys.stdin.readline(); library.release_tag_write(int(sys.argv[2])); library.close()")


@contextlib.contextmanager
def holding(db: Path, track_id: int) -> Iterator[subprocess.Popen]:
    """A live process holding the claim on ``track_id``'s file write until the block ends."""
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(track_id)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline() == "claimed\n"
            yield holder
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(60) == 0
        finally:
            if holder.poll() is None:
                holder.kill()


@pytest.fixture
def song(realworld: Path, tmp_path: Path) -> Path:
    path = tmp_path / "music" / "menu.opus"
    path.parent.mkdir()
    shutil.copyfile(realworld / "warzone2100-music" / "menu.opus", path)  # writable, unlike the shared data
    return path


def _track(db: Path, song: Path) -> int:
    """The song's track in a new library (found as the daemon's folder watcher finds it)."""
    library = Library(db)
    try:
        library.discover(song)
        return library.get(song).id
    finally:
        library.close()


def test_tag_write_tags_and_restore_tags_wait_for_a_process_writing_the_file(tiny_model: Path, song: Path,
                                                                            tmp_path: Path) -> None:
    db = tmp_path / "library.db"
    track_id = _track(db, song)
    original = read_state(song)
    with holding(db, track_id) as holder:
        tag = Run("tag", "--write-tags", "--model", str(tiny_model), *TAG, "--library", str(db), str(song))
        assert tag.says(f"genre-tagger: {song}: waiting for genre-tagger process {holder.pid} (the daemon, or "
                        "another run), which is writing its tags now"), tag.finish()
        assert tag.proc.poll() is None and read_state(song) == original  # nothing written while it is held
    code, out, err = tag.finish()
    assert code == 0, err
    written = read_state(song)
    assert written.genres and written.genres != original.genres and written.provenance == "tiny-test 0.0.1", out
    assert out.startswith(f"{song}: ") and query(db, "SELECT count(*) FROM tag_writes") == [(1,)]
    assert query(db, "SELECT count(*) FROM tag_claims") == [(0,)]

    with holding(db, track_id) as holder:
        restore = Run("library", "--library", str(db), "restore-tags")
        assert restore.says(f"genre-tagger: {song}: waiting for genre-tagger process {holder.pid}"), restore.finish()
        assert restore.proc.poll() is None and read_state(song) == written
    code, out, err = restore.finish()
    assert code == 0 and "1 of 1 files restored" in err, err
    assert read_state(song) == original and query(db, "SELECT count(*) FROM tag_claims") == [(0,)]


def test_tag_write_tags_through_a_symlinked_folder_claims_the_row_the_daemon_knows(tiny_model: Path, song: Path,
                                                                                 tmp_path: Path) -> None:
    """The daemon knows the song by its folder's real path; the user tags it through a symlink to that folder.
    `tag --write-tags` records and claims the daemon's row (waits while another process holds it) and makes no
    second row. Before: a new row under the symlinked path, claimed alone: the file was written beside the
    daemon's write."""
    db = tmp_path / "library.db"
    track_id = _track(db, song)
    link = tmp_path / "link"
    link.symlink_to(song.parent, target_is_directory=True)
    original = read_state(song)
    with holding(db, track_id) as holder:
        tag = Run("tag", "--write-tags", "--model", str(tiny_model), *TAG, "--library", str(db),
                  str(link / song.name))
        assert tag.says(f"genre-tagger: {song}: waiting for genre-tagger process {holder.pid}"), tag.finish()
        assert tag.proc.poll() is None and read_state(song) == original  # nothing written while it is held
    code, out, err = tag.finish()
    assert code == 0, err
    assert read_state(song).genres and read_state(song).genres != original.genres, out
    assert query(db, "SELECT id, path, status FROM tracks") == [(track_id, str(song), "tagged")]
    assert query(db, "SELECT track_id, path FROM tag_writes") == [(track_id, str(song))]


def test_a_file_still_held_after_the_wait_is_left_alone_and_said_so(tiny_model: Path, song: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from service import tagwriter
    from tagger.cli import main

    monkeypatch.setattr(tagwriter, "CLAIM_WAIT_S", 0.5)
    db = tmp_path / "library.db"
    track_id = _track(db, song)
    original = read_state(song)
    tag = ("tag", "--write-tags", "--model", str(tiny_model), *TAG, "--library", str(db), str(song))
    with holding(db, track_id) as holder:
        assert main(tag) == 1
        err = capsys.readouterr().err.splitlines()
        assert err == [f"genre-tagger: {song}: waiting for genre-tagger process {holder.pid} (the daemon, or another "
                       "run), which is writing its tags now",
                       f"{song}: busy: genre-tagger process {holder.pid} was writing its tags for 0.5 s, not written "
                       "(run the command again)"]
        assert read_state(song) == original and query(db, "SELECT count(*) FROM tag_writes") == [(0,)]
    assert main(tag) == 0  # let go: written
    written = read_state(song)
    assert written.genres and written.genres != original.genres
    capsys.readouterr()
    with holding(db, track_id) as holder:
        assert main(("library", "--library", str(db), "restore-tags")) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[1:] == [f"{song}: busy: genre-tagger process {holder.pid} was writing its tags for 0.5 s, not "
                           "restored (run restore-tags again)", "genre-tagger: 0 of 1 files restored or already so"]
        assert read_state(song) == written
    assert query(db, "SELECT count(*) FROM tag_claims") == [(0,)]


def test_tag_write_tags_beside_the_daemon_waits_for_its_write_and_the_replaced_result_is_never_written(
        realworld: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The daemon is writing a long file's genres (stopped there, SIGSTOP) when `tag --write-tags` with a newer
    model comes to the same file. Before: tag wrote beside it and met its lock ("locked by another program",
    exit 1). Now tag records its result, says it waits for the daemon's pid, the daemon (continued) drops the
    write whose result was replaced, and the file gets tag's result: one write, the audio untouched."""
    from test_tags_owed import THRESHOLD, _daemon_on_long_recording, _writing

    from models import export_tiny

    tiny_v2 = export_tiny(tmp_path / "v2" / "tiny-test.onnx", version="0.0.2")
    music = tmp_path / "music"
    music.mkdir()
    song, db, daemon = _daemon_on_long_recording(realworld, tiny_model, tmp_path, music)
    digest = audio_digest(song)
    with running(daemon) as suspender:
        suspender.suspend_when(lambda: _writing(music))
        tag = Run("tag", "--write-tags", "--model", str(tiny_v2), "--threshold", THRESHOLD, "--coverage",
                  "excerpts:2x10", "--library", str(db), str(song))
        waited = tag.says(f"genre-tagger: {song}: waiting for genre-tagger process {daemon.pid} (the daemon, or "
                          "another run), which is writing its tags now")
        suspender.resume()
        code, out, err = tag.finish()
        assert waited and code == 0 and out.startswith(f"{song}: "), err
        assert wait_until(lambda: not _writing(music), 60), daemon_log(daemon)  # the daemon dropped its copy
    assert "locked by another program" not in err + daemon_log(daemon)
    assert read_state(song).provenance == "tiny-test 0.0.2"  # tag's result, not the replaced one
    assert query(db, "SELECT model_version FROM tag_writes") == [("0.0.2",)]  # one write: the replaced one never
    assert query(db, "SELECT count(*) FROM tags_owed") == [(0,)] and query(db, "SELECT count(*) FROM tag_claims") \
        == [(0,)]
    assert audio_digest(song) == digest
