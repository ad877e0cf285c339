"""Genres into the files' own tags: every format, read back by mutagen and FFmpeg, nothing else touched,
atomic under kill -9, undone by restore-tags, redone by retag --outdated."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mutagen
import mutagen.mp4
import pytest
from filetag_helpers import add_tags, ffmpeg_genre, pcm_digest, snapshot

from service.library import Library
from tagger.ensemble import LabelScore, OutputEstimate
from tagger.filetags import (
    FileSkipped,
    GenreState,
    audio_digest,
    decided_genres,
    plan_genres,
    read_state,
    write_state,
)

FORMATS = ("mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff")
# FFmpeg joins Vorbis comments' several GENRE fields with ';' and reads only the first value of an ID3v2.4
# TCON frame or an MP4 ©gen atom (mutagen, beets, Navidrome, Jellyfin and Mixxx read them all).
FFMPEG_SEES_ALL = {"flac", "ogg", "opus"}


@pytest.fixture()
def tagged_files(format_files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A copy of the excerpt in every format, with ordinary tags and cover art but no genre."""
    files = {}
    for suffix in FORMATS:
        path = tmp_path / f"song.{suffix}"
        shutil.copy(format_files[suffix], path)
        add_tags(path)
        files[suffix] = path
    return files


@pytest.mark.parametrize("suffix", FORMATS)
def test_write_reads_back_everywhere_and_touches_nothing_else(tagged_files: dict[str, Path], suffix: str) -> None:
    path = tagged_files[suffix]
    path.chmod(0o640)
    with contextlib.suppress(OSError):  # where the filesystem has user attributes
        os.setxattr(path, "user.origin", b"ripped")
    xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)}
    before, pcm, packets = snapshot(path), pcm_digest(path), audio_digest(path)
    assert read_state(path) == GenreState()

    done = write_state(path, GenreState(("Hip-Hop", "Jazz"), "tiny-test 0.0.1"))
    assert done.changed
    assert read_state(path) == GenreState(("Hip-Hop", "Jazz"), "tiny-test 0.0.1")
    assert list(_mutagen_genres(path)) == ["Hip-Hop", "Jazz"]  # mutagen's own view, multi-valued
    assert ffmpeg_genre(path) == ("Hip-Hop;Jazz" if suffix in FFMPEG_SEES_ALL else "Hip-Hop")
    assert snapshot(path) == before  # titles, comments, custom fields, cover art: identical
    assert pcm_digest(path) == pcm and audio_digest(path) == packets
    assert path.stat().st_mode & 0o7777 == 0o640 and {n: os.getxattr(path, n) for n in os.listxattr(path)} == xattrs

    mtime = path.stat().st_mtime_ns
    assert not write_state(path, GenreState(("Hip-Hop", "Jazz"), "tiny-test 0.0.1")).changed
    assert path.stat().st_mtime_ns == mtime  # idempotent: not even rewritten
    assert not list(path.parent.glob(".*genre-tagger-tmp"))


def _mutagen_genres(path: Path) -> list[str]:
    tags = mutagen.File(path).tags
    if hasattr(tags, "getall"):
        return list(tags["TCON"].text)
    if isinstance(tags, mutagen.mp4.MP4Tags):
        return list(tags["©gen"])
    return list(tags["genre"])


def test_vorbis_fields_keep_their_place_and_spelling(tagged_files: dict[str, Path]) -> None:
    path = tagged_files["flac"]
    f = mutagen.File(path)
    f.tags["genre"] = ["Rock"]  # a lower-case field name, before ALBUM and MOOD
    f.save()
    order = [k for k, _ in mutagen.File(path).tags]
    write_state(path, GenreState(("Rock", "Metal"), "m 1"))
    pairs = list(mutagen.File(path).tags)
    assert [k for k, _ in pairs if k != "GENRE_TAGGER_MODEL"] == [*order[:order.index("genre") + 1], "genre",
                                                                   *order[order.index("genre") + 1:]]
    assert [v for k, v in pairs if k == "genre"] == ["Rock", "Metal"]


