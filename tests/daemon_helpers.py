"""Run the real daemon as a subprocess and read its real ZeroMQ messages, validated against the schema."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import zmq

from service.publish import load_schema

VALIDATOR = jsonschema.Draft202012Validator(load_schema())

# A command prefix: the command gets Ctrl-C (SIGINT) as in a terminal even when pytest itself was started from a
# background job (`cmd &` in a script, nohup). Those inherit SIGINT ignored: make then keeps ignoring it (exit 0
# instead of dying of the signal) and Python never raises KeyboardInterrupt, so a test's SIGINT did nothing.
INTERRUPTIBLE = ["env", "--default-signal=INT"]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Subscriber:
    """A SUB socket that collects [topic, message] pairs, validating every message."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)) -> None:
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        for t in topics:
            self.socket.subscribe(t.encode())
        self.messages: list[tuple[str, dict]] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(min(left, 0.1) * 1000)):
                topic, body = self.socket.recv_multipart()
                message = json.loads(body)
                VALIDATOR.validate(message)
                self.messages.append((topic.decode(), message))

    def wait_for(self, predicate: Callable[[list[tuple[str, dict]]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.messages):
                return True
            self.poll(0.2)
        return predicate(self.messages)

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait for a first status heartbeat: from then on nothing the daemon publishes is missed."""
        if not self.wait_for(lambda msgs: any(m["type"] == "status" for _, m in msgs), timeout):
            raise AssertionError("no status heartbeat from the daemon")

    def of_type(self, kind: str) -> list[dict]:
        return [m for _, m in self.messages if m["type"] == kind]

    def close(self) -> None:
        self.socket.close()


def start_daemon(state: Path, model: Path, *args: str, endpoint: str | None = None, env: dict | None = None,
                 prefix: list[str] | None = None) -> subprocess.Popen:
    """Start the daemon on ``state`` with ``model``; its output goes to ``STATE.log`` (:func:`daemon_log`).

    ``endpoint``: where it publishes; "" publishes nothing; None (a test that does not care) a free loopback
    port, never the default tcp://127.0.0.1:5556, which a user's daemon or another test run may hold. The
    endpoint used is ``proc.endpoint``.
    """
    env = {"GENRE_TAGGER_PUBLISH_HEARTBEAT_SECONDS": "0.5", **(env or {})}
    endpoint = free_endpoint() if endpoint is None else endpoint
    cmd = [*(prefix or []), sys.executable, "-m", "tagger.cli", "daemon", "--model", str(model),
           "--state-dir", str(state), "--endpoint", endpoint, *args]
    log = open(state.parent / f"{state.name}.log", "ab")  # noqa: SIM115
    offset = log.tell()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    proc.log_path, proc.log_offset = Path(log.name), offset  # type: ignore[attr-defined]
    proc.endpoint = endpoint  # type: ignore[attr-defined]
    return proc


def daemon_log(proc: subprocess.Popen) -> str:
    """What this run of the daemon (from :func:`start_daemon`) has logged so far."""
    with open(proc.log_path, "rb") as f:  # type: ignore[attr-defined]
        f.seek(proc.log_offset)  # type: ignore[attr-defined]
        return f.read().decode(errors="replace")


def wait_started(proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Wait for this run's startup line in the daemon's log (model loaded, signal handlers installed)."""
    return wait_until(lambda: "genre-tagger daemon: model" in daemon_log(proc), timeout)


def stop_daemon(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


class Suspender:
    """Suspends (SIGSTOP) and continues (SIGCONT) a running daemon for a test, e.g. in the middle of a write."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.suspended = False

    def suspend_when(self, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        """Suspend the daemon as soon as ``predicate()`` holds (looked at every 10 ms, for up to ``timeout`` s);
        it must hold before the daemon ends (else the assertion shows the daemon's log)."""
        wait_until(lambda: predicate() or self.proc.poll() is not None, timeout, interval=0.01)
        assert predicate(), daemon_log(self.proc)
        self.proc.send_signal(signal.SIGSTOP)
        self.suspended = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.suspended = False


@contextlib.contextmanager
def running(proc: subprocess.Popen) -> Iterator[Suspender]:
    """The daemon ``proc`` (from :func:`start_daemon`) for the block, with a :class:`Suspender`; at the end it is
    continued if the block left it suspended, and stopped (SIGTERM) with exit status 0 asserted."""
    suspender = Suspender(proc)
    try:
        yield suspender
    finally:
        if suspender.suspended:
            suspender.resume()
        if proc.poll() is None:
            assert stop_daemon(proc) == 0


class Run:
    """A genre-tagger command (``python -m tagger.cli ARGS``) running now, its stdout and stderr read as they come."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tagger.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.out: list[str] = []
        self.err: list[str] = []
        # Both pipes read in threads: a command that fills one (64 KiB) never blocks, and finish() can time out.
        self._readers = [threading.Thread(target=lambda s=stream, into=lines: into.extend(iter(s.readline, "")),
                                          daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def says(self, text: str, timeout: float = 120.0) -> bool:
        """Whether it prints ``text`` on stderr (before it ends, within ``timeout`` s)."""
        wait_until(lambda: any(text in line for line in self.err) or self.proc.poll() is not None, timeout)
        return any(text in line for line in self.err)

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once it ends; still running after ``timeout`` s, it is killed and
        :class:`subprocess.TimeoutExpired` raised."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(30)
        return code, "".join(self.out), "".join(self.err)


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` or one of its children (the decoding process) has ``path`` open (fds
    and processes that go away while we look are skipped)."""
    for proc in [pid, *children(pid)]:
        try:
            fds = list(Path(f"/proc/{proc}/fd").iterdir())
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(path):
                    return True
            except (FileNotFoundError, PermissionError):
                continue
    return False


def tcp_connected(pid: int, endpoint: str) -> bool:
    """Whether process ``pid`` has an established TCP connection to ``endpoint`` (``tcp://HOST:PORT``), read
    from /proc: a subprocess's subscriber is connected, not merely started, before the test goes on."""
    port = int(endpoint.rsplit(":", 1)[1])
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except (FileNotFoundError, PermissionError):
        return False
    for fd in fds:
        try:
            link = os.readlink(fd)
        except (FileNotFoundError, PermissionError):
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... uid timeout inode
            if fields[9] in inodes and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def children(pid: int) -> list[int]:
    """Direct child process ids of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except FileNotFoundError:
            continue
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except sqlite3.OperationalError:  # the daemon is creating the file
            pass
        time.sleep(interval)
    return predicate()
