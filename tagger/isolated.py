"""Decoding in a child process, so that no file can crash, hang or poison the process that asked.

FFmpeg is C: a hostile file can crash it (a segmentation fault takes the whole process down) or spin in
it (no Python check ever runs again). :class:`IsolatedDecoder` runs :func:`tagger.decode.decode_blocks`
in one long-lived child process and reads the blocks through a pipe, under a watchdog: a child that
dies is reported as that file's error and replaced for the next file; a child that stops making
progress for longer than the file's decoding budget is killed. The samples are the very ones
``decode_blocks`` yields in-process (float32 bytes through the pipe).

Protocol (private to this module): the parent writes one JSON line per file to the child's stdin; the
child answers with frames on stdout, each a kind byte, an 8-byte little-endian length and a payload:
``I`` (JSON: the declared duration), ``B`` (a block of float32 samples), ``S`` (JSON: an excerpt
starts, :class:`tagger.coverage.Segment`), ``E`` (JSON: an error reason), ``D`` (done).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tagger.coverage import Segment
from tagger.decode import DECODE_BUDGET_BASE_S, DEFAULT_BLOCK_SECONDS, decode_budget
from tagger.errors import DecodeError
from tagger.interpreter import start_python

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<cQ")
# Pipe capacity asked of Linux (bytes): a few blocks, so the child decodes ahead while the model runs.
_PIPE_BYTES = 1 << 20
# A decoder that crashes is given one more try in a fresh process before the file counts as an error
# (a crash caused by the machine, not the file, should not cost the file its tags).
CRASH_ATTEMPTS = 2


class IsolatedDecoder:
    """A decoding child process with a watchdog; one file at a time (use one per thread).

    Args:
        budget_base_s: seconds any file may take to open and decode, plus its share per declared
            second (:func:`tagger.decode.decode_budget`); the watchdog kills a child past it.
        slack_s: seconds the watchdog allows beyond that (the child's start and imports).
    """

    def __init__(self, budget_base_s: float = DECODE_BUDGET_BASE_S, slack_s: float = 15.0) -> None:
        self.budget_base_s = budget_base_s
        self.slack_s = slack_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.crashes = 0
        self.timeouts = 0

    # -- public ----------------------------------------------------------------------------------

    def blocks(self, path: str | Path, sample_rate: int, block_seconds: float = DEFAULT_BLOCK_SECONDS,
               coverage: str = "full") -> Iterator[np.ndarray | Segment]:
        """Like :func:`tagger.coverage.decode_coverage` (:func:`tagger.decode.decode_blocks` for full
        coverage), decoded in the child. Raises :class:`DecodeError`, also when the decoder crashed
        (twice) or hung on this file."""
        for attempt in range(1, CRASH_ATTEMPTS + 1):
            delivered = False
            try:
                for block in self._attempt(path, sample_rate, block_seconds, coverage):
                    delivered = True
                    yield block
                return
            except _Crashed as crash:
                self.crashes += 1
                log.warning("%s: the decoder crashed (%s), attempt %d of %d", os.fsdecode(path), crash.how, attempt,
                            CRASH_ATTEMPTS)
                if delivered or attempt == CRASH_ATTEMPTS:  # blocks already handed over cannot be taken back
                    raise DecodeError(path, f"the decoder crashed ({crash.how}) on this file, {attempt} "
                                            f"time{'s' if attempt > 1 else ''}") from None

    def close(self) -> None:
        """Stop the child process (idempotent)."""
        self._kill()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # -- one attempt ------------------------------------------------------------------------------

    def _attempt(self, path: str | Path, sample_rate: int, block_seconds: float,
                 coverage: str = "full") -> Iterator[np.ndarray | Segment]:
        proc = self._child()
        request = {"path": os.fsencode(os.fspath(path)).hex(), "rate": sample_rate, "block_seconds": block_seconds,
                   "coverage": coverage}
        finished = False
        try:
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                raise _Crashed(self._exit_reason(proc)) from None
            budget = self.budget_base_s + self.slack_s
            waited = 0.0
            while True:
                kind, payload, wait = self._frame(proc, budget - waited, path)
                waited += wait
                if kind == b"I":
                    declared = json.loads(payload)["declared_s"]
                    budget = (decode_budget(declared, _size(path)) - DECODE_BUDGET_BASE_S + self.budget_base_s
                              + self.slack_s)
                elif kind == b"B":
                    yield np.frombuffer(payload, dtype=np.float32)
                elif kind == b"S":
                    yield Segment(**json.loads(payload))
                elif kind == b"E":
                    finished = True
                    raise DecodeError(path, json.loads(payload)["reason"])
                elif kind == b"D":
                    finished = True
                    return
                else:
                    raise _Crashed(f"unknown frame {kind!r}")
        finally:
            if not finished:  # left early (an error, a cancellation): the child is mid-file, start afresh
                self._kill()

    def _frame(self, proc: subprocess.Popen, seconds: float, path: str | Path) -> tuple[bytes, bytes, float]:
        started = time.monotonic()
        header = self._read(proc, _HEADER.size, started + seconds, path)
        kind, length = _HEADER.unpack(header)
        payload = self._read(proc, length, started + seconds, path) if length else b""
        return kind, payload, time.monotonic() - started

    def _read(self, proc: subprocess.Popen, n: int, deadline: float, path: str | Path) -> bytes:
        fd = proc.stdout.fileno()
        parts: list[bytes] = []
        while n > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.timeouts += 1
                self._kill()
                raise DecodeError(path, "the decoder made no progress within the file's time budget "
                                        "(killed): a corrupt or hostile file")
            chunk = os.read(fd, min(n, _PIPE_BYTES))
            if not chunk:
                raise _Crashed(self._exit_reason(proc))
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    # -- the child process ------------------------------------------------------------------------

    def _child(self) -> subprocess.Popen:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self._proc
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            boot = ["-c", _CHILD_BOOT, os.path.dirname(os.path.abspath(__file__))]
            # Through /proc/self/exe when this user cannot reach the interpreter's path (tagger.interpreter); a
            # session of its own: a Ctrl-C for the parent is the parent's to handle.
            self._proc = start_python(boot, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            with contextlib.suppress(OSError):  # Linux only; elsewhere the default pipe size just decodes less ahead
                fcntl.fcntl(self._proc.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
            return self._proc

    def _kill(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def _exit_reason(self, proc: subprocess.Popen) -> str:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        with self._lock:
            if self._proc is proc:
                self._proc = None
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit status {code}"


class _Crashed(Exception):
    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


# The child imports the tagger package bare (its __init__ would load ONNX Runtime and the model code):
# decoding needs only tagger.decode, tagger.coverage and tagger.errors (RSS 92 → 63 MB, start 0.5 → 0.2 s).
_CHILD_BOOT = """\
import signal, sys, types
package = types.ModuleType("tagger")
package.__path__ = [sys.argv[1]]
sys.modules["tagger"] = package
signal.signal(signal.SIGINT, signal.SIG_IGN)
from tagger.isolated import serve_forever
serve_forever()
"""


def _size(path: str | Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _serve() -> None:
    """The child: decode each requested file, stream frames, until stdin closes."""
    from tagger.coverage import decode_coverage
    from tagger.decode import _info, _open

    out = sys.stdout.buffer

    def send(kind: bytes, payload: bytes) -> None:
        out.write(_HEADER.pack(kind, len(payload)))
        out.write(payload)

    for line in sys.stdin.buffer:
        request = json.loads(line)
        path = os.fsdecode(bytes.fromhex(request["path"]))
        try:
            declared = None
            with contextlib.suppress(Exception), contextlib.closing(_open(path)) as container:
                # (decode_blocks reports whatever is wrong with the file)
                if container.streams.audio:
                    declared = _info(container, container.streams.audio[0]).duration_s
            send(b"I", json.dumps({"declared_s": declared}).encode())
            out.flush()
            for block in decode_coverage(path, request["rate"], request["block_seconds"],
                                         request.get("coverage", "full")):
                if isinstance(block, Segment):
                    send(b"S", json.dumps({"start_s": block.start_s, "track_s": block.track_s}).encode())
                else:
                    send(b"B", np.ascontiguousarray(block, dtype=np.float32).tobytes())
        except DecodeError as exc:
            send(b"E", json.dumps({"reason": exc.reason}).encode())
        except Exception as exc:  # any failure is this file's error, and the child goes on
            send(b"E", json.dumps({"reason": f"decoder failed ({type(exc).__name__}: {exc})"}).encode())
        else:
            send(b"D", b"")
        out.flush()


def serve_forever() -> None:
    """The child process's main loop (see ``_CHILD_BOOT``)."""
    with contextlib.suppress(BrokenPipeError):  # the parent stopped reading (it moved on, or it stops)
        _serve()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve_forever()