def test_m4a_freeform_genre_atom_follows_when_present(tagged_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "freeform.m4a"
    shutil.copy(tagged_files["m4a"], path)
    add_tags(path, freeform_genre=("Electronic",))
    assert read_state(path) == GenreState(("Electronic",), None, ("Electronic",))  # read when ©gen is absent
    write_state(path, GenreState(("Pop", "Disco"), "m 1", ("Pop", "Disco")))
    tags = mutagen.File(path).tags
    assert tags["©gen"] == ["Pop", "Disco"]
    assert [bytes(v) for v in tags["----:com.apple.iTunes:GENRE"]] == [b"Pop", b"Disco"]


def test_files_that_must_not_be_written_are_skipped_with_a_reason(tagged_files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    import fcntl

    target = GenreState(("Jazz",), "m 1")
    read_only = tagged_files["mp3"]
    read_only.chmod(0o444)
    if os.geteuid() != 0:  # root may write anyway; the mode still says no
        assert not os.access(read_only, os.W_OK)
    with pytest.raises(FileSkipped, match="read-only file"):
        write_state(read_only, target)
    read_only.chmod(0o644)

    locked = tagged_files["flac"]
    with open(locked, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(FileSkipped, match="locked by another program"):
            write_state(locked, target)

    linked = tagged_files["ogg"]
    os.link(linked, tmp_path / "second-name.ogg")
    with pytest.raises(FileSkipped, match="2 hard links"):
        write_state(linked, target)

    changed = tagged_files["opus"]
    with pytest.raises(FileSkipped, match="changed since"):
        write_state(changed, target, expected=GenreState(("Somebody else's",)))
    for path in (read_only, locked, linked, changed):
        assert read_state(path) == GenreState()


def test_a_symlink_stays_a_link_to_the_rewritten_file(tagged_files: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "link.wav"
    link.symlink_to(tagged_files["wav"])
    write_state(link, GenreState(("Blues",), "m 1"))
    assert link.is_symlink() and read_state(tagged_files["wav"]).genres == ("Blues",)


def test_policies() -> None:
    empty, users, ours_only = GenreState(), GenreState(("Rock", "Post-Punk")), GenreState(("metal",), "m 1")
    assert plan_genres(empty, ["metal"], "if-empty") == ("metal",)
    assert plan_genres(users, ["metal"], "if-empty") is None  # never clobbers what the user curated
    assert plan_genres(ours_only, ["jazz"], "if-empty", ours=("metal",)) == ("jazz",)  # ours may be updated
    assert plan_genres(users, ["rock", "metal"], "merge") == ("Rock", "Post-Punk", "metal")  # user's spelling kept
    merged_before = GenreState(("Rock", "metal"), "m 1")
    assert plan_genres(merged_before, ["jazz"], "merge", ours=("metal",)) == ("Rock", "jazz")
    assert plan_genres(users, ["metal", "Metal"], "replace") == ("metal",)
    assert plan_genres(users, [], "replace") is None  # nothing decided: nothing written


def _estimate(scores: dict[str, float], threshold: float, multi: bool) -> OutputEstimate:
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    decided = [label for label, s in ranked if s >= threshold][: None if multi else 1]
    return OutputEstimate("x", "x", multi, [LabelScore(label, s) for label, s in ranked], ranked[0][0], ranked[0][1],
                          0.0, decided, not decided, [] if decided else [ranked[0][0]], threshold)


def test_only_decided_music_becomes_a_tag() -> None:
    genre = _estimate({"rock": 0.81, "pop": 0.19}, 0.6, False)
    tags = _estimate({"guitar": 0.9, "punk": 0.7, "jazz": 0.2}, 0.6, True)
    unsure = _estimate({"rock": 0.5, "pop": 0.5}, 0.6, False)
    assert decided_genres({"genre": genre, "tags": tags}) == ("rock",)
    assert decided_genres({"genre": genre, "tags": tags}, ["genre", "tags"]) == ("guitar", "rock", "punk")
    assert decided_genres({"genre": unsure}) == ()
    assert decided_genres({"genre": genre}, music=False) == ()
    assert decided_genres({"genre": genre.as_dict()}) == ("rock",)  # the message form too


def test_an_id3v23_tag_is_upgraded_with_its_other_frames_intact(tagged_files: dict[str, Path]) -> None:
    from mutagen.id3 import ID3

    path = tagged_files["mp3"]
    tags = ID3(path)
    tags.save(v2_version=3)  # as many taggers still write them (the year as TYER)
    before = {k: str(v) for k, v in ID3(path).items() if k != "TCON"}
    write_state(path, GenreState(("Rock", "Jazz"), "m 1"))
    after = ID3(path)
    assert after.version == (2, 4, 0) and list(after["TCON"].text) == ["Rock", "Jazz"]
    assert {k: str(v) for k, v in after.items() if k not in ("TCON", "TXXX:GENRE_TAGGER_MODEL")} == before


def test_a_wav_riff_info_chunk_is_left_byte_for_byte(tagged_files: dict[str, Path], tmp_path: Path) -> None:
    import struct

    path = tmp_path / "info.wav"
    data = bytearray(tagged_files["wav"].read_bytes())
    info = b"INFO" + b"IGNR" + struct.pack("<I", 6) + b"Blues\x00" + b"INAM" + struct.pack("<I", 4) + b"Tit\x00"
    chunk = b"LIST" + struct.pack("<I", len(info)) + info
    data += chunk
    data[4:8] = struct.pack("<I", len(data) - 8)
    path.write_bytes(bytes(data))
    assert ffmpeg_genre(path) == "Blues"
    write_state(path, GenreState(("Jazz", "Funk"), "m 1"))
    assert chunk in path.read_bytes()  # the INFO chunk is untouched; the genres go into the ID3 chunk
    assert read_state(path).genres == ("Jazz", "Funk")
    # FFmpeg reads both chunks, the later one in the file winning: here the INFO chunk after the ID3 one.
    assert ffmpeg_genre(path) == "Blues"


def test_a_file_changed_since_it_was_tagged_is_skipped(tagged_files: dict[str, Path], tmp_path: Path) -> None:
    from service.library import fingerprint
    from service.tagwriter import SKIPPED, TagWriter, WriteSettings

    path = tagged_files["flac"]
    tagged_fp = fingerprint(path)
    f = mutagen.File(path)
    f.tags["COMMENT"] = "edited after tagging"
    f.save()
    library = Library(tmp_path / "library.db")
    try:
        writer = TagWriter(library, WriteSettings(threshold=0.6), "test")
        outputs = {"genre": _estimate({"rock": 0.9, "pop": 0.1}, 0.6, False)}
        outcome = writer.write(1, path, outputs, "m", "1", tagged_fp)
    finally:
        library.close()
    assert outcome.action == SKIPPED and "changed since it was tagged" in outcome.line()
    assert read_state(path) == GenreState()


def test_restore_leaves_genres_a_user_changed_since_unless_forced(tagged_files: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    from service.library import fingerprint
    from service.tagwriter import RESTORED, SKIPPED, WRITTEN, TagWriter, WriteSettings, restore_tags

    path = tagged_files["opus"]
    original = snapshot(path), read_state(path)
    library = Library(tmp_path / "library.db")
    try:
        assert library.discover(path) == "queued"
        track_id = library.get(path).id
        outputs = {"genre": _estimate({"rock": 0.9, "pop": 0.1}, 0.6, False)}
        writer = TagWriter(library, WriteSettings(), "test")
        written = writer.write(track_id, path, outputs, "m", "1", fingerprint(path))
        assert written.action == WRITTEN and read_state(path).genres == ("rock",)
        f = mutagen.File(path)
        f.tags["GENRE"] = ["Krautrock"]  # the user's own choice, after ours
        f.save()
        (kept,) = restore_tags(library)
        assert kept.action == SKIPPED and "changed since genre-tagger wrote them" in kept.reason
        assert read_state(path).genres == ("Krautrock",)
        (forced,) = restore_tags(library, force=True)
        assert forced.action == RESTORED and (snapshot(path), read_state(path)) == original
    finally:
        library.close()


def test_no_music_writes_no_genre(format_files: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    from conftest import encode

    from models import export_tiny_music

    model = export_tiny_music(tmp_path / "tiny-music.onnx")
    quiet = encode(np.zeros(44100 * 12, dtype=np.float32), 44100, tmp_path / "silence.flac", "flac", "flac")
    proc = cli("tag", "--write-tags", "--model", str(model), "--threshold", "0.3", "--library",
               str(tmp_path / "library.db"), str(quiet))
    assert proc.returncode == 0, proc.stderr
    assert "not music, tags left alone" in proc.stdout
    assert read_state(quiet) == GenreState()


KILL_LOOP = """
import sys
from pathlib import Path
from tagger.filetags import GenreState, write_state
paths = [Path(p) for p in sys.argv[1:]]
states = [GenreState(("Old Genre",), "tiny-test 0.0.1"), GenreState(("New", "Genres"), "tiny-test 0.0.2")]
print("ready", flush=True)
i = 0
while True:
    for p in paths:
        write_state(p, states[i % 2])
    i += 1
"""


def test_kill_9_during_writes_leaves_each_file_old_or_new(tagged_files: dict[str, Path]) -> None:
    paths = list(tagged_files.values())
    old, new = GenreState(("Old Genre",), "tiny-test 0.0.1"), GenreState(("New", "Genres"), "tiny-test 0.0.2")
    for p in paths:
        write_state(p, old)
    packets = {p: audio_digest(p) for p in paths}
    others = {p: snapshot(p) for p in paths}
    rng = random.Random(15)
    seen = set()
    for _ in range(22):
        proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, *map(str, paths)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        for p in paths:
            state = read_state(p)  # never unreadable
            assert state in (old, new), (p, state)
            seen.add(state)
            assert audio_digest(p) == packets[p]
    assert seen == {old, new}
    for p in paths:  # the temp copies of killed writers go on the next write
        write_state(p, old)
        assert snapshot(p) == others[p]
    assert not list(paths[0].parent.glob(".*genre-tagger-tmp"))


# -- the command line: tag --write-tags, restore-tags, retag --outdated ------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tagger.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return proc


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models import export_tiny

    return export_tiny(tmp_path_factory.mktemp("models-v2") / "tiny-test.onnx", version="0.0.2")


def test_write_tags_dry_run_idempotent_restore_and_retag(tagged_files: dict[str, Path], tiny_model: Path,
                                                         tiny_v2: Path, tmp_path: Path) -> None:
    db = tmp_path / "library.db"
    files = [tagged_files[s] for s in ("mp3", "flac", "opus", "m4a", "ogg", "wav")]
    add_tags(tagged_files["flac"], genres=("Shoegaze",))  # a user's genre, kept under if-empty
    originals = {p: (snapshot(p), read_state(p)) for p in files}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    common = ["--model", str(tiny_model), "--threshold", "0.3", "--library", str(db), "--alias", "mid=Middle"]

    dry = cli("tag", "--dry-run", *common, *map(str, files))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("(dry run)") == 5 and "Shoegaze kept (its own genres, policy if-empty)" in dry.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes and not db.exists()

    first = cli("tag", "--write-tags", *common, *map(str, files))
    assert first.returncode == 0, first.stderr
    written = {p: read_state(p) for p in files}
    assert written[tagged_files["flac"]] == originals[tagged_files["flac"]][1]
    for p in files:
        if p != tagged_files["flac"]:
            assert written[p].provenance == "tiny-test 0.0.1"
            assert len(written[p].genres) == 1 and written[p].genres[0] in ("low", "Middle", "high")
            assert snapshot(p) == originals[p][0]
    assert _discover(db, files) == ["unchanged"] * 6  # the daemon's watcher sees the tagged files
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = cli("tag", "--write-tags", *common, *map(str, files))
    assert again.returncode == 0 and again.stdout.count("(already so)") == 5
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    # A newer model: only the tracks tagged by 0.0.1 are re-tagged, and their file tags follow.
    cli("tag", "--write-tags", *[a if a != str(tiny_model) else str(tiny_v2) for a in common], str(files[0]))
    counts = _tag_counts(db)
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    retag = cli("library", "--library", str(db), "retag", "--outdated", "--model", str(tiny_v2))
    assert retag.returncode == 0, retag.stderr
    assert "5 re-tagged" in retag.stderr
    after = _tag_counts(db)
    assert {p for p in files if after[str(p)] != counts[str(p)]} == set(files[1:])
    assert {v for _, v in _models(db).values()} == {"0.0.2"}
    assert files[0].stat().st_mtime_ns == mtimes[files[0]]
    for p in files[2:]:
        assert read_state(p).provenance == "tiny-test 0.0.2"
    assert read_state(tagged_files["flac"]) == originals[tagged_files["flac"]][1]  # still the user's

    stats = cli("library", "--library", str(db), "stats")
    assert "genres written into 5 files' tags by 3 runs" in stats.stdout, stats.stdout + stats.stderr
    show = cli("library", "--library", str(db), "show", str(files[0]))
    assert [w["model"] for w in json.loads(show.stdout)["tag_writes"]] == ["tiny-test 0.0.1", "tiny-test 0.0.2"]
    undo_retag = cli("library", "--library", str(db), "restore-tags", "--run", "last")  # the retag run alone
    assert undo_retag.returncode == 0, undo_retag.stderr
    assert all(read_state(p) == written[p] for p in files[1:]) and read_state(files[0]).provenance.endswith("0.0.2")

    one = cli("library", "--library", str(db), "restore-tags", str(files[0]))  # one file, both its runs
    assert one.returncode == 0, one.stderr
    assert (snapshot(files[0]), read_state(files[0])) == originals[files[0]]
    assert read_state(files[2]) == written[files[2]]

    restore = cli("library", "--library", str(db), "restore-tags")
    assert restore.returncode == 0, restore.stderr
    for p in files:
        assert (snapshot(p), read_state(p)) == originals[p]
    assert _discover(db, files) == ["unchanged"] * 6


def _discover(db: Path, files: list[Path]) -> list[str]:
    library = Library(db)
    try:
        return [library.discover(p) for p in files]
    finally:
        library.close()


def _tag_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT path, tag_count FROM tracks"))


def _models(db: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return {p: (m, v) for p, m, v in conn.execute("SELECT path, model, model_version FROM tracks")}


# -- the daemon's [tags] sink ------------------------------------------------------------------------------------


def _after_the_watcher_saw(files: dict[Path, dict], provenance: str, music: Path, db: Path) -> None:
    """Return once the daemon's folder watcher has handled the replacement of ``files`` by its tag writes.

    The files are read until they carry ``provenance`` (the replacement happened: its event is in the watcher's
    queue); then a file that is not audio is dropped in after them, and its error row proves that the watcher
    (one thread, events in order, the same settle time) has decided on the earlier events: a file it queued
    again would be 'pending' (or tagged twice) by then.
    """
    from daemon_helpers import query, wait_until

    assert wait_until(lambda: all(_provenance(p) == provenance for p in files), 60), \
        {p.name: _provenance(p) for p in files}
    marker = music / f"not-audio-{provenance.replace(' ', '-')}.mp3"
    (music.parent / marker.name).write_text("not audio at all\n" * 100)
    os.rename(music.parent / marker.name, marker)
    assert wait_until(lambda: query(db, "SELECT status FROM tracks WHERE path = ?", (str(marker),)) == [("error",)],
                      120), query(db, "SELECT path, status, error FROM tracks")


def _provenance(path: Path) -> str | None:
    try:
        return read_state(path).provenance
    except Exception:  # mid-replacement, or not tagged yet
        return None


def test_daemon_writes_tags_once_and_does_not_retag_its_own_writes(tagged_files: dict[str, Path], tiny_model: Path,
                                                                    tiny_v2: Path, tmp_path: Path) -> None:
    from daemon_helpers import query, start_daemon, stop_daemon, wait_until

    music = tmp_path / "music"
    music.mkdir()
    for suffix in ("mp3", "flac"):
        shutil.copy(tagged_files[suffix], music / f"song.{suffix}")
    originals = {p: snapshot(p) for p in music.iterdir()}
    state = tmp_path / "state"
    # The tiny model's genres need a low threshold; the file tags may not go below the tagging one.
    env = {"GENRE_TAGGER_TAGS_WRITE": "true", "GENRE_TAGGER_TAGS_THRESHOLD": "0.3",
           "GENRE_TAGGER_TAGGING_THRESHOLD": "0.3"}
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0.2", endpoint="", env=env)
    db = state / "library.db"
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tag_writes")[0][0] == 2, 120), \
            (state.parent / "state.log").read_text()
        _after_the_watcher_saw(originals, "tiny-test 0.0.1", music, db)
        rows = query(db, "SELECT status, tag_count FROM tracks WHERE path IN (?, ?)", tuple(map(str, originals)))
        assert rows == [("tagged", 1), ("tagged", 1)]  # tagged once: its own tag writes queue nothing
        assert query(db, "SELECT count(*) FROM tag_writes")[0][0] == 2
    finally:
        assert stop_daemon(daemon) == 0
    for path, before in originals.items():
        state_now = read_state(path)
        assert state_now.provenance == "tiny-test 0.0.1" and state_now.genres[0] in ("low", "mid", "high")
        assert snapshot(path) == before

    # A new model version with retag_outdated: both tracks re-tagged in the background, tags rewritten, once.
    daemon = start_daemon(state, tiny_v2, "--folder", str(music), "--settle", "0.2", "--retag-outdated",
                          endpoint="", env=env)  # the flag, as [tags] retag_outdated = true
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tag_writes")[0][0] == 4, 120), \
            (state.parent / "state.log").read_text()
        _after_the_watcher_saw(originals, "tiny-test 0.0.2", music, db)
        assert query(db, "SELECT status, tag_count, model_version FROM tracks WHERE path IN (?, ?)",
                     tuple(map(str, originals))) == [("tagged", 2, "0.0.2")] * 2
    finally:
        assert stop_daemon(daemon) == 0
    for path, before in originals.items():
        assert read_state(path).provenance == "tiny-test 0.0.2" and snapshot(path) == before


@pytest.mark.parametrize(("key", "value", "message"), [
    ("POLICY", "clobber", "config tags.policy: must be one of if-empty, merge, replace"),
    ("THRESHOLD", "1.5", "config tags.threshold: must be within 0..1"),
    ("ALIASES", "hiphop", "config tags.aliases: 'hiphop' is not LABEL=NAME"),
])
def test_tags_section_errors_name_the_key(tmp_path: Path, key: str, value: str, message: str) -> None:
    from service.config import load_config
    from tagger.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config(env={f"GENRE_TAGGER_TAGS_{key}": value}, extra_roots=[str(tmp_path)])
    assert str(error.value).startswith(message)


def test_a_tags_threshold_below_the_tagging_threshold_is_refused(tmp_path: Path) -> None:
    from service.config import load_config
    from tagger.errors import ConfigError

    config = tmp_path / "genre-tagger.toml"
    config.write_text(f"[folders]\nroots = [{str(tmp_path)!r}]\n[tags]\nwrite = true\nthreshold = 0.3\n")
    proc = subprocess.run([sys.executable, "-m", "tagger.cli", "daemon", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"genre-tagger: error: {config}: tags.threshold: 0.3 is below tagging.threshold 0.6"), proc.stderr

    roots = [str(tmp_path)]
    with pytest.raises(ConfigError, match=re.escape("tags.threshold: 0.5 is below tagging.threshold 0.7")):
        load_config(env={"GENRE_TAGGER_TAGS_RETAG_OUTDATED": "true", "GENRE_TAGGER_TAGS_THRESHOLD": "0.5",
                         "GENRE_TAGGER_TAGGING_THRESHOLD": "0.7"}, extra_roots=roots)
    for tags, tagging in (("0.3", "0.3"), ("0.8", "0.6"), ("0", "0.9")):  # equal, stricter, or the tagging one
        ok = load_config(env={"GENRE_TAGGER_TAGS_WRITE": "true", "GENRE_TAGGER_TAGS_THRESHOLD": tags,
                              "GENRE_TAGGER_TAGGING_THRESHOLD": tagging}, extra_roots=roots)
        assert ok.sinks["tags"].write_threshold(ok.tagging.threshold) == max(float(tags), float(tagging))
    off = load_config(env={"GENRE_TAGGER_TAGS_THRESHOLD": "0.3"}, extra_roots=roots)  # tags not written: no matter
    assert off.sinks["tags"].threshold == 0.3


def test_retag_never_writes_below_the_threshold_it_tags_at(tagged_files: dict[str, Path], tiny_model: Path,
                                                           tiny_v2: Path, tmp_path: Path) -> None:
    """A file written at --threshold 0.3 is re-tagged under a stricter [tagging] threshold: its new result is
    uncertain in the library, so its tags are left as they were (not rewritten at the old 0.3)."""
    db, song = tmp_path / "library.db", tagged_files["ogg"]
    first = cli("tag", "--write-tags", "--model", str(tiny_model), "--threshold", "0.3", "--library", str(db),
                str(song))
    assert first.returncode == 0, first.stderr
    before = read_state(song)
    assert before.provenance == "tiny-test 0.0.1" and before.genres
    from tagger import Tagger

    top = Tagger(tiny_v2, threshold=0.3).tag_file(song).outputs["genre"].confidence
    assert top < 1.0
    strict = f"{(top + 1.0) / 2:.6f}"  # above what the new model gives this file: uncertain at this threshold
    retag = cli("library", "--library", str(db), "retag", "--outdated", "--model", str(tiny_v2),
                env={"GENRE_TAGGER_TAGGING_THRESHOLD": strict})
    assert retag.returncode == 0, retag.stderr
    assert "1 re-tagged, 0 files' tags rewritten" in retag.stderr, retag.stdout + retag.stderr
    assert read_state(song) == before  # still the 0.0.1 write
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT model_version FROM tracks").fetchall() == [("0.0.2",)]
        assert conn.execute("SELECT count(*) FROM genres WHERE decided = 1").fetchone() == (0,)
