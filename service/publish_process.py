"""The ZeroMQ publisher in a process of its own, with a memory cap, restarted when it ends.

Why a process: ZeroMQ keeps every distinct subscription a client sends in a trie that costs about
80 bytes per byte of topic (a 511-byte topic: ~40 KB), and it files them as fast as a client can send,
inside whatever call the owning thread makes on the socket. :class:`service.publish.Publisher` counts
them and closes every connection past :data:`service.publish.MAX_SUBSCRIPTIONS`, but it counts after
ZeroMQ has filed them: on a loaded machine one burst of 20,000 topics grew the daemon by 430 MB before
the count caught up. No setting of ZeroMQ bounds that, so the socket lives here instead: the child's
data segment is capped (``RLIMIT_DATA``, :data:`DEFAULT_MEMORY_LIMIT_MB` above what it needs to start),
a flood that reaches the cap ends the child, not the daemon, and :class:`PublisherProcess` starts a new
one on the same endpoint; subscribers reconnect by themselves and get the cached state replayed.

The daemon side (:class:`PublisherProcess`) has the :class:`~service.publish.Publisher` interface:
``publish`` stamps ``schema``/``seq``/``ts`` and queues the message for a writer thread (it never blocks;
a full queue is a counted drop); the counts come from the child every :data:`STATS_INTERVAL_S`.

Protocol: one JSON object per line. Daemon → child on stdin: the settings first, then ``{"publish":
[topic, body]}`` or ``{"prime": [topic, body]}`` (state for the last-value cache of a restarted child).
Child → daemon on stdout: ``{"bound": endpoint}`` or ``{"error": message}`` once, then ``{"log": [level,
logger, message]}`` (logged again in the daemon) and ``{"stats": {...}}``. The child ignores SIGINT and
SIGTERM (a service manager signals the whole group; the daemon decides) and ends at the end of its stdin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, overload

from service.publish import CACHED_TOPIC_PREFIXES, DEFAULT_ENDPOINT, SCHEMA_ID, Curve, Publisher, check_endpoint
from tagger.errors import ConfigError
from tagger.interpreter import start_python

log = logging.getLogger("service.publish")

DEFAULT_MEMORY_LIMIT_MB = 256
STATS_INTERVAL_S = 0.5
START_TIMEOUT_S = 60.0  # a cold start on a loaded machine: imports and the bind take a few seconds at most
RESTART_BACKOFF_S = (0.2, 30.0)  # first wait and cap; doubles while the child keeps ending
HEALTHY_AFTER_S = 60.0  # a child that lived this long resets the backoff
# A child that sends no counts for this long is hung (stopped, or a thread of it stuck): it is ended and
# replaced. Counts come every STATS_INTERVAL_S; a loaded machine delays them by seconds, not tens.
STALL_S = 30.0
# How a child ends when an allocation fails: our MemoryError exit, glibc's "cannot allocate memory for
# thread-local data" (127), libzmq's alloc_assert (abort).
MEMORY_EXITS = (3, 127, -signal.SIGABRT)
COUNTERS = ("sent", "dropped", "replayed", "ignored_frames", "resets")


class _ChildCount:
    """A read-only count of :class:`PublisherProcess`: the children that ended, plus the running one's last
    report (every :data:`STATS_INTERVAL_S`), plus the daemon side's own attribute ``plus`` where named."""

    def __init__(self, doc: str, plus: str | None = None) -> None:
        self.__doc__ = doc
        self.plus = plus

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in COUNTERS:
            raise TypeError(f"{name!r} is not a count the publisher process reports ({', '.join(COUNTERS)})")
        self.name = name

    @overload
    def __get__(self, publisher: None, owner: type | None = None) -> _ChildCount: ...

    @overload
    def __get__(self, publisher: PublisherProcess, owner: type | None = None) -> int: ...

    def __get__(self, publisher: PublisherProcess | None, owner: type | None = None) -> int | _ChildCount:
        if publisher is None:
            return self  # on the class: the descriptor itself (its doc)
        with publisher._lock:
            own = int(getattr(publisher, self.plus)) if self.plus else 0
            return publisher._ended[self.name] + int(publisher._stats.get(self.name, 0)) + own

    def __set__(self, publisher: PublisherProcess, value: int) -> None:
        raise AttributeError(f"{self.name} is counted, not set")


