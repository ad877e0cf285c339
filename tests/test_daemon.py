"""The daemon end to end, with real files, a real SQLite file and real ZeroMQ sockets on loopback."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    Subscriber,
    daemon_log,
    free_endpoint,
    holds_open,
    query,
    start_daemon,
    stop_daemon,
    wait_started,
    wait_until,
)

SETTLE = "0.8"


@pytest.fixture()
def library_files(realworld: Path) -> list[Path]:
    return sorted(p for p in realworld.rglob("*") if p.suffix in (".mp3", ".ogg", ".opus"))


def _tagged(db: Path) -> list[tuple]:
    return query(db, "SELECT path, tag_count FROM tracks WHERE status = 'tagged' ORDER BY path")


def test_copied_files_are_tagged_once_moves_keep_tags_and_deletes_are_marked(
        tiny_model: Path, tmp_path: Path, library_files: list[Path]) -> None:
    music, state = tmp_path / "music", tmp_path / "state"
    music.mkdir()
    endpoint = free_endpoint()
    sub = Subscriber(endpoint, ("track", "status"))
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", SETTLE, endpoint=endpoint)
    db = state / "library.db"
    try:
        sub.wait_connected()
        quick, slow = library_files[:4], library_files[4:6]
        for src in quick:
            shutil.copy(src, music / src.name)
        for src in slow:  # written in chunks over ~3 s by one open file, as a slow copy would
            data = src.read_bytes()
            with open(music / src.name, "wb") as f:
                for i in range(10):
                    f.write(data[i * len(data) // 10:(i + 1) * len(data) // 10])
                    f.flush()
                    time.sleep(0.3)
        names = sorted(p.name for p in [*quick, *slow])
        assert wait_until(lambda: len(_tagged(db)) == 6, 120), query(db, "SELECT path, status, error FROM tracks")
        sub.wait_for(lambda msgs: len(sub.of_type("track")) >= 6, 10)
        assert sorted(Path(p).name for p, _ in _tagged(db)) == names
        assert all(count == 1 for _, count in _tagged(db))
        genres = query(db, "SELECT t.path, count(*) FROM genres g JOIN tracks t ON t.id = g.track_id "
                           "WHERE g.output = 'genre' GROUP BY t.path")
        assert len(genres) == 6 and all(n == 3 for _, n in genres)
        assert sorted(Path(m["path"]).name for m in sub.of_type("track")) == names

        first, second, third = (music / n for n in names[:3])
        (music / "sub").mkdir()
        first.rename(music / "renamed.opus" if first.suffix == ".opus" else music / f"renamed{first.suffix}")
        second.rename(music / "sub" / second.name)
        third.unlink()
        renamed = next(music.glob("renamed*"))
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status = 'deleted'")[0][0] == 1
                          and query(db, "SELECT count(*) FROM tracks WHERE path = ?", (str(renamed),))[0][0] == 1
                          and query(db, "SELECT count(*) FROM tracks WHERE path = ?",
                                    (str(music / "sub" / second.name),))[0][0] == 1, 20)
        sub.poll(3.0)
        assert len(sub.of_type("track")) == 6  # no re-tagging after a rename or a move
        assert all(count == 1 for _, count in _tagged(db))
        assert query(db, "SELECT status FROM tracks WHERE path = ?", (str(third),)) == [("deleted",)]
    finally:
        assert stop_daemon(daemon) == 0
        sub.close()
    # A restart rescans: nothing is tagged again, and a file moved while the daemon was down keeps its tags.
    (music / "sub" / second.name).rename(music / second.name)
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", SETTLE, endpoint=free_endpoint())
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE path = ?",
                                        (str(music / second.name),))[0][0] == 1, 30)
        # The rescan's own account: every file found, none queued (a file queued again would be 'pending' now).
        assert wait_until(lambda: "scan done:" in daemon_log(daemon), 60), daemon_log(daemon)
        assert re.search(r"scan done: 5 files, 0 queued, .*\b1 moved\b", daemon_log(daemon)), daemon_log(daemon)
        assert all(count == 1 for _, count in _tagged(db))
        assert len(_tagged(db)) == 5
    finally:
        assert stop_daemon(daemon) == 0


def test_kill_9_at_random_moments_never_loses_or_doubles_a_track(tiny_model: Path, tmp_path: Path,
                                                                 library_files: list[Path]) -> None:
    music, state = tmp_path / "music", tmp_path / "state"
    music.mkdir()
    for src in library_files:
        shutil.copy(src, music / src.name)
    db = state / "library.db"
    rng = random.Random(1234)
    kills = 0
    while kills < 20:
        daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0", endpoint="")
        time.sleep(rng.uniform(0.5, 4.0))
        if daemon.poll() is not None:
            pytest.fail(f"daemon exited early with {daemon.returncode}")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        kills += 1
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
    tagged_before_last_run = len(_tagged(db))
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0", endpoint="")
    try:
        assert wait_started(daemon)
        assert wait_until(lambda: len(_tagged(db)) == len(library_files), 180)
    finally:
        assert stop_daemon(daemon) == 0
    print(f"\n{kills} kill -9s; {tagged_before_last_run} of {len(library_files)} tracks tagged before the last run")
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    rows = query(db, "SELECT path, status, tag_count FROM tracks")
    assert len(rows) == len(library_files)
    assert all(status == "tagged" and count == 1 for _, status, count in rows), rows
    per_track = query(db, "SELECT track_id, output, count(*) FROM genres GROUP BY track_id, output")
    assert {n for _, output, n in per_track if output == "genre"} == {3}


def _as_nobody() -> list[str]:
    """Run the daemon as an unprivileged user when the tests run as root (root reads unreadable files)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_bad_files_end_as_errors_and_the_daemon_keeps_going(tiny_model: Path, tmp_path_factory,
                                                            realworld: Path, library_files: list[Path]) -> None:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="gt-bad-"))
    try:
        base.chmod(0o777)
        staging, music, state = base / "staging", base / "music", base / "state"
        for folder in (staging, music):
            folder.mkdir()
            folder.chmod(0o777)
        model = base / "model.onnx"
        shutil.copy(tiny_model, model)
        model.chmod(0o644)
        (staging / "notes.mp3").write_text("not audio at all\n" * 100)
        (staging / "zero.flac").write_bytes(b"")
        data = (realworld / "asc-music" / "frontiers.mp3").read_bytes()
        (staging / "truncated.mp3").write_bytes(data[: len(data) // 3])
        shutil.copy(realworld / "singularity-music" / "Awakening.ogg", staging / "locked.ogg")
        shutil.copy(realworld / "warzone2100-music" / "menu.opus", staging / "good.opus")
        for p in staging.iterdir():
            p.chmod(0o000 if p.name == "locked.ogg" else 0o644)
        locked, good = music / "locked.ogg", music / "good.opus"
        # A long file that vanishes while it is being read: 2 hours of 8 kHz WAV.
        from test_memory import write_long_wav

        vanishing = write_long_wav(base / "vanishing.wav", 2 * 3600)
        vanishing.chmod(0o644)
        endpoint = free_endpoint()
        sub = Subscriber(endpoint, ("track", "status"))
        daemon = start_daemon(state, model, "--folder", str(music), "--settle", "0.5", endpoint=endpoint,
                              prefix=_as_nobody())
        db = state / "library.db"
        try:
            sub.wait_connected()
            for p in staging.iterdir():
                p.rename(music / p.name)
            assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status IN ('tagged', 'error')")
                              [0][0] == 5, 120), query(db, "SELECT path, status, error FROM tracks")
            moved_in = music / "vanishing.wav"
            shutil.move(vanishing, moved_in)
            assert wait_until(lambda: holds_open(daemon.pid, moved_in), 30)
            moved_in.unlink()
            assert wait_until(lambda: query(db, "SELECT status FROM tracks WHERE path = ?", (str(moved_in),))
                              == [("error",)], 120)
            errors = dict(query(db, "SELECT path, error FROM tracks WHERE status = 'error'"))
            assert "not a readable audio file" in errors[str(music / "notes.mp3")]
            assert "empty file" in errors[str(music / "zero.flac")]
            assert "truncated" in errors[str(music / "truncated.mp3")]
            assert "ermission denied" in errors[str(locked)]
            assert "vanished" in errors[str(moved_in)]
            assert query(db, "SELECT status FROM tracks WHERE path = ?", (str(good),)) == [("tagged",)]
            sub.wait_for(lambda msgs: len(sub.of_type("track")) >= 6, 10)
            failed = {Path(m["path"]).name: m["error"] for m in sub.of_type("track") if not m["ok"]}
            assert set(failed) == {"notes.mp3", "zero.flac", "truncated.mp3", "locked.ogg", "vanishing.wav"}
            assert daemon.poll() is None
        finally:
            assert stop_daemon(daemon) == 0
            sub.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start_idle(model: Path, base: Path, endpoint: str) -> subprocess.Popen:
    music, state = base / "music", base / "state"
    music.mkdir(parents=True)
    return start_daemon(state, model, "--folder", str(music), "--settle", "0", endpoint=endpoint,
                        env={"GENRE_TAGGER_PUBLISH_SEND_HWM": "1", "GENRE_TAGGER_PUBLISH_HEARTBEAT_SECONDS": "0.02"})


def test_a_subscriber_that_never_reads_does_not_slow_tagging(tiny_model: Path, tmp_path: Path,
                                                            library_files: list[Path]) -> None:
    """Two daemons tag the same files side by side, one with a subscriber that never reads. The ZeroMQ sink is
    inline in the tagging worker (it hands each message to the publisher process's queue), so a publisher that
    waited for room, in the daemon or by back-pressure from its process, would stall that daemon outright, and
    one that waited a little per message would fall behind its twin. Side by side, both runs see the same load
    (timed one after the other, a loaded 2-core box once made the second run take 15.3 s against 8.0 s).

    The stuck queue must really be full while the files are tagged: over TCP the kernel's loopback buffers took
    ~700 kB (about 40 s of 50 ms heartbeats) and nothing was ever dropped. Over ipc:// with send HWM 1 and a
    status every 20 ms it fills within a few seconds; the files arrive only once a drop has been counted, so
    every track is tagged with the stuck subscriber full, however fast the machine tags."""
    import zmq

    endpoints = {name: f"ipc://{tmp_path}/{name}.ipc" for name in ("baseline", "stuck")}
    stuck = zmq.Context.instance().socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.connect(endpoints["stuck"])
    stuck.subscribe(b"")
    watcher = Subscriber(endpoints["stuck"], ("status",))  # reads every status: the drops and the progress
    daemons: dict[str, subprocess.Popen] = {}
    took: dict[str, float] = {}
    try:
        for name, endpoint in endpoints.items():
            daemons[name] = _start_idle(tiny_model, tmp_path / name, endpoint)
        assert watcher.wait_for(lambda msgs: any(m["dropped_messages"] > 0 for _, m in msgs), 120), \
            "the stuck subscriber's queue never filled"
        full_at = len(watcher.messages)
        staging = tmp_path / "staging"
        for name in daemons:  # complete files, renamed in: a half-copied file is never what is timed
            (staging / name).mkdir(parents=True)
            for src in library_files:
                shutil.copy(src, staging / name / src.name)
        started = time.monotonic()
        for src in library_files:  # the same file to both, one after the other
            for name in daemons:
                os.rename(staging / name / src.name, tmp_path / name / "music" / src.name)
        deadline = time.monotonic() + 300
        while len(took) < len(daemons) and time.monotonic() < deadline:
            for name in daemons.keys() - took.keys():
                if len(_tagged(tmp_path / name / "state" / "library.db")) == len(library_files):
                    took[name] = time.monotonic() - started
            watcher.poll(0.05)
        assert took.keys() == daemons.keys(), f"not all tagged within 300 s: {took}"
        watcher.poll(0.5)
    finally:
        for daemon in daemons.values():
            assert stop_daemon(daemon) == 0
        stuck.close()
        watcher.close()
    after = [m for _, m in watcher.messages[full_at:] if m["type"] == "status"]
    print(f"\n{len(library_files)} files side by side: {took['baseline']:.2f} s without a subscriber, "
          f"{took['stuck']:.2f} s with one that never reads (its queue full before the files came); "
          f"{after[-1]['dropped_messages']} drops counted")
    assert watcher.messages[full_at - 1][1]["tagged"] == 0  # full before a single track was tagged
    assert after[-1]["tagged"] == len(library_files) and after[-1]["dropped_messages"] > 0
    assert took["stuck"] < 1.5 * took["baseline"] + 2.0


def test_sigterm_mid_track_exits_0_within_5_s_and_keeps_the_track_queued(tiny_model: Path, tmp_path: Path) -> None:
    from test_memory import write_long_wav

    music, state = tmp_path / "music", tmp_path / "state"
    music.mkdir()
    long = write_long_wav(music / "long.wav", 3 * 3600)
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0", endpoint=free_endpoint())
    assert wait_until(lambda: holds_open(daemon.pid, long), 60)
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert time.monotonic() - started < 5.0
    db = state / "library.db"
    assert query(db, "SELECT status FROM tracks") == [("pending",)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def test_a_test_daemon_that_names_no_endpoint_publishes_on_a_free_port_not_the_default(tiny_model: Path,
                                                                                        tmp_path: Path) -> None:
    """Two test runs (or a user's own daemon) on one machine: the default port is held, and a daemon a test
    starts without naming an endpoint still starts and publishes (on a port of its own)."""
    import contextlib
    import socket

    from service.publish import DEFAULT_ENDPOINT

    (tmp_path / "music").mkdir()
    with socket.socket() as default_port:
        with contextlib.suppress(OSError):  # held by someone else already: just as good
            default_port.bind(("127.0.0.1", int(DEFAULT_ENDPOINT.rsplit(":", 1)[1])))
            default_port.listen()
        daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(tmp_path / "music"), "--settle", "0")
        try:
            assert wait_started(daemon) and daemon.poll() is None, daemon_log(daemon)
            endpoint = getattr(daemon, "endpoint", DEFAULT_ENDPOINT)
            assert endpoint != DEFAULT_ENDPOINT
            heartbeats = Subscriber(endpoint, ("status",))
            try:
                heartbeats.wait_connected(60)
            finally:
                heartbeats.close()
        finally:
            assert stop_daemon(daemon) == 0, daemon_log(daemon)


@pytest.mark.parametrize(("toml", "message"), [  # FILE: the TOML file's path (a key it set names it)
    ("[tagging]\nthreshold = 2\n", "error: FILE: tagging.threshold: must be within 0..1"),
    ("[tagging]\nthreshhold = 0.5\n", "error: FILE: unknown key tagging.threshhold"),
    ("[tagging]\ncoverage = 'excerpts:3'\n", "error: FILE: tagging.coverage: must be 'full' or 'excerpts:KxS'"),
    ("[folders]\nroots = ['/etc/hostname']\n", "error: FILE: folders.roots: '/etc/hostname' is not a directory"),
    ("[live]\nenabled = 'maybe'\n", "error: FILE: live.enabled: 'maybe' is not a valid bool"),
    ("[live]\nlevel_floor = 1\n", "error: FILE: live.level_floor: 1 is not a valid bool"),
    ("[publish]\nendpoint = 'http://x'\n", "error: FILE: publish.endpoint: 'http://x': must start with tcp://"),
    ("not toml at all [", "error: FILE: invalid TOML (Expected '=' after a key in a key/value pair (at line 1, "
                          "column 5))"),
    ("[daemon]\n", "error: config folders.roots: nothing to do"),  # no key of the file's is wrong
])
def test_invalid_configuration_is_one_clear_line_and_exit_2(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "genre-tagger.toml"
    config.write_text(toml)
    proc = subprocess.run([sys.executable, "-m", "tagger.cli", "daemon", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message.replace("FILE", str(config)) in lines[0], proc.stderr


def test_a_wrong_value_in_the_toml_file_names_the_file_for_every_key(tmp_path: Path) -> None:
    """A user may have /etc/genre-tagger/genre-tagger.toml and a --config of their own: an error about a key set
    in a file names that file, whatever the key (an inline table is the wrong type for every one of them). Set
    again by an environment variable, the key's error names the variable, not the file."""
    import dataclasses

    from service.config import Config, load_config
    from tagger.errors import ConfigError

    config = tmp_path / "genre-tagger.toml"
    defaults = Config()
    keys = [(name, f.name) for name in defaults.section_names() for f in dataclasses.fields(defaults.section(name))]
    assert len(keys) > 50
    for section, key in keys:
        config.write_text(f"[{section}]\n{key} = {{ a = 1 }}\n")
        with pytest.raises(ConfigError) as error:
            load_config(config, env={}, validate=False)
        assert re.fullmatch(rf"{re.escape(str(config))}: {section}\.{key}: "
                            r"(\{'a': 1\} is not a valid \w+|expected a list, got dict)", str(error.value)), error.value
    config.write_text("[folders]\nsettle_seconds = 5\n[tagging]\nthreshold = 2\n")
    variable = {"GENRE_TAGGER_FOLDERS_SETTLE_SECONDS": "-1"}
    with pytest.raises(ConfigError) as error:
        load_config(config, env=variable, extra_roots=[str(tmp_path)])
    assert str(error.value) == (f"{config}: tagging.threshold: must be within 0..1 (got 2.0); folders.settle_seconds: "
                                "must be within 0..86400 s (got -1.0) (set by GENRE_TAGGER_FOLDERS_SETTLE_SECONDS=-1)")
    config.write_text("[tagging]\nthreshold = 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(config, env={"GENRE_TAGGER_TAGGING_THRESHOLD": "abc"}, extra_roots=[str(tmp_path)])
    assert str(error.value) == ("config tagging.threshold: 'abc' is not a valid float "
                                "(set by GENRE_TAGGER_TAGGING_THRESHOLD=abc)")


def test_the_example_configuration_is_valid_and_documents_every_key() -> None:
    import dataclasses
    import tomllib

    from service.config import Config, load_config

    example = Path(__file__).resolve().parent.parent / "service" / "genre-tagger.toml"
    text = example.read_text()
    config = load_config(example, env={}, validate=False)
    assert config.folders.roots and config.publish.endpoint == "tcp://127.0.0.1:5556"
    documented = tomllib.loads(text)
    defaults = Config()
    assert set(documented) == set(defaults.section_names())  # every core section and every sink's
    for name in defaults.section_names():
        keys = {f.name for f in dataclasses.fields(defaults.section(name))}
        assert set(documented[name]) == keys, name


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread that dies
def test_a_folder_watcher_that_dies_stops_the_daemon_for_a_restart(tiny_model: Path, tmp_path: Path, monkeypatch,
                                                                    caplog) -> None:
    """Without the check, a dead watcher left a daemon that looked healthy but would never see a new file."""
    from service.config import load_config
    from service.daemon import Daemon
    from service.folders import FolderWatcher

    def dies(self, stop) -> None:
        raise SystemExit("watcher gone")  # threading ends such a thread without a word

    monkeypatch.setattr(FolderWatcher, "_run", dies)
    (tmp_path / "music").mkdir()
    config = load_config(None, env={}, overrides={
        "daemon": {"model": str(tiny_model), "state_dir": str(tmp_path / "state"), "jobs": 1},
        "publish": {"endpoint": "", "heartbeat_seconds": 0.2}, "console": {"enabled": False}},
        extra_roots=[str(tmp_path / "music")])
    daemon = Daemon(config)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="folder watcher died"):
        daemon.run()
    assert time.monotonic() - started < 30
    assert any("the folder watcher died" in r.getMessage() for r in caplog.records)


def test_a_file_that_breaks_the_engine_fails_alone_and_the_daemon_goes_on(tiny_model: Path, tmp_path: Path,
                                                                          library_files: list[Path],
                                                                          monkeypatch) -> None:
    """An unexpected exception on one file took the tagging worker down, and the daemon restarted into the
    same file again and again; now that file is an error row and the others are tagged."""
    import threading

    from service.config import load_config
    from service.daemon import Daemon
    from tagger.pipeline import Tagger

    music = tmp_path / "music"
    music.mkdir()
    poison = music / f"poison{library_files[0].suffix}"
    shutil.copy(library_files[0], poison)
    shutil.copy(library_files[1], music / f"fine{library_files[1].suffix}")
    tag_file = Tagger.tag_file

    def breaks_on_poison(self, path, *args, **kwargs):
        if Path(path).name.startswith("poison"):
            raise RuntimeError("ONNX Runtime: something no one expected\nsecond line")
        return tag_file(self, path, *args, **kwargs)

    monkeypatch.setattr(Tagger, "tag_file", breaks_on_poison)
    config = load_config(None, env={}, overrides={
        "daemon": {"model": str(tiny_model), "state_dir": str(tmp_path / "state"), "jobs": 1},
        "folders": {"settle_seconds": 0.0}, "publish": {"endpoint": "", "heartbeat_seconds": 0.2},
        "console": {"enabled": False}}, extra_roots=[str(music)])
    daemon = Daemon(config)
    db = config.library_path
    done = "SELECT count(*) FROM tracks WHERE status IN ('tagged', 'error')"
    stopper = threading.Thread(target=lambda: (wait_until(lambda: db.exists() and query(db, done)[0][0] == 2, 120),
                                               daemon.stop.set(), daemon.wake.set()), daemon=True)
    stopper.start()
    assert daemon.run() == 0  # no "tagging worker died"
    rows = dict(query(db, "SELECT path, status || ': ' || coalesce(error, '') FROM tracks"))
    assert rows == {str(poison): "error: unexpected error: RuntimeError: ONNX Runtime: something no one expected",
                    str(music / f"fine{library_files[1].suffix}"): "tagged: "}
