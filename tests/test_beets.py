"""The beets plugin against real beets from PyPI, on real files: import, `beet ls -f '$genres'`, genretag,
the tags beets writes, and genre-tagger's library as the cache."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import mutagen
import pytest
from daemon_helpers import query, wait_until
from filetag_helpers import add_tags

from tagger import Tagger

REPO = Path(__file__).resolve().parent.parent
BEET = Path(sys.executable).parent / "beet"


def beet(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BEETSDIR": str(home), "HOME": str(home)}
    proc = subprocess.run([str(BEET), "-c", str(home / "config.yaml"), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def listing(home: Path) -> dict[str, str]:
    out = beet(home, "ls", "-f", "$path|$genres").stdout
    return {Path(line.split("|")[0]).name: line.split("|", 1)[1] for line in out.splitlines()}


@pytest.fixture()
def beets_home(format_files: dict[str, Path], tiny_model: Path, tmp_path: Path) -> Path:
    music = tmp_path / "music"
    music.mkdir()
    for suffix in ("mp3", "flac", "opus"):
        shutil.copy(format_files[suffix], music / f"song.{suffix}")
        add_tags(music / f"song.{suffix}", genres=("Shoegaze",) if suffix == "flac" else ())
    home = tmp_path / "beets"
    home.mkdir()
    (home / "config.yaml").write_text(f"""
directory: {tmp_path / "lib"}
library: {home / "beets.db"}
plugins: [genretagger]
pluginpath: [{REPO / "beetsplug"}]
import:
    write: yes
    copy: no
genretagger:
    model: {tiny_model}
    threshold: 0.3
    aliases: {{mid: Middle}}
    library: {tmp_path / "genre-tagger.db"}