class PublisherProcess:
    """A :class:`~service.publish.Publisher` in a child process (see the module's docstring).

    Args:
        endpoint: where to bind, ``tcp://HOST:PORT`` or ``ipc:///path`` (``inproc://`` cannot cross
            processes: use :class:`~service.publish.Publisher` for it).
        send_hwm: messages queued per subscriber before drops start.
        curve: CURVE keys (encryption, and only the listed clients may connect); None for none.
        memory_limit_mb: MB the child may allocate beyond what it holds once started; past it the child
            ends and a new one starts.
        queue_size: messages waiting for the child before ``publish`` drops (and counts) them.
        stall_seconds: a child that reports nothing for this long is ended and replaced.

    Raises:
        ConfigError: the endpoint or the CURVE keys are unusable (the child's one-line reason).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, send_hwm: int = 1000, curve: Curve | None = None,
                 memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB, queue_size: int = 10_000,
                 stall_seconds: float = STALL_S) -> None:
        check_endpoint(endpoint)
        if endpoint.startswith("inproc://"):
            raise ConfigError(f"{endpoint!r}: an inproc:// endpoint cannot be served from another process")
        self.endpoint = endpoint
        self.send_hwm = send_hwm
        self.curve = curve is not None
        self._curve = curve
        self.memory_limit_mb = memory_limit_mb
        self.stall_seconds = stall_seconds
        self._last_heard = time.monotonic()
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self.queue_dropped = 0  # messages the child never got (queue full, or the child ended holding them)
        self.restarts = 0
        self._ended: dict[str, int] = dict.fromkeys(COUNTERS, 0)  # counts of children that ended
        self._stats: dict[str, Any] = {}
        self._closing = threading.Event()
        self._child, self._reader = self._start(endpoint)
        self.bound = self._bound
        self._supervisor = threading.Thread(target=self._supervise, name="zmq-publisher", daemon=True)
        self._supervisor.start()
        self._watchdog = threading.Thread(target=self._watch, name="zmq-publisher-watchdog", daemon=True)
        self._watchdog.start()

    # -- the interface of Publisher -------------------------------------------------------------

    def publish(self, topic: str, message: dict[str, Any]) -> bool:
        """Queue [topic, JSON] for the child; False (and a counted drop) when the queue is full."""
        with self._lock:  # queued under the lock that stamps seq: threads publishing at once never swap seqs
            body = {"schema": SCHEMA_ID, "seq": self.seq, "ts": time.time(), **message}
            self.seq += 1
            if topic.startswith(CACHED_TOPIC_PREFIXES):
                self._cache[topic] = body
            try:
                self._queue.put_nowait((topic, body))
            except queue.Full:
                self.queue_dropped += 1
                return False
        return True

    sent = _ChildCount("Messages handed to ZeroMQ (once each, whatever the number of subscribers).")
    dropped = _ChildCount("Messages some subscriber missed (its queue was full) plus those the child never got.",
                          plus="queue_dropped")
    replayed = _ChildCount("Cached messages sent again to subscribers that joined late.")
    ignored_frames = _ChildCount("Inbound frames that were not subscriptions.")
    resets = _ChildCount("Times every connection was closed because of too many subscriptions.")

    @property
    def subscribers(self) -> int:
        with self._lock:
            return int(self._stats.get("subscribers", 0))

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none runs)."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def close(self) -> None:
        """Hand the child what is queued, end it (3 s at most) and stop the supervising thread."""
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._supervisor.join(5.0)
        if self._supervisor.is_alive():  # blocked writing to a child that stopped reading: end that child
            with contextlib.suppress(OSError):
                self._child.kill()
            self._supervisor.join(5.0)

    # -- the child's life -----------------------------------------------------------------------

    def _start(self, endpoint: str) -> tuple[subprocess.Popen, threading.Thread]:
        """Start a child bound to ``endpoint``; raise ConfigError with its reason when it cannot bind."""
        settings = {"endpoint": endpoint, "send_hwm": self.send_hwm, "memory_limit_mb": self.memory_limit_mb,
                    "curve": [self._curve.secret_key, list(self._curve.clients)] if self._curve else None}
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # fewer malloc arenas: less address space per thread
        try:  # through /proc/self/exe when this user cannot reach the interpreter's path (tagger.interpreter)
            child = start_python(["-m", "service.publish_process"], env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, start_new_session=False)
        except OSError as exc:  # the interpreter is gone (its environment rebuilt), or no process can be made now
            raise ConfigError(f"cannot start the publisher process ({sys.executable}): {exc.strerror or exc}") from None
        assert child.stdin is not None and child.stdout is not None
        with contextlib.suppress(OSError, ValueError):  # ended at once: its reader says so
            child.stdin.write(json.dumps(settings).encode() + b"\n")
            child.stdin.flush()
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        self._last_heard = time.monotonic()
        reader = threading.Thread(target=self._read, args=(child.stdout, answer), name="zmq-publisher-reader",
                                  daemon=True)
        reader.start()
        try:
            first = answer.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            first = {"error": f"the publisher process did not start within {START_TIMEOUT_S:.0f} s"}
        if "bound" not in first:
            _end(child, reader)
            raise ConfigError(str(first.get("error", f"the publisher process ended at start ({_why(child)})")))
        self._bound = str(first["bound"])
        with self._lock:
            cached = list(self._cache.items())
        with contextlib.suppress(OSError, ValueError):  # ended meanwhile: the supervisor starts another one
            for topic, body in cached:  # a restarted child replays the daemon's state to late subscribers
                child.stdin.write(json.dumps({"prime": [topic, body]}).encode() + b"\n")
            child.stdin.flush()
        return child, reader

    def _read(self, stdout: IO[bytes], answer: queue.Queue[dict[str, Any]]) -> None:
        """The child's lines: its first answer, its log records and its counts; ends at its end."""
        for line in stdout:
            self._last_heard = time.monotonic()
            try:
                item = json.loads(line)
            except ValueError:
                log.warning("ZeroMQ publisher process: unreadable line %r", line[:200])
                continue
            if "stats" in item:
                with self._lock:
                    self._stats = item["stats"]
            elif "log" in item:
                level, name, message = item["log"]
                logging.getLogger(name).log(int(level), "%s", message)
            else:
                answer.put(item)
        answer.put({})  # its end: a child that ended before answering is not waited for

    def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        while True:
            started = time.monotonic()
            self._feed(self._child)
            child, reader = self._child, self._reader
            if self._closing.is_set():
                _end(child, reader)
                self._retire()
                return
            _end(child, reader)  # it ended by itself, or stopped reading: make sure, and read its last counts
            self._retire()
            code = child.returncode
            why = _why(child)
            if code in MEMORY_EXITS:
                why += f", most likely at its {self.memory_limit_mb} MB cap: a client flooding subscriptions?"
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                backoff = RESTART_BACKOFF_S[0]
            log.warning("ZeroMQ publisher process ended (%s): starting a new one on %s in %.1f s; subscribers "
                        "reconnect by themselves", why, self._bound, backoff)
            while not self._closing.wait(backoff):
                backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
                try:
                    self._child, self._reader = self._start(self._bound)
                except ConfigError as exc:
                    log.error("ZeroMQ publisher process cannot start again: %s; next try in %.1f s", exc, backoff)
                    continue
                with self._lock:
                    self.restarts += 1
                break
            else:
                return

    def _watch(self) -> None:
        """End a child that stopped reporting: the supervisor then replaces it as if it had ended."""
        while not self._closing.wait(1.0):
            child = self._child
            silent = time.monotonic() - self._last_heard
            if child.poll() is None and silent > self.stall_seconds:
                log.warning("ZeroMQ publisher process %d sent nothing for %.0f s (hung?): ending it", child.pid,
                            silent)
                with contextlib.suppress(OSError):
                    child.kill()
                self._last_heard = time.monotonic()  # one kill per silence; the supervisor takes it from here

    def _feed(self, child: subprocess.Popen) -> None:
        """Write queued messages to ``child`` until it ends or the publisher closes."""
        assert child.stdin is not None
        while child.poll() is None:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():  # all handed over (the closing None found no room in a full queue)
                    return
                continue
            if item is None:
                return
            try:
                child.stdin.write(json.dumps({"publish": list(item)}).encode() + b"\n")
                if self._queue.empty():
                    child.stdin.flush()
            except (OSError, ValueError):  # the child ended under our feet
                with self._lock:
                    self.queue_dropped += 1
                return

    def _retire(self) -> None:
        """Fold an ended child's counts into the totals."""
        with self._lock:
            for name in COUNTERS:
                self._ended[name] += int(self._stats.get(name, 0))
            self._stats = {}


