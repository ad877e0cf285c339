"""What a new user met walking the README and every command's --help (Session 9): each run as that user ran
it, a subprocess on real files, and each answered with one line naming what was typed, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The one line a usage error gets (exit 2), holding every one of ``words``."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("genre-tagger: error: "), proc.stderr
    assert all(word in lines[0] for word in words), (words, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def library(tiny_model: Path, realworld: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real library with one track tagged by the tiny model (labels low, mid, high; bright, dark, busy, calm)."""
    from service.library import Library
    from tagger.pipeline import Tagger

    song = realworld / "warzone2100-music" / "menu.opus"
    db = tmp_path_factory.mktemp("walk") / "library.db"
    result = Tagger(str(tiny_model), coverage="excerpts:1x10").tag_file(song)
    library = Library(db)
    try:
        st = song.stat()
        library.record_file_result(song, result, st.st_size, st.st_mtime, "fingerprint")
    finally:
        library.close()
    return db


def test_readme_states_the_shipped_models_music_threshold() -> None:
    from tagger.model import read_manifest
    from tagger.registry import DEFAULT_MODEL, resolve_model

    stated = re.search(r"below the\s+model's threshold, ([0-9.]+)", (REPO / "README.md").read_text())
    assert stated, "the README no longer says which music threshold the shipped model uses"
    assert float(stated.group(1)) == read_manifest(resolve_model(DEFAULT_MODEL)).music.threshold


def test_write_tags_options_alone_are_refused_not_ignored(tmp_path: Path, realworld: Path) -> None:
    song = str(realworld / "warzone2100-music" / "menu.opus")
    one_error_line(run_cli("tag", "--tag-output", "genre", song), "--tag-output genre", "--write-tags")
    one_error_line(run_cli("tag", "--library", str(tmp_path / "x.db"), song), f"--library {tmp_path / 'x.db'}")
    assert not (tmp_path / "x.db").exists()
    one_error_line(run_cli("tag", "--hop", "0", song), "--hop", "0: must be above 0")


def test_library_exports_to_a_bad_place_and_bad_options_are_one_line(library: Path, tmp_path: Path) -> None:
    lib = ("library", "--library", str(library))
    missing = tmp_path / "no-folder" / "x.m3u"
    one_error_line(run_cli(*lib, "export-m3u", "low", str(missing)), f"{missing}: cannot write")
    one_error_line(run_cli(*lib, "export-csv", str(tmp_path)), f"{tmp_path}: cannot write")
    one_error_line(run_cli(*lib, "export-m3u", "jazz", str(tmp_path / "jazz.m3u")),
                   "jazz: no track has this genre", "low, mid")
    assert not (tmp_path / "jazz.m3u").exists()
    one_error_line(run_cli(*lib, "list", "--status", "bogus"), "--status", "bogus")
    one_error_line(run_cli(*lib, "list", "--min-score", "7"), "--min-score", "7: not within 0..1")
    one_error_line(run_cli(*lib, "list", "--limit", "-1"), "--limit", "-1")
    # A percentage works here as it does for tag --threshold.
    exported = run_cli(*lib, "export-m3u", "mid", str(tmp_path / "mid.m3u"), "--min-score", "0%")
    assert exported.returncode == 0, exported.stderr
    assert "menu.opus" in (tmp_path / "mid.m3u").read_text()


def test_batch_out_on_a_file_and_bad_counts_are_one_line(tmp_path: Path, realworld: Path, tiny_model: Path) -> None:
    pytest.importorskip("pyarrow", reason="batch needs pyarrow (the test extra)")
    broken = tmp_path / "catalogue.parquet"
    broken.write_text("not Parquet")
    one_error_line(run_cli("batch", str(broken), "--out", str(tmp_path / "s")), f"{broken}: not a readable Parquet")
    # Each failed file is named, not only counted.
    manifest = tmp_path / "catalogue.txt"
    manifest.write_text("missing.mp3\n")
    proc = run_cli("batch", str(manifest), "--out", str(tmp_path / "s"), "--model", str(tiny_model), "--jobs", "1")
    assert proc.returncode == 1 and f"genre-tagger: error: {tmp_path / 'missing.mp3'}: no such file" in proc.stderr, \
        proc.stderr
    not_a_folder = tmp_path / "shards"
    not_a_folder.write_text("a file where the shard folder belongs")
    folder = str(realworld / "warzone2100-music")
    one_error_line(run_cli("batch", folder, "--out", str(not_a_folder)), f"--out {not_a_folder}", "not a folder")
    one_error_line(run_cli("batch", folder, "--out", str(tmp_path / "s"), "--shard-rows", "0"), "--shard-rows")
    one_error_line(run_cli("listen", "--timeout", "-1"), "--timeout", "-1")


