"""Hostile and unlucky conditions (#17): bad inputs, crashing and hanging decoders, a locked library,
20,000 identical files, a full disk, bad command lines and configs. The daemon and ``tag`` run as
nobody (see tests/unprivileged.py); every outcome is checked against what it must be."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import bad_inputs
import numpy as np
import pytest
from daemon_helpers import Subscriber, free_endpoint, query, stop_daemon, wait_until
from unprivileged import Unprivileged, world_readable_tmp

from tagger.errors import DecodeError


@pytest.fixture(scope="module")
def nobody() -> Unprivileged:
    runner = Unprivileged()
    if runner.skip_reason:
        pytest.skip(runner.skip_reason)
    yield runner
    runner.close()


@pytest.fixture()
def base() -> Path:
    folder = world_readable_tmp("gt-hard-")
    yield folder
    subprocess.run(["chmod", "-R", "u+rwx", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def _model(tiny_model: Path, folder: Path) -> Path:
    model = folder / "model.onnx"
    shutil.copy(tiny_model, model)
    model.chmod(0o644)
    return model


def _start(runner: Unprivileged, state: Path, model: Path, *args: str, endpoint: str = "",
           env: dict | None = None) -> subprocess.Popen:
    cmd = [*runner.command, "-m", "tagger.cli", "daemon", "--model", str(model), "--state-dir", str(state),
           "--endpoint", endpoint, *args]
    log = open(state.parent / f"{state.name}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=runner.cwd,
                            env={**runner.env, "GENRE_TAGGER_PUBLISH_HEARTBEAT_SECONDS": "0.5", **(env or {})})
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    return proc


def _log(proc: subprocess.Popen) -> str:
    return proc.log_path.read_bytes().decode("utf-8", "replace")  # type: ignore[attr-defined]


def _reason(path: str, message: str) -> str:
    return message[len(path) + 2:] if message.startswith(path + ": ") else message


class Tally:
    """Outcome counts for the closing note: kinds, clear errors, crashes, hangs, silent wrong results."""

    def __init__(self, front: str) -> None:
        self.front, self.kinds, self.tagged, self.clear, self.wrong, self.unclear = front, 0, 0, 0, [], []

    def check(self, case: bad_inputs.Case, ok: bool | None, reason: str | None) -> None:
        self.kinds += 1
        if case.expect == bad_inputs.TAGGED:
            if ok:
                self.tagged += 1
            else:
                self.unclear.append(f"{case.kind}: expected a genre, got {reason!r}")
        elif ok:
            self.wrong.append(f"{case.kind}: tagged, but must be an error matching {case.expect!r}")
        elif reason and re.search(case.expect, reason) and "\n" not in reason and "Traceback" not in reason:
            self.clear += 1
        else:
            self.unclear.append(f"{case.kind}: error {reason!r} does not match {case.expect!r}")

    def report(self, crashes: int, hangs: int) -> str:
        return (f"{self.front}: {self.kinds} kinds, {self.tagged} tagged, {self.clear} clear errors, "
                f"{crashes} crashes, {hangs} hangs, {len(self.wrong)} silent wrong results")


def test_every_bad_input_through_tag_as_nobody(tiny_model: Path, base: Path, nobody: Unprivileged) -> None:
    folder = base / "corpus"
    cases = [c for c in bad_inputs.build(folder) if c.tag]
    assert len(cases) >= 40
    model = _model(tiny_model, base)
    paths = [str(bad_inputs.outcome_path(folder, c)) for c in cases]
    started = time.monotonic()
    try:
        proc = subprocess.run([*nobody.command, "-m", "tagger.cli", "tag", "--json", "--model", str(model), *paths],
                              cwd=nobody.cwd, env=nobody.env, capture_output=True, timeout=600)
        hangs = 0
    except subprocess.TimeoutExpired:
        pytest.fail("tag hung on the corpus (600 s)")
    crashes = 0 if proc.returncode in (0, 1) else 1
    results = {}
    for line in proc.stdout.decode().splitlines():
        r = json.loads(line)
        results[r["path"]] = r
    tally = Tally("tag")
    for case, path in zip(cases, paths, strict=True):
        r = results.get(path)
        if r is None:
            crashes += 1
            tally.unclear.append(f"{case.kind}: no result at all")
            continue
        tally.check(case, r["ok"], None if r["ok"] else _reason(path, r["error"]))
    stderr = proc.stderr.decode("utf-8", "replace")
    print(f"\n{tally.report(crashes, hangs)} in {time.monotonic() - started:.0f} s")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert crashes == 0 and proc.returncode == 1, stderr[-3000:]
    assert not tally.wrong, tally.wrong
    assert not tally.unclear, tally.unclear


def test_every_bad_input_through_the_daemon_as_nobody(tiny_model: Path, base: Path, nobody: Unprivileged) -> None:
    staging, music, state = base / "staging", base / "music", base / "state"
    music.mkdir()
    music.chmod(0o777)
    cases = [c for c in bad_inputs.build(staging) if c.daemon]
    assert len(cases) >= 40
    model = _model(tiny_model, base)
    endpoint = free_endpoint()
    sub = Subscriber(endpoint, ("status",))
    daemon = _start(nobody, state, model, "--folder", str(music), "--settle", "0.5", endpoint=endpoint)
    db = state / "library.db"
    started = time.monotonic()
    try:
        sub.wait_connected(120)
        for case in cases:  # renamed in one by one, as a user dropping files would
            os.rename(staging / case.fsname, music / case.fsname)
        where = {bad_inputs.outcome_path(music, c): c for c in cases}

        def outcomes() -> dict[str, tuple[str, str | None]]:
            return {os.fsdecode(p) if isinstance(p, bytes) else p: (status, error) for p, status, error in
                    query(db, "SELECT path, status, error FROM tracks WHERE status IN ('tagged', 'error')")}

        finished = wait_until(lambda: all(str(p) in outcomes() for p in where), 300, 0.5)
        assert daemon.poll() is None, _log(daemon)[-3000:]
        got = outcomes()
        hangs = sum(str(p) not in got for p in where)
        tally = Tally("daemon")
        for path, case in where.items():
            status, error = got.get(str(path), (None, None))
            tally.check(case, status == "tagged", error)
        print(f"\n{tally.report(0, hangs)} in {time.monotonic() - started:.0f} s")
        assert finished, [c.kind for p, c in where.items() if str(p) not in got]
        assert not tally.wrong, tally.wrong
        assert not tally.unclear, tally.unclear

        # Still watching: a good file dropped in last is tagged, and a file written in pauses longer
        # than the settle time is tagged once, after its writer closes it.
        last = music / "last.wav"
        (base / "last.wav").write_bytes(bad_inputs.wav_bytes(bad_inputs.tones(3.0, 16000, seed=9), 16000))
        os.rename(base / "last.wav", last)
        slow = music / "slow.wav"
        data = bad_inputs.wav_bytes(bad_inputs.tones(4.0, 16000, seed=11), 16000)
        with open(slow, "wb") as f:
            for i in range(4):
                f.write(data[i * len(data) // 4:(i + 1) * len(data) // 4])
                f.flush()
                time.sleep(1.2)
        assert wait_until(lambda: query(db, "SELECT status, tag_count FROM tracks WHERE path IN (?, ?)",
                                        (str(last), str(slow))) == [("tagged", 1)] * 2, 120), \
            query(db, "SELECT path, status, error, tag_count FROM tracks WHERE path IN (?, ?)", (str(last), str(slow)))
        assert daemon.poll() is None
        log = _log(daemon)
        assert "Traceback" not in log, log[-3000:]
        for reason in ("FIFO", "socket", "character device", "dangling", "symlink loop", "cannot read folder"):
            assert reason in log, reason
    finally:
        assert stop_daemon(daemon) == 0
        sub.close()
    # The library says it all, also for names that are not UTF-8, without a traceback.
    listing = subprocess.run([sys.executable, "-m", "tagger.cli", "library", "--library", str(db), "list",
                              "--status", "any"], capture_output=True, timeout=60)
    assert listing.returncode == 0 and b"caf\\xe9-\\xff.wav" in listing.stdout, listing.stderr
    shown = subprocess.run([sys.executable, "-m", "tagger.cli", "library", "--library", str(db), "show",
                            os.fsdecode(music / os.fsdecode(b"caf\xe9-\xff.wav"))], capture_output=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "tagged", shown.stderr


def test_a_decoder_crash_or_hang_costs_only_that_file(tmp_path: Path) -> None:
    from test_memory import write_long_wav

    from tagger.decode import decode_file
    from tagger.isolated import IsolatedDecoder

    good = tmp_path / "good.wav"
    good.write_bytes(bad_inputs.wav_bytes(bad_inputs.tones(3.0, 44100, 2), 44100))
    long = write_long_wav(tmp_path / "long.wav", 3600)
    with IsolatedDecoder(budget_base_s=2.0, slack_s=3.0) as decoder:
        blocks = decoder.blocks(long, 16000)
        next(blocks)
        os.kill(decoder.pid, signal.SIGSEGV)
        with pytest.raises(DecodeError, match=r"the decoder crashed \(SIGSEGV\)"):
            for _ in blocks:
                pass
        # A fresh child decodes the next file, sample for sample as in this process.
        np.testing.assert_array_equal(np.concatenate(list(decoder.blocks(good, 16000))), decode_file(good, 16000))
        os.kill(decoder.pid, signal.SIGSTOP)  # a decoder stuck in C: no Python check would ever run
        started = time.monotonic()
        with pytest.raises(DecodeError, match="no progress within the file's time budget"):
            list(decoder.blocks(good, 16000))
        assert time.monotonic() - started < 30
        np.testing.assert_array_equal(np.concatenate(list(decoder.blocks(good, 16000))), decode_file(good, 16000))
        assert decoder.crashes == 1 and decoder.timeouts == 1


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the library's write lock (BEGIN IMMEDIATE) for ``seconds``."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2])); c.execute('ROLLBACK')\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.slow
def test_a_library_locked_for_30_s_and_120_s_loses_nothing(tiny_model: Path, tmp_path: Path) -> None:
    from daemon_helpers import start_daemon

    music, state = tmp_path / "music", tmp_path / "state"
    music.mkdir()
    endpoint = free_endpoint()
    sub = Subscriber(endpoint, ("status", "track"))
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0.3", endpoint=endpoint)
    db = state / "library.db"
    made = 0

    def add(n: int) -> None:
        nonlocal made
        for _ in range(n):
            made += 1
            (tmp_path / "f.wav").write_bytes(bad_inputs.wav_bytes(bad_inputs.tones(3.0, 16000, seed=made), 16000))
            os.rename(tmp_path / "f.wav", music / f"{made:03d}.wav")

    def tagged() -> int:
        return query(db, "SELECT count(*) FROM tracks WHERE status = 'tagged'")[0][0]

    try:
        sub.wait_connected(120)
        add(2)
        assert wait_until(lambda: tagged() == 2, 60)
        for seconds in (30, 120):
            holder = _hold_lock(db, seconds)
            started = time.monotonic()
            sub.messages.clear()
            idle = 0 if seconds == 30 else 60  # files arrive at once, or after a minute of an idle daemon
            while time.monotonic() - started < idle:
                sub.poll(0.5)
            sub.messages.clear()
            add(3)  # discovered, tagged, and kept in memory until the lock goes
            assert sub.wait_for(lambda msgs: any("locked by another process" in m.get("library", "")
                                                 for t, m in msgs if t == "status"), seconds)
            assert daemon.poll() is None
            while holder.poll() is None:  # read the heartbeats while the lock is held
                sub.poll(0.5)
            locked_for = time.monotonic() - started
            assert wait_until(lambda: tagged() == made, 120), query(db, "SELECT path, status, error FROM tracks")
            reported = [int(re.search(r"for (\d+) s", m["library"]).group(1)) for m in sub.of_type("status")
                        if "library" in m]
            print(f"\nlock held {locked_for:.0f} s: status reported it up to {max(reported)} s; "
                  f"{made} files tagged, none lost")
            # Measured from the first write that had to wait (an idle daemon has nothing to write).
            assert max(reported) >= seconds - idle - 15
            assert daemon.poll() is None
        assert all(n == 1 for (n,) in query(db, "SELECT tag_count FROM tracks"))
        assert "Traceback" not in state.parent.joinpath("state.log").read_text()
    finally:
        assert stop_daemon(daemon) == 0
        sub.close()


@pytest.mark.slow
def test_20000_identical_tiny_files_are_all_discovered(tiny_model: Path, tmp_path: Path) -> None:
    from daemon_helpers import start_daemon

    music, state = tmp_path / "music", tmp_path / "state"
    content = bad_inputs.wav_bytes(bad_inputs.tones(0.05, 8000), 8000)
    for i in range(100):
        sub = music / f"{i:03d}"
        sub.mkdir(parents=True)
        for j in range(200):
            (sub / f"{j:03d}.wav").write_bytes(content)
    old = time.time() - 3600
    for p in music.rglob("*.wav"):
        os.utime(p, (old, old))
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "1", endpoint="")
    db = state / "library.db"
    started = time.monotonic()
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks")[0][0] == 20000, 600, 1.0)
        elapsed = time.monotonic() - started
        assert daemon.poll() is None
        log = (tmp_path / "state.log").read_text()
        assert wait_until(lambda: "scan done:" in (tmp_path / "state.log").read_text(), 60)
        scan = re.search(r"scan done: (\d+) files, \d+ queued, in ([\d.]+) s", (tmp_path / "state.log").read_text())
        print(f"\n20000 identical files: all in the library {elapsed:.1f} s after start; the scan reports "
              f"{scan.group(1)} files in {scan.group(2)} s")
        assert int(scan.group(1)) == 20000
        assert "Traceback" not in log
    finally:
        assert stop_daemon(daemon, 30) == 0


def test_a_full_disk_stops_the_work_and_loses_no_result(tiny_model: Path, tmp_path: Path) -> None:
    from daemon_helpers import start_daemon

    if os.geteuid() != 0:
        pytest.skip("the disk-full test mounts a small tmpfs, which needs root (the tests do not run as root)")
    music, state = tmp_path / "music", tmp_path / "state"
    music.mkdir()
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({mounted.stderr.strip()}): no small disk to fill")
    endpoint = free_endpoint()
    sub = Subscriber(endpoint, ("status",))
    daemon = start_daemon(state, tiny_model, "--folder", str(music), "--settle", "0.3", endpoint=endpoint)
    db = state / "library.db"
    try:
        sub.wait_connected(120)
        for i in range(4):  # long enough that some are still queued when the disk fills
            (tmp_path / "f.wav").write_bytes(bad_inputs.wav_bytes(bad_inputs.tones(120.0, 16000, seed=i), 16000))
            os.rename(tmp_path / "f.wav", music / f"{i}.wav")
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks")[0][0] == 4, 60)
        filler = state / "filler"
        with open(filler, "wb", buffering=0) as f:  # the disk is full from here on
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        queued_when_full = query(db, "SELECT count(*) FROM tracks WHERE status = 'pending'")[0][0]
        assert sub.wait_for(lambda msgs: any("disk" in m.get("library", "") for _, m in msgs), 120), \
            (tmp_path / "state.log").read_text()[-2000:]
        time.sleep(3)  # the worker goes on computing what it can, and holds it
        assert daemon.poll() is None
        filler.unlink()  # space returns
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status = 'tagged'")[0][0] == 4, 120), \
            query(db, "SELECT path, status, error FROM tracks")
        assert daemon.poll() is None
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
        print(f"\ndisk full with {queued_when_full} of 4 files still queued: the daemon reported it, kept its "
              "results and wrote all 4 once space returned")
        assert queued_when_full > 0
    finally:
        try:
            assert stop_daemon(daemon) == 0
        finally:
            sub.close()
            subprocess.run(["umount", "-l", str(state)], check=False)


def _cli(runner: Unprivileged | None, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [*runner.command] if runner else [sys.executable]
    return subprocess.run([*command, "-m", "tagger.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=runner.cwd if runner else cwd, env=runner.env if runner else None)


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and all(n in lines[0] for n in needles), proc.stderr
    assert lines[0].startswith("genre-tagger")


def test_every_command_line_and_config_error_is_one_line_and_exit_2(base: Path, nobody: Unprivileged,
                                                                    tiny_model: Path) -> None:
    model = _model(tiny_model, base)
    music = base / "music"
    music.mkdir(mode=0o755)
    readonly = base / "readonly"
    readonly.mkdir(mode=0o755)  # root's: nobody cannot write here
    daemon = ["daemon", "--model", str(model), "--folder", str(music), "--endpoint", ""]
    _one_line(_cli(nobody, *daemon, "--library", str(readonly / "library.db")), str(readonly / "library.db"),
              "cannot open the library")
    _one_line(_cli(nobody, *daemon, "--state-dir", str(readonly / "state")), str(readonly / "state"))
    garbage = base / "garbage.db"
    garbage.write_bytes(np.random.default_rng(3).bytes(8192))
    foreign = base / "beets.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT)")
    for library in (garbage, foreign):
        library.chmod(0o666)
        _one_line(_cli(nobody, *daemon, "--library", str(library)), str(library), "not a genre-tagger library")
        _one_line(_cli(nobody, "library", "--library", str(library), "stats"), str(library),
                  "not a genre-tagger library")
    for toml, needles in [
        (b"[daemon]\nthreads = 2\n[tagging]\nthreshold = 0.5 # caf\xe9\n", ("not UTF-8", "0xe9")),
        (b"[publish]\nheartbeat_seconds = inf\n", ("publish.heartbeat_seconds", "not a finite number")),
        (b"[publish]\nheartbeat_seconds = nan\n", ("publish.heartbeat_seconds", "not a finite number")),
        (b"[daemon]\nthreads = 100000\n[tagging]\nthreshold = 2\ntop_k = 0\n",
         ("daemon.threads", "100000", "tagging.threshold", "tagging.top_k")),  # every error at once
    ]:
        config = base / "bad.toml"
        config.write_bytes(toml)
        config.chmod(0o644)
        _one_line(_cli(nobody, *daemon, "--config", str(config)), *needles)
    for threads in ("-3", "100000", "many"):
        _one_line(_cli(nobody, "tag", "--threads", threads, str(music)), "--threads", threads)
    # A read-only library (file and folder) is still readable by every query.
    made = base / "made"
    made.mkdir(mode=0o755)
    from service.library import Library

    Library(made / "library.db").close()
    (made / "library.db").chmod(0o444)
    made.chmod(0o555)
    for command in (["stats"], ["stats", "--json"], ["list", "--status", "any"]):
        proc = _cli(nobody, "library", "--library", str(made / "library.db"), *command)
        assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr
    made.chmod(0o755)
