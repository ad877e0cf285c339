"""The SQLite library: schema and migrations, one transaction per track, readers never blocked, the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.library import SCHEMA_VERSION, Library, LibraryError, fingerprint
from tagger import Tagger


@pytest.fixture(scope="module")
def tagged_library(tiny_model: Path, realworld: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lib")
    music = folder / "music"
    music.mkdir()
    tagger = Tagger(tiny_model)
    library = Library(folder / "library.db")
    for src in sorted(realworld.rglob("*.opus"))[:3]:
        path = music / src.name
        shutil.copy(src, path)
        assert library.discover(path) == "queued"
        row = library.next_pending()
        assert library.record_result(row.id, tagger.tag_file(path), row.fingerprint)
    bad = music / "bad.mp3"
    bad.write_text("nope")
    library.discover(bad)
    library.record_error(library.next_pending().id, "not a readable audio file")
    library.close()
    return folder / "library.db"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger.cli", *args], capture_output=True, text=True, timeout=120)


def test_schema_wal_and_results(tagged_library: Path) -> None:
    conn = sqlite3.connect(tagged_library)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT status, count(*) FROM tracks GROUP BY status").fetchall()
    assert dict(rows) == {"tagged": 3, "error": 1}
    per_track = conn.execute("SELECT track_id, output, count(*), sum(rank = 1) FROM genres GROUP BY 1, 2").fetchall()
    assert {(out, n, top) for _, out, n, top in per_track} == {("genre", 3, 1), ("tags", 4, 1)}
    views = conn.execute("SELECT view, slices, scores FROM track_views WHERE output = 'genre'").fetchall()
    assert {v for v, _, _ in views} == {"2.56s", "5.12s"}
    assert all(n > 0 and len(json.loads(s)) == 3 for _, n, s in views)


def test_unchanged_files_are_not_queued_again_and_changed_ones_are(tagged_library: Path, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(tagged_library, db)
    library = Library(db)
    path = Path(library.search(None, status="tagged").__next__()["path"])
    assert library.discover(path) == "unchanged"
    path.touch()  # new mtime, same content: fingerprint says unchanged
    assert library.discover(path) == "unchanged"
    assert fingerprint(path) == library.get(path).fingerprint
    library.close()


def test_migration_from_version_1(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tracks (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER, mtime FLOAT, "
                 "fingerprint TEXT, duration_s FLOAT, status TEXT NOT NULL, error TEXT, model TEXT, model_version "
                 "TEXT, tagged_at TEXT, queued_at TEXT, attempts INTEGER DEFAULT 0)")
    conn.execute("INSERT INTO tracks (path, status) VALUES ('/x.mp3', 'tagged')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    library = Library(db)
    assert library.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert library.db.execute("SELECT path, tag_count FROM tracks").fetchall() == [("/x.mp3", 0)]
    library.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(LibraryError, match="newer than this genre-tagger"):
        Library(db)


def test_a_reader_is_not_blocked_while_a_track_is_written(tagged_library: Path, tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    shutil.copy(tagged_library, db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE tracks SET status = 'pending'")
    reader = sqlite3.connect(db, timeout=0.1)
    assert reader.execute("SELECT count(*) FROM tracks WHERE status = 'tagged'").fetchone()[0] == 3
    writer.execute("ROLLBACK")


def test_library_cli(tagged_library: Path, tmp_path: Path) -> None:
    lib = ["library", "--library", str(tagged_library)]
    stats = run_cli(*lib, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["tracks"]["tagged"] == 3
    assert "3 tagged" in run_cli(*lib, "stats").stdout
    listing = run_cli(*lib, "list", "--genre", "LOW", "--min-score", "0.0", "--output", "genre", "--json")
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(rows) == 3 and all(r["label"] == "low" for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["score"])
    errors = run_cli(*lib, "list", "--status", "error").stdout
    assert "bad.mp3" in errors and "not a readable audio file" in errors
    shown = json.loads(run_cli(*lib, "show", rows[0]["path"]).stdout)
    assert shown["status"] == "tagged" and shown["genres"] and shown["views"]
    assert run_cli(*lib, "show", "/nope.mp3").returncode == 1
    top = rows[0]["score"]
    playlist = tmp_path / "low.m3u"
    assert run_cli(*lib, "export-m3u", "low", str(playlist), "--min-score", str(top - 1e-9)).returncode == 0
    lines = playlist.read_text().splitlines()
    assert lines[0] == "#EXTM3U" and lines[1].startswith("#EXTINF:") and lines[2] == rows[0]["path"]
    assert len(lines) == 3
    out = tmp_path / "all.csv"
    assert run_cli(*lib, "export-csv", str(out)).returncode == 0
    table = list(csv.DictReader(out.open()))
    assert {r["output"] for r in table} == {"genre", "tags"}
    assert len({r["path"] for r in table}) == 3
    missing = run_cli("library", "--library", str(tmp_path / "none.db"), "stats")
    assert missing.returncode == 2 and "no library" in missing.stderr


def test_no_music_is_stored_never_decided_and_listed(tmp_path: Path, realworld: Path) -> None:
    import numpy as np
    from conftest import encode

    from models import export_tiny_music

    tagger = Tagger(export_tiny_music(tmp_path / "tiny-music.onnx"))
    music = tmp_path / "music"
    music.mkdir()
    song = music / "song.opus"
    shutil.copy(sorted(realworld.rglob("*.opus"))[0], song)
    silence = encode(np.zeros(8 * 16000, np.float32), 16000, music / "silence.wav", "pcm_s16le", "wav")
    library = Library(tmp_path / "library.db")
    for path in (song, silence):
        library.discover(path)
        row = library.next_pending()
        assert library.record_result(row.id, tagger.tag_file(path), row.fingerprint)
    quiet = library.track(str(silence))
    assert quiet["music"] == 0 and quiet["music_probability"] < 0.5
    assert not any(g["decided"] for g in quiet["genres"])  # a genre of silence is never decided
    assert library.track(str(song))["music"] == 1
    assert library.stats()["music"] == {"music": 1, "no_music": 1, "unknown": 0}
    # A genre search leaves the silence out, whatever its genre scores.
    assert {r["path"] for r in library.search("low", 0.0)} <= {str(song)}
    library.close()
    lib = ["library", "--library", str(tmp_path / "library.db")]
    listed = run_cli(*lib, "list", "--no-music").stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith(str(silence)) and "no music" in listed[0]
    assert "1 music, 1 no music" in run_cli(*lib, "stats").stdout


def test_migration_to_version_3_keeps_old_rows_unknown(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tracks (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER, mtime FLOAT, "
                 "fingerprint TEXT, duration_s FLOAT, status TEXT NOT NULL, error TEXT, model TEXT, model_version "
                 "TEXT, tagged_at TEXT, queued_at TEXT, attempts INTEGER DEFAULT 0, tag_count INTEGER DEFAULT 0)")
    conn.execute("INSERT INTO tracks (path, status) VALUES ('/x.mp3', 'tagged')")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    library = Library(db)
    rows = library.db.execute("SELECT path, music, music_probability FROM tracks").fetchall()
    assert rows == [("/x.mp3", None, None)]
    library.close()


@pytest.mark.parametrize("columns_there", [False, True])
def test_the_v10_migration_adds_level_and_gain_once_and_old_rows_say_unknown(tmp_path: Path, columns_there: bool,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """A v9 library (and one whose v10 columns exist already: idempotent) opens at v10; its tracks' level and gain
    are NULL, shown as unknown."""
    db = tmp_path / "library.db"
    Library(db).close()
    conn = sqlite3.connect(db)
    if not columns_there:
        conn.execute("ALTER TABLE tracks DROP COLUMN level_dbfs")
        conn.execute("ALTER TABLE tracks DROP COLUMN gain_db")
    conn.execute("INSERT INTO tracks (path, status, model) VALUES ('/x.mp3', 'tagged', 'old')")
    conn.execute("PRAGMA user_version = 9")
    conn.commit()
    conn.close()
    # Read-only (library show / list, before the daemon migrated the file): nothing written, shown as unknown.
    old = Library(db, readonly=True)
    assert old.has_levels == columns_there
    track = old.track("/x.mp3")
    assert (track["level_dbfs"], track["gain_db"]) == (None, None) and track["level"].startswith("unknown")
    assert [(r["level_dbfs"], r["gain_db"]) for r in old.search()] == [(None, None)]
    assert old.db.execute("PRAGMA user_version").fetchone()[0] == 9
    assert old.stats()["level"] == {"raised": 0, "unknown": 1}
    assert old.stats()["schema_version"] == 9  # the file's, not this code's: it was not migrated
    old.close()
    from tagger.cli import main

    assert main(["library", "--library", str(db), "stats"]) == 0  # read-only too: still v9 after it
    shown = capsys.readouterr().out
    assert "  1 file tagged before levels were kept: level unknown\n" in shown and "raised" not in shown, shown
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 9
    conn.close()
    for _ in range(2):
        library = Library(db)
        assert library.has_levels
        assert library.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
        assert library.db.execute("SELECT level_dbfs, gain_db FROM tracks").fetchall() == [(None, None)]
        track = library.track("/x.mp3")
        assert (track["level_dbfs"], track["gain_db"]) == (None, None) and track["level"].startswith("unknown")
        assert [(r["level_dbfs"], r["gain_db"]) for r in library.search()] == [(None, None)]
        assert library.stats()["level"] == {"raised": 0, "unknown": 1}
        assert library.stats()["schema_version"] == SCHEMA_VERSION
        library.close()


def _wav(path: Path, seed: int = 0) -> Path:
    from bad_inputs import tones, wav_bytes

    path.write_bytes(wav_bytes(tones(1.0, 8000, seed=seed), 8000))
    return path


def test_a_vanished_files_error_never_attaches_to_its_same_content_successor(tmp_path: Path) -> None:
    library = Library(tmp_path / "library.db")
    a, b = _wav(tmp_path / "a.wav"), tmp_path / "b.wav"
    assert library.discover(a) == "queued"
    row = library.get(a)
    # a.wav vanishes while it is read, and b.wav arrives with the same content: the row follows b.wav ...
    b.write_bytes(a.read_bytes())
    a.unlink()
    assert library.discover(b) == "moved"
    # ... so the reader's "vanished" for a.wav must not mark b.wav failed: b.wav stays queued.
    assert not library.record_error(row.id, "the file vanished while it was being read", force=True, path=a)
    assert library.get(b).status == "pending"
    # A twin that failed is not inherited either: its successor is tried afresh.
    c = _wav(tmp_path / "c.wav", seed=1)
    assert library.discover(c) == "queued"
    library.record_error(library.get(c).id, "some decoder error")
    d = tmp_path / "d.wav"
    d.write_bytes(c.read_bytes())
    c.unlink()
    assert library.discover(d) == "moved"
    assert (library.get(d).status, library.get(d).error) == ("pending", None)
    library.close()


def test_the_wal_is_truncated_at_each_checkpoint(tmp_path: Path) -> None:
    from service.library import WAL_SIZE_LIMIT

    library = Library(tmp_path / "library.db")
    for i in range(3000):
        library.record_skipped(tmp_path / f"{i:05d}-{'x' * 200}.wav", f"not a regular file ({i})")
    wal = tmp_path / "library.db-wal"
    assert wal.stat().st_size <= WAL_SIZE_LIMIT + (1 << 20)
    library.checkpoint()
    assert wal.stat().st_size == 0
    library.close()


def test_writes_wait_for_a_lock_and_say_so(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading

    from service.library import blocked_message

    db = tmp_path / "library.db"
    library = Library(db)
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(6)\n"
                               "c.execute('ROLLBACK')", str(db)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    done = threading.Event()
    writer = threading.Thread(target=lambda: (library.record_skipped(tmp_path / "x.wav", "a FIFO"), done.set()))
    writer.start()
    messages = []
    while not done.wait(0.5):
        messages.append(blocked_message(db))
    writer.join()
    holder.wait()
    assert any(m and m.startswith("library locked by another process for") for m in messages), messages
    assert blocked_message(db) is None
    assert library.get(tmp_path / "x.wav").error == "a FIFO"
    library.close()


def test_retag_dry_run_lists_exactly_what_queue_outdated_queues(tagged_library: Path, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    db = tmp_path / "library.db"
    shutil.copy(tagged_library, db)
    with sqlite3.connect(db) as conn:
        paths = [p for (p,) in conn.execute("SELECT path FROM tracks WHERE status = 'tagged' ORDER BY path")]
        conn.execute("UPDATE tracks SET model_version = '0.0.0' WHERE path = ?", [paths[0]])
        conn.execute("UPDATE tracks SET model = NULL, model_version = NULL WHERE path = ?", [paths[1]])
    dry = run_cli("library", "--library", str(db), "retag", "--outdated", "--dry-run", "--model", str(tiny_model))
    assert dry.returncode == 0, dry.stderr
    listed = [line.split("\t")[0] for line in dry.stdout.splitlines()]
    assert listed == sorted(paths[:2]) and "2 tracks are outdated (dry run)" in dry.stderr
    library = Library(db)
    try:
        assert [p for p, _, _ in library.outdated("tiny-test", "0.0.1")] == listed
        assert library.queue_outdated("tiny-test", "0.0.1") == 2
        assert library.outdated("tiny-test", "0.0.1") == []
    finally:
        library.close()
    with sqlite3.connect(db) as conn:
        assert [p for (p,) in conn.execute("SELECT path FROM tracks WHERE priority = -1 ORDER BY path")] == listed