def test_batch_from_a_relative_manifest_imports_absolute_paths_once(tmp_path: Path, realworld: Path,
                                                                   tiny_model: Path) -> None:
    """`batch catalogue.txt` typed in the catalogue's folder stored 'music/menu.opus' as the path: imported,
    it was a track no other command (nor the daemon) would find. A failure imported twice counted twice."""
    pytest.importorskip("pyarrow", reason="batch needs pyarrow (the test extra)")
    import sqlite3

    (tmp_path / "music").mkdir()
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", tmp_path / "music" / "menu.opus")
    (tmp_path / "catalogue.txt").write_text("music/menu.opus\nmusic/missing.mp3\n")
    proc = run_cli("batch", "catalogue.txt", "--out", "shards", "--model", str(tiny_model), "--jobs", "1",
                   "--coverage", "excerpts:1x10", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    db = tmp_path / "library.db"
    for _ in range(2):
        imported = run_cli("library", "--library", str(db), "import", "shards", cwd=tmp_path)
        assert imported.returncode == 0, imported.stderr
    assert "imported 0 tagged and 0 failed tracks from shards (2 already in the library)" in imported.stderr, \
        imported.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path, status, attempts FROM tracks ORDER BY path").fetchall()
    assert rows == [(str(tmp_path / "music" / "menu.opus"), "tagged", 1),
                    (str(tmp_path / "music" / "missing.mp3"), "error", 1)], rows


def test_bench_leaves_out_a_broken_file_and_names_a_missing_folder(tiny_model: Path, tmp_path: Path,
                                                                  realworld: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", music / "menu.opus")
    (music / "empty.mp3").write_bytes(b"")
    proc = run_cli("bench", str(music), "--model", str(tiny_model), "--repeat", "1", "--live-seconds", "0",
                   "--no-daemon", "--jobs", "", "--out", str(tmp_path / "bench.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"{music / 'empty.mp3'}: empty file (0 bytes): left out of the bench" in proc.stderr
    # Minutes of work say what they are doing.
    assert re.search(r"^genre-tagger bench: file rows: \d rows × 1 files × 1 rounds…$", proc.stderr, re.M), proc.stderr
    assert '"files": 1' in (tmp_path / "bench.json").read_text()
    # The default folder is relative to the repository: from elsewhere, say so.
    one_error_line(run_cli("bench", cwd=tmp_path), "../shared/data/realworld: no such folder", "repository")
    one_error_line(run_cli("bench", "--repeat", "0"), "--repeat")


def test_training_errors_are_the_one_line_every_command_gives(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="training needs the train extra")
    missing = tmp_path / "held-out.csv"
    one_error_line(run_cli("train", "--data", f"csv:{missing}", "--arch", "meza", "--out", str(tmp_path / "run")),
                   f"{missing}: no such file")


def test_a_bad_daemon_setting_names_the_flag_or_variable_that_set_it(tmp_path: Path) -> None:
    """The daemon validates its settings after merging file, environment and flags: the error still names
    what the user typed, not only the setting's name in the TOML file."""
    from service.cli import DAEMON_FLAGS
    from service.config import load_config
    from tagger.errors import ConfigError

    roots = [str(tmp_path)]
    with pytest.raises(ConfigError) as error:
        load_config(env={"GENRE_TAGGER_TAGGING_THRESHOLD": "abc"}, extra_roots=roots)
    assert str(error.value) == ("config tagging.threshold: 'abc' is not a valid float "
                                "(set by GENRE_TAGGER_TAGGING_THRESHOLD=abc)")
    with pytest.raises(ConfigError) as error:
        load_config(env={"GENRE_TAGGER_FOLDERS_SETTLE_SECONDS": "5", "GENRE_TAGGER_TAGGING_THRESHOLD": "5"},
                    overrides={"folders": {"settle_seconds": -1.0}}, extra_roots=roots, flags=DAEMON_FLAGS)
    assert str(error.value) == ("config tagging.threshold: must be within 0..1 (got 5.0) (set by "
                                "GENRE_TAGGER_TAGGING_THRESHOLD=5); folders.settle_seconds: must be within 0..86400 s "
                                "(got -1.0) (set by --settle -1)")
    # Set in the file, the key is what was typed, in that file: the file leads.
    config = tmp_path / "genre-tagger.toml"
    config.write_text("[folders]\nsettle_seconds = -1\n")
    with pytest.raises(ConfigError) as error:
        load_config(config, env={}, extra_roots=roots, flags=DAEMON_FLAGS)
    assert str(error.value) == f"{config}: folders.settle_seconds: must be within 0..86400 s (got -1.0)"
    line = one_error_line(run_cli("daemon", "--state-dir", str(tmp_path / "s"), "--folder", str(tmp_path),
                                  "--endpoint", "", "--jobs", "999"))
    assert line.endswith("(got 999) (set by --jobs 999)"), line


def test_restore_tags_of_a_run_that_never_was_and_keys_into_a_file_are_one_line(library: Path,
                                                                                 tmp_path: Path) -> None:
    one_error_line(run_cli("library", "--library", str(library), "restore-tags", "--run", "5"),
                   "--run 5: no such run of tag writes")
    a_file = tmp_path / "keys"
    a_file.write_text("not a folder")
    one_error_line(run_cli("keys", str(a_file), "--name", "daemon"), f"{a_file}: not a folder")


def test_bench_coverage_names_a_missing_folder_and_counts_a_broken_file(tiny_model: Path, tmp_path: Path,
                                                                        realworld: Path) -> None:
    out = tmp_path / "coverage.json"
    one_error_line(run_cli("bench-coverage", str(tmp_path / "Muisc"), "--out", str(out)),
                   f"{tmp_path / 'Muisc'}: no such folder")
    assert not out.exists()
    music = tmp_path / "music"
    music.mkdir()
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", music / "menu.opus")
    (music / "broken.mp3").write_text("not audio")
    proc = run_cli("bench-coverage", str(music), "--coverages", "excerpts:1x10", "--model", str(tiny_model),
                   "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # some files failed, the others measured
    assert proc.stderr.startswith(f"genre-tagger: error: {music / 'broken.mp3'}: not a readable audio file")
    assert "error" not in proc.stdout and "| music | full | 1 (0) |" in proc.stdout, proc.stdout


def test_tag_on_a_folder_without_audio_names_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no music here")
    proc = run_cli("tag", str(tmp_path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"genre-tagger: error: {tmp_path}: no audio files there"), proc.stderr


def test_daemon_flags_that_qualify_another_are_refused_alone(tmp_path: Path) -> None:
    common = ("daemon", "--state-dir", str(tmp_path / "s"), "--folder", str(tmp_path), "--endpoint", "")
    one_error_line(run_cli(*common, "--tag-policy", "merge"), "--tag-policy merge: only applies with --write-tags")
    one_error_line(run_cli(*common, "--loop"), "--loop: only applies with --live-file")


def test_the_console_says_each_live_genre_change() -> None:
    """`daemon --live` printed nothing about what it heard on its terminal: now a line per change."""
    import io

    from service.config import Config
    from service.events import GenreChanged
    from service.sinks import SinkContext
    from service.sinks.console import ConsoleSection, ConsoleSink

    out = io.StringIO()
    sink = ConsoleSink(ConsoleSection(), SinkContext(Config()), out=out, err=io.StringIO())
    sink.genre_changed(GenreChanged(source="radio", stream_s=6.4, previous=None, current="jazz", confidence=0.72))
    sink.genre_changed(GenreChanged(source="radio", stream_s=42.0, previous="jazz", current="no music",
                                    confidence=0.9, music=False))
    sink.genre_changed(GenreChanged(source="radio", stream_s=50.0, previous="no music", current="jazz",
                                    confidence=0.45, uncertain=True))
    assert out.getvalue().splitlines() == ["live radio  at 6 s  → jazz (72 %)",
                                           "live radio  at 42 s  → no music (90 %)",
                                           "live radio  at 50 s  → uncertain: jazz (45 %)"]


def test_an_unknown_option_points_at_its_commands_help() -> None:
    one_error_line(run_cli("library", "list", "--bogus"), "unrecognized arguments: --bogus",
                   "(see genre-tagger library list --help)")
    one_error_line(run_cli("export", "--run", "runs/x"), "(see genre-tagger export --help)")


def test_library_list_of_a_genre_lists_the_tracks_where_it_was_decided(library: Path) -> None:
    """A track at 1 % jazz is not a jazz track: without --min-score, `list --genre` keeps decided genres."""
    import sqlite3

    with sqlite3.connect(library) as db:
        (undecided,) = db.execute("SELECT label FROM genres WHERE output = 'genre' AND decided = 0 "
                                  "ORDER BY score DESC LIMIT 1").fetchone()
    lib = ("library", "--library", str(library), "list", "--genre", undecided)
    by_default = run_cli(*lib)
    assert by_default.returncode == 0 and by_default.stdout == "", by_default.stdout
    assert f"no track has {undecided} decided" in by_default.stderr, by_default.stderr
    every_score = run_cli(*lib, "--min-score", "0")
    assert every_score.returncode == 0 and "menu.opus\tgenre\t" + undecided in every_score.stdout, every_score


def test_an_unknown_model_name_lists_the_installed_ones() -> None:
    line = one_error_line(run_cli("models", "msd-musicnn"), "msd-musicnn: no such model (installed: ")
    assert "msd-musicnn-gtzan" in line.split("installed: ", 1)[1], line


def test_a_fold_that_does_not_exist_is_refused_before_any_work(tmp_path: Path) -> None:
    """`train --split fold:7/5` trained for minutes on an empty test fold; `fold:x` said "invalid literal for
    int()"."""
    train = ("train", "--data", f"gtzan:{tmp_path}", "--arch", "meza", "--out", str(tmp_path / "run"))
    one_error_line(run_cli(*train, "--split", "fold:7/5"), "--split", "fold:7/5: fold K of N needs")
    one_error_line(run_cli(*train, "--split", "fold:x"), "--split", "fold:x: expected dataset, all or fold:K/N")
    one_error_line(run_cli("evaluate", "--model", "x.onnx", "--data", f"gtzan:{tmp_path}", "--split", "tset"),
                   "--split", "tset")
    one_error_line(run_cli("train", "--data", f"gtzan:{tmp_path}", "--arch", "mezza", "--out", str(tmp_path / "run")),
                   "--arch", "mezza")
    one_error_line(run_cli("compare", "--data", f"gtzan:{tmp_path}", "--folds", "1", "--out", str(tmp_path / "c.md")),
                   "--folds", "1")
    assert not (tmp_path / "run").exists()


def test_a_bare_live_flag_keeps_the_configs_device(tmp_path: Path) -> None:
    """systemd/genre-tagger-live.service runs `daemon --config live.toml --live` with `device = "pulse"` in
    live.toml (systemd/README.md): the bare --live replaced it with the default input."""
    from service.cli import daemon_config
    from tagger.cli import build_parser

    config = tmp_path / "live.toml"
    config.write_text('[live]\ndevice = "pulse"\nsource = "radio"\n')
    parse = build_parser().parse_args
    assert daemon_config(parse(["daemon", "--config", str(config), "--live"])).live.device == "pulse"
    named = daemon_config(parse(["daemon", "--config", str(config), "--live", "hw:1"])).live
    assert named.enabled and named.device == "hw:1"
    assert daemon_config(parse(["daemon", "--live"])).live.device == ""  # no config: the default input


def test_every_option_of_every_command_says_what_it_does_in_its_help() -> None:
    import argparse

    from tagger.cli import build_parser

    silent = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    walk(sub, f"{name} {command}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                silent.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "genre-tagger")
    assert silent == []


def test_library_retag_refuses_a_negative_limit_and_a_policy_it_would_ignore(library: Path) -> None:
    """`--limit -1` was taken (and meant: no limit); `--policy merge` without --write-tags was silently ignored.
    Both refused before the model loads or the library changes."""
    before = library.stat().st_mtime_ns, library.stat().st_size
    retag = ("library", "--library", str(library), "retag", "--outdated", "--dry-run")
    one_error_line(run_cli(*retag, "--limit", "-1"), "--limit", "-1: must be 0 or more")
    one_error_line(run_cli(*retag, "--limit", "ten"), "--limit", "ten: not a whole number")
    one_error_line(run_cli(*retag, "--policy", "merge"), "--policy merge: only applies with --write-tags")
    assert (library.stat().st_mtime_ns, library.stat().st_size) == before


def test_a_state_dir_or_library_in_the_wrong_kind_of_place_says_which(tmp_path: Path) -> None:
    a_file = tmp_path / "state"
    a_file.write_text("a file where the state folder belongs")
    daemon = ("daemon", "--folder", str(tmp_path), "--endpoint", "")
    one_error_line(run_cli(*daemon, "--state-dir", str(a_file)), f"{a_file}: cannot create the state folder (a file is "
                                                                 "in the way)")
    one_error_line(run_cli("library", "--library", str(tmp_path), "stats"), f"{tmp_path}: a folder, not a library file")
    one_error_line(run_cli(*daemon, "--library", str(tmp_path), "--state-dir", str(tmp_path / "s")),
                   f"{tmp_path}: cannot open the library: a folder, not a library file")


def test_the_chart_says_when_only_excerpts_were_analysed(tiny_model: Path, realworld: Path) -> None:
    song = realworld / "warzone2100-music" / "menu.opus"  # 180 s
    proc = run_cli("tag", "--model", str(tiny_model), "--coverage", "excerpts:1x10", str(song))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{song}  (180.0 s, 10 s analysed (excerpts:1x10); slices "), proc.stdout
    full = run_cli("tag", "--model", str(tiny_model), str(song))
    assert full.stdout.startswith(f"{song}  (180.0 s; slices "), full.stdout


def test_a_dangling_symlink_in_a_folder_is_an_error_line_not_left_out(tiny_model: Path, tmp_path: Path,
                                                                     realworld: Path) -> None:
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", tmp_path / "menu.opus")
    (tmp_path / "gone.mp3").symlink_to(tmp_path / "moved-away.mp3")
    (tmp_path / "cover.jpg.mp3").mkdir()  # a folder named like audio is no file: left out
    proc = run_cli("tag", "--model", str(tiny_model), "--coverage", "excerpts:1x10", "--json", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert f"genre-tagger: error: {tmp_path / 'gone.mp3'}: dangling symbolic link" in proc.stderr, proc.stderr
    assert [json.loads(line)["ok"] for line in proc.stdout.splitlines()] == [False, True]  # gone.mp3, menu.opus


def test_keys_never_leave_the_secret_key_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret key is 0600 from the moment it is written, not only once `keys` chmods it afterwards."""
    import zmq.auth

    from tagger.cli import main

    created = zmq.auth.create_certificates
    modes: dict[str, int] = {}

    def create_and_look(folder, name):  # the files as create_certificates leaves them, before any chmod
        public, secret = created(folder, name)
        modes.update(public=os.stat(public).st_mode & 0o777, secret=os.stat(secret).st_mode & 0o777)
        return public, secret

    monkeypatch.setattr(zmq.auth, "create_certificates", create_and_look)
    umask = os.umask(0o022)  # a usual login umask: files 0644 unless told otherwise
    try:
        assert main(["keys", str(tmp_path / "keys"), "--name", "daemon"]) == 0
    finally:
        os.umask(umask)
    assert modes["secret"] & 0o077 == 0, oct(modes["secret"])
    assert (tmp_path / "keys" / "daemon.key_secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "daemon.key").stat().st_mode & 0o777 == 0o644