def _why(child: subprocess.Popen) -> str:
    """How an ended child ended, in words."""
    code = child.returncode
    return f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"


def _end(child: subprocess.Popen, reader: threading.Thread, timeout: float = 3.0) -> None:
    """Close the child's stdin (it ends by itself), kill it past ``timeout``, and let its reader finish."""
    with contextlib.suppress(OSError, ValueError):
        child.stdin.close()  # type: ignore[union-attr]
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    reader.join(timeout)


# -- the child ----------------------------------------------------------------------------------


class _Outbox:
    """The child's lines to the daemon, written by one thread in the order they were said."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._write, name="zmq-publisher-out", daemon=True)
        self.thread.start()

    def say(self, item: dict[str, Any]) -> None:
        self.lines.put(json.dumps(item).encode() + b"\n")

    def close(self) -> None:
        self.lines.put(None)
        self.thread.join(2.0)

    def _write(self) -> None:
        try:
            while (line := self.lines.get()) is not None:
                self.out.write(line)
                if self.lines.empty():
                    self.out.flush()
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the daemon is gone (killed): nobody reads; this process ends at
            # the end of its stdin. No traceback into the log it shares with the daemon, now or at exit's flush.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())


class _Relay(logging.Handler):
    """Log records of the child as lines for the daemon's log."""

    def __init__(self, outbox: _Outbox) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.outbox.say({"log": [record.levelno, record.name, message]})