""")
    return home


def test_import_sets_multivalued_genres_writes_them_and_genretag_merges(beets_home: Path, tiny_model: Path,
                                                                      tmp_path: Path) -> None:
    music = tmp_path / "music"
    tagger = Tagger(tiny_model, threshold=0.3, aliases={"mid": "Middle"})
    expected = {p.name: tagger.tag_file(p).outputs["genre"].decided for p in music.iterdir()}
    assert all(len(v) == 1 for v in expected.values())

    beet(beets_home, "import", "-A", "-q", str(music))
    genres = listing(beets_home)
    assert genres["song.mp3"] == expected["song.mp3"][0] and genres["song.opus"] == expected["song.opus"][0]
    assert genres["song.flac"] == "Shoegaze"  # if-empty: the user's genre is kept
    assert list(mutagen.File(music / "song.mp3").tags["TCON"].text) == expected["song.mp3"]  # written on import
    assert mutagen.File(music / "song.opus").tags["GENRE"] == expected["song.opus"]

    pretend = beet(beets_home, "genretag", "--policy", "replace", "-p")
    assert f"Shoegaze → {expected['song.flac'][0]}" in pretend.stdout
    assert listing(beets_home) == genres  # pretend changed nothing

    beet(beets_home, "genretag", "--policy", "merge", "-w", "format:FLAC")
    merged = listing(beets_home)
    assert merged["song.flac"] == f"Shoegaze; {expected['song.flac'][0]}"  # beets' multi-valued field
    assert mutagen.File(music / "song.flac").tags["GENRE"] == ["Shoegaze", expected["song.flac"][0]]
    flex = beet(beets_home, "ls", "-f", "$genretagger_model", "format:FLAC").stdout.strip()
    assert flex == "tiny-test 0.0.1"

    # Albums: each track's own decided genres, and the album's: those decided for at least half its tracks.
    beet(beets_home, "genretag", "-a", "--policy", "replace")
    votes: dict[str, int] = {}
    for decided in expected.values():
        votes[decided[0]] = votes.get(decided[0], 0) + 1
    shared = [g for g, n in sorted(votes.items(), key=lambda kv: -kv[1]) if 2 * n >= len(expected)]
    assert beet(beets_home, "ls", "-a", "-f", "$genres").stdout.strip() == "; ".join(shared)
    assert listing(beets_home) == {name: decided[0] for name, decided in expected.items()}

    # genre-tagger's library is the cache: every file was run through the model once, even after beets
    # rewrote its tags.
    with sqlite3.connect(tmp_path / "genre-tagger.db") as conn:
        counts = dict(conn.execute("SELECT path, tag_count FROM tracks"))
    assert sorted(Path(p).name for p in counts) == sorted(expected) and set(counts.values()) == {1}


def test_beets_writes_wait_for_a_genre_tagger_process_writing_the_file_and_never_write_beside_it(
        beets_home: Path, tiny_model: Path, tmp_path: Path) -> None:
    """A file genre-tagger's daemon is writing (a real second process holds its claim in the library): `beet
    genretag -w` waits for it, with one line naming the process, and writes once it is let go; any other beets
    write of it (`beet modify`) still held after `claim_wait` seconds fails, said so, the file untouched; genretag
    leaves such an item unchanged, in beets' database too, and exits 1. Before, beets wrote the file at once,
    beside the daemon's write."""
    from test_tag_claims import holding

    song = tmp_path / "music" / "song.flac"
    db = tmp_path / "genre-tagger.db"
    beet(beets_home, "import", "-A", "-q", str(tmp_path / "music"))
    (track_id,) = query(db, "SELECT id FROM tracks WHERE path = ?", (str(song),))[0]
    assert mutagen.File(song).tags["GENRE"] == ["Shoegaze"]
    env = {**os.environ, "BEETSDIR": str(beets_home), "HOME": str(beets_home)}
    genretag = [str(BEET), "-c", str(beets_home / "config.yaml"), "genretag", "--policy", "merge", "-w", "format:FLAC"]
    with holding(db, track_id) as holder:
        run = subprocess.Popen(genretag, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(iter(run.stderr.readline, "")), daemon=True)
        reader.start()
        waiting = f"{song}: waiting for genre-tagger process {holder.pid} (the daemon, or another run)"
        assert wait_until(lambda: any(waiting in line for line in err) or run.poll() is not None, 120), err
        assert run.poll() is None and mutagen.File(song).tags["GENRE"] == ["Shoegaze"], err  # not while held
    assert run.wait(120) == 0, "".join(err)
    reader.join(30)
    merged = mutagen.File(song).tags["GENRE"]
    assert merged[0] == "Shoegaze" and len(merged) == 2 and listing(beets_home)["song.flac"] == "; ".join(merged)
    assert query(db, "SELECT count(*) FROM tag_claims") == [(0,)]

    config = beets_home / "config.yaml"
    config.write_text(config.read_text() + "    claim_wait: 0.5\n")
    with holding(db, track_id) as holder:
        modify = subprocess.run([str(BEET), "-c", str(config), "modify", "-y", "-w", "title=Changed", "format:FLAC"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert f"error writing {song}: genre-tagger process {holder.pid} was writing its tags for 0.5 s, not written" \
            in modify.stderr, modify.stdout + modify.stderr
        assert "TITLE" not in mutagen.File(song).tags or mutagen.File(song).tags["TITLE"] != ["Changed"]
        refused = subprocess.run([*genretag[:4], "--policy", "replace", "-w", "format:FLAC"], capture_output=True,
                                 text=True, env=env, timeout=300)
        assert refused.returncode == 1 and "genretag: 1 items left unchanged: genre-tagger was writing their files " \
            "(run genretag again)" in refused.stderr, refused.stdout + refused.stderr
        assert mutagen.File(song).tags["GENRE"] == merged and listing(beets_home)["song.flac"] == "; ".join(merged)
    assert query(db, "SELECT count(*) FROM tag_claims") == [(0,)]

    # A genre write the daemon owes for the file (its result recorded, the write not made yet) survives a beets
    # write of the file's tags: the audio is the same, so it is still owed, and made (before, the daemon dropped
    # it as "file changed", and the file, valid in the cache, was never tagged again).
    from test_tags_owed import _catch_up

    from service.library import Library

    tagger = Tagger(tiny_model, threshold=0.3)
    library = Library(db)
    try:
        assert library.queue_again([track_id]) == 1
        assert library.record_result(track_id, tagger.tag_file(song), library.get(song).fingerprint, owe_tags=True)
        owed_before = library.owed_write(track_id)
    finally:
        library.close()
    beet(beets_home, "modify", "-y", "-w", "title=Renamed", "format:FLAC")
    assert mutagen.File(song).tags["TITLE"] == ["Renamed"]
    library = Library(db)
    try:
        owed = library.owed_write(track_id)
        assert owed is not None and owed.id == owed_before.id and owed.file_is_current()
    finally:
        library.close()
    labels = {o.name: tuple(o.labels) for o in tagger.manifest.outputs}
    _catch_up(db, labels, lambda: query(db, "SELECT count(*) FROM tags_owed") == [(0,)], policy="replace")
    decided = tagger.tag_file(song).outputs["genre"].decided
    assert mutagen.File(song).tags["GENRE"] == decided and mutagen.File(song).tags["TITLE"] == ["Renamed"]
    assert query(db, "SELECT count(*) FROM tag_writes") == [(1,)]


def test_beets_writes_claim_a_file_genre_tagger_knows_under_another_name(beets_home: Path, tiny_model: Path,
                                                                        tmp_path: Path) -> None:
    """genre-tagger's daemon knows one file under its real path while beets reaches it through a symlinked folder,
    and another the other way round (the daemon's name goes through the symlink). beets' writes of both still
    claim the daemon's rows: while a real second process holds them, `beet modify -w` writes neither (one error
    line each, naming it); let go, it writes them and the daemon's rows describe the rewritten files. The plugin
    takes their genres from the daemon's rows and adds no second row for them. Before, both were matched by
    beets' path only: written beside the daemon's write."""
    from test_tag_claims import holding

    from service.library import Library, fingerprint

    real = tmp_path / "real"
    for album, suffix in (("a", "flac"), ("b", "mp3")):
        (real / album).mkdir(parents=True)
        shutil.move(tmp_path / "music" / f"song.{suffix}", real / album / f"song.{suffix}")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    # The daemon's names: the real path of one, a path through the symlink for the other; beets gets the others.
    daemon_names = {"song.flac": real / "a" / "song.flac", "song.mp3": link / "b" / "song.mp3"}
    beets_names = {"song.flac": link / "a" / "song.flac", "song.mp3": real / "b" / "song.mp3"}
    db = tmp_path / "genre-tagger.db"
    tagger = Tagger(tiny_model, threshold=0.3)
    library = Library(db)
    try:
        ids = {}
        for name, path in daemon_names.items():
            library.discover(path)
            ids[name] = library.get(path).id
            assert library.record_result(ids[name], tagger.tag_file(path), library.get(path).fingerprint)
    finally:
        library.close()
    config = beets_home / "config.yaml"  # the two folders hold one album (same tags): beets keeps both
    config.write_text(config.read_text().replace("    copy: no\n", "    copy: no\n    duplicate_action: keep\n"))
    beet(beets_home, "import", "-A", "-q", str(beets_names["song.flac"].parent))
    beet(beets_home, "import", "-A", "-q", str(beets_names["song.mp3"].parent))
    assert {Path(p).name: p for p in beet(beets_home, "ls", "-f", "$path").stdout.split()} == {
        name: str(path) for name, path in beets_names.items()}  # beets keeps the names it was given
    # The daemon's results were the cache: no second row, nothing run through the model again.
    assert sorted(query(db, "SELECT path, tag_count FROM tracks")) == sorted(
        (str(path), 1) for path in daemon_names.values())

    config.write_text(config.read_text() + "    claim_wait: 0.5\n")
    env = {**os.environ, "BEETSDIR": str(beets_home), "HOME": str(beets_home)}
    modify = [str(BEET), "-c", str(config), "modify", "-y", "-w", "title=Changed"]
    titles = {name: mutagen.File(path, easy=True).get("title") for name, path in beets_names.items()}
    assert ["Changed"] not in titles.values()
    with holding(db, ids["song.flac"]) as flac_holder, holding(db, ids["song.mp3"]) as mp3_holder:
        held = subprocess.run(modify, capture_output=True, text=True, env=env, timeout=300)
        for name, holder in (("song.flac", flac_holder), ("song.mp3", mp3_holder)):
            assert f"error writing {beets_names[name]}: genre-tagger process {holder.pid} was writing its tags " \
                "for 0.5 s, not written" in held.stderr, held.stdout + held.stderr
        assert {name: mutagen.File(path, easy=True).get("title") for name, path in beets_names.items()} == titles
    assert query(db, "SELECT count(*) FROM tag_claims") == [(0,)]

    # beets' database took the new titles: `beet write` (as the error line says) writes them now.
    subprocess.run([str(BEET), "-c", str(config), "write"], capture_output=True, text=True, env=env, timeout=300,
                   check=True)
    assert {name: mutagen.File(path, easy=True).get("title") for name, path in daemon_names.items()} == {
        "song.flac": ["Changed"], "song.mp3": ["Changed"]}
    for name, path in daemon_names.items():  # the daemon's rows describe the rewritten files: not tagged again
        assert query(db, "SELECT fingerprint FROM tracks WHERE id = ?", (ids[name],)) == [(fingerprint(path),)]
    assert query(db, "SELECT count(*) FROM tag_claims") == [(0,)]


def test_the_plugin_loads_from_the_installed_namespace_package() -> None:
    code = "import beetsplug.genretagger as p; print(p.GenreTaggerPlugin.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip() == "GenreTaggerPlugin", proc.stderr


def test_genretag_refuses_a_threshold_below_the_configured_one(beets_home: Path) -> None:
    """Results are judged (and cached) at genretagger.threshold: a looser --threshold would set genres that
    genre-tagger's library calls uncertain."""
    env = {**os.environ, "BEETSDIR": str(beets_home), "HOME": str(beets_home)}
    proc = subprocess.run([str(BEET), "-c", str(beets_home / "config.yaml"), "genretag", "--threshold", "0.1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "genretag --threshold 0.1 is below genretagger.threshold 0.3" in proc.stderr, proc.stdout + proc.stderr
    assert beet(beets_home, "genretag", "--threshold", "0.5", "-p").returncode == 0  # stricter is fine
    # A percentage, as genre-tagger tag --threshold takes it; a word is one line naming it.
    assert beet(beets_home, "genretag", "--threshold", "50%", "-p").returncode == 0
    proc = subprocess.run([str(BEET), "-c", str(beets_home / "config.yaml"), "genretag", "--threshold", "half"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip() == (
        "error: genretag --threshold half: not a number (give 0..1, or a percentage like 70%)"), proc.stderr


@pytest.mark.parametrize(("typed", "shown"), [("-5", "-5"), ("soon", "'soon'")])
def test_a_claim_wait_that_is_not_seconds_is_a_clear_error(beets_home: Path, typed: str, shown: str) -> None:
    """`claim_wait` is seconds, 0 or more: a negative one (before: taken as 0, no wait) or a word (before: found
    only at the first claimed write) is one line naming it, before genretag changes anything."""
    config = beets_home / "config.yaml"
    config.write_text(config.read_text() + f"    claim_wait: {typed}\n")
    env = {**os.environ, "BEETSDIR": str(beets_home), "HOME": str(beets_home)}
    proc = subprocess.run([str(BEET), "-c", str(config), "genretag", "-p"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().endswith(
        f"error: claim_wait {shown} is not a number of seconds, 0 or more"), proc.stdout + proc.stderr