def _data_mb() -> float:
    """This process's data segment (what RLIMIT_DATA counts), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_main() -> int:
    """Run a Publisher for the daemon that started this process (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outbox = _Outbox(sys.stdout.buffer)
    root = logging.getLogger()
    root.handlers[:] = [_Relay(outbox)]
    root.setLevel(logging.INFO)
    settings = json.loads(sys.stdin.buffer.readline() or b"{}")
    curve = Curve(settings["curve"][0], tuple(settings["curve"][1])) if settings.get("curve") else None
    try:
        publisher = Publisher(settings["endpoint"], int(settings["send_hwm"]), curve, exit_on_memory_error=True)
    except ConfigError as exc:
        outbox.say({"error": str(exc)})
        outbox.close()
        return 2
    done = threading.Event()

    def report() -> None:
        while True:
            ended = done.wait(STATS_INTERVAL_S)
            if not publisher.reading():  # its subscription reader died: counts and cache would go stale
                os._exit(4)
            stats = {name: getattr(publisher, name) for name in COUNTERS}
            outbox.say({"stats": {**stats, "subscribers": publisher.subscribers}})
            if ended:
                return

    reporter = threading.Thread(target=report, name="zmq-publisher-stats", daemon=True)
    reporter.start()
    # Cap what a flood can make ZeroMQ allocate (every thread is started: their stacks count too): past
    # it allocations fail and this process ends.
    limit = int((_data_mb() + int(settings["memory_limit_mb"])) * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an ended child is expected, not a core to keep
    outbox.say({"bound": publisher.bound})
    try:
        for line in sys.stdin.buffer:
            item = json.loads(line)
            if "publish" in item:
                publisher.publish(*item["publish"])
            elif "prime" in item:
                publisher.prime(*item["prime"])
    except MemoryError:
        os._exit(3)  # past the cap: end now, the daemon starts a new one
    finally:
        publisher.close()
        done.set()
        reporter.join(2.0)
        outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
