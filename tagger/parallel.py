"""Several files at once: worker processes, each with the model loaded once.

Processes rather than threads: ONNX Runtime runs with the GIL released, but PyAV holds it while it
demuxes, decodes and resamples, which is about half of a file's CPU time on the fast path (py-spy
``--gil``, 6 realworld tracks: 3.0 of 5.6 CPU-seconds). Threads sharing one model then queue for the
GIL: on a loaded 2-core machine two threads sharing one model used 15 % more CPU for the same files
than one thread (GIL hand-overs) where a worker process used 2 % more, and two separate ``tag``
processes ran 1.4× the files per second of one (issue #18; ``docs/scaling.md`` has the runs). Each
worker process costs one more copy of ONNX Runtime and the model (about 140 MB with the default model).

One job runs in the calling process, without any worker (exactly the code path of a plain
:meth:`Tagger.tag_file` loop). With several, one of them still runs here (it starts at once, while the
workers load their model) and the others in worker processes; each gets one intra-op thread
(:func:`engine_options_for_jobs`): the cores are split between files instead of inside one call.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tagger.engine import EngineOptions, usable_cores
from tagger.errors import Cancelled, TaggerError

if TYPE_CHECKING:
    from tagger.pipeline import Tagger, TrackResult

log = logging.getLogger(__name__)

# Files handed to the jobs at once, the largest first (by size in bytes), while the results come back in
# input order: so that the run does not end on one long file while the other jobs have nothing left. The
# next window is queued behind this one, so the jobs never wait between windows; at most two windows of
# results are held.
DISPATCH_WINDOW = 64
# Files handed to each worker process at once: the one it tags and the next. With one, a worker waited
# ~20 ms between files for this process to hand it the next (a few thread hand-offs, each waiting for the
# GIL that the local job's decoding holds): 2 jobs on 2 cores, 23 files, 0.12 s idle per worker.
WORKER_FILES_AHEAD = 2
# A pool whose workers died this many times stops (a model that loads here but not in a worker, say).
MAX_RESTARTS = 3


def default_jobs(cores: int | None = None) -> int:
    """Files tagged at once by default: one per usable core.

    Each of them then runs with one intra-op thread and decodes in the model's thread
    (:func:`decode_ahead_for_jobs`), keeping one core busy: no core idle, none oversubscribed.
    """
    return max(1, cores if cores is not None else usable_cores())


def decode_ahead_for_jobs(jobs: int, cores: int | None = None) -> bool:
    """Whether each of ``jobs`` jobs decodes in a thread of its own (:meth:`Tagger.tag_file`'s
    ``decode_ahead``): only when each job has two cores or more (``cores // jobs >= 2``).

    The thread lets one job use a second core, but it costs CPU (hand-offs between the threads, the
    GIL PyAV holds while it decodes). Once the jobs fill the cores, that is all it does. Measured on 2 cores
    (23 realworld and FMA files, quiet machine): one job 8.26 s and 13.0 CPU-seconds with the thread, 12.20 s
    and 12.19 CPU-seconds without; two jobs with the thread used 13.04 CPU-seconds.
    """
    cores = cores if cores is not None else usable_cores()
    return cores // max(1, jobs) >= 2


def engine_options_for_jobs(options: EngineOptions, jobs: int, cores: int | None = None) -> EngineOptions:
    """``options`` for one of ``jobs`` workers.

    One job keeps the model's own default (every core but the decoding one). With several, and no thread
    count set by the user, each session gets the cores left per job less the decoding thread, at least
    one: ``max(1, cores // jobs - 1)``.
    """
    if jobs <= 1 or options.intra_op_threads:
        return options
    cores = cores if cores is not None else usable_cores()
    return replace(options, intra_op_threads=max(1, cores // jobs - 1))


@dataclass(frozen=True)
class FileOutcome:
    """One file's result, or the one-line error that stopped it (exactly one of the two is set)."""

    index: int
    path: str | Path  # a URL stays a string
    result: TrackResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


def tag_one(tagger: Tagger, index: int, path: str | Path, cancelled: Callable[[], bool] | None = None,
            **tag_options: Any) -> FileOutcome:
    """Tag one file; a bad file (:class:`TaggerError`, :class:`OSError`) becomes an error outcome.
    :class:`Cancelled` is raised, not turned into an outcome."""
    try:
        return FileOutcome(index, path, tagger.tag_file(path, cancelled=cancelled, **tag_options))
    except Cancelled:
        raise
    except TaggerError as exc:
        return FileOutcome(index, path, error=str(exc))
    except OSError as exc:
        return FileOutcome(index, path, error=f"{path}: {exc.strerror or exc}")


# -- worker processes --------------------------------------------------------------------------------

_worker_tagger: Tagger | None = None


def _init_worker(arguments: dict[str, Any], nice: int) -> None:
    global _worker_tagger
    # Ctrl-C reaches the whole process group: the parent decides what stops, workers do not die mid-file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice > 0:
        os.nice(nice)
    from tagger.pipeline import Tagger

    _worker_tagger = Tagger(**arguments)
    _worker_tagger.prepare()


def _tag_in_worker(index: int, path: str | Path, tag_options: dict[str, Any]) -> FileOutcome:
    assert _worker_tagger is not None, "worker used before its initialiser ran"
    return tag_one(_worker_tagger, index, path, **tag_options)


_STOP = object()  # queued by WorkerPool.close, one per slot thread


class WorkerPool:
    """Tags files on ``jobs`` slots: one in this process with ``tagger`` itself, the others in ``jobs - 1``
    worker processes, each holding a :class:`~tagger.pipeline.Tagger` built like ``tagger``
    (:attr:`Tagger.arguments`, with :func:`engine_options_for_jobs`).

    The local slot starts at once, while the workers start and load their model (0.3-0.4 CPU-seconds
    each with the default model), and the model is in memory ``jobs`` times, not ``jobs + 1``.
    :meth:`submit` queues a file and returns a future of its :class:`FileOutcome`; free slots take files
    in the order they were submitted. Each worker process has :data:`WORKER_FILES_AHEAD` files handed to it
    at once (the one it tags and the next), so that it never waits for this process between files. A worker that dies
    (a crash in a decoder, the out-of-memory killer) is replaced; its file is tried once more in the new
    worker and, if that dies too, ends as an error outcome. ``nice`` lowers the priority of the local
    slot's thread and of the workers (live audio in the same daemon keeps its own). :meth:`close` stops
    everything at once; files being tagged are abandoned.
    """

    def __init__(self, tagger: Tagger, jobs: int, nice: int = 0) -> None:
        arguments = dict(tagger.arguments)
        arguments["engine_options"] = engine_options_for_jobs(arguments.get("engine_options") or EngineOptions(),
                                                              jobs)
        self.tagger = tagger
        self.arguments = arguments
        self.jobs = max(1, jobs)
        self.nice = nice
        # Each job decodes in its own thread only when it has two cores or more (decode_ahead_for_jobs).
        self.decode_ahead = decode_ahead_for_jobs(self.jobs)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._restarts = 0
        self._executor: ProcessPoolExecutor | None = self._start() if self.jobs > 1 else None
        tagger.prepare()
        slots = 1 + (self.jobs - 1) * WORKER_FILES_AHEAD  # slot 0 tags here, the others feed the workers
        self._slots = [threading.Thread(target=self._run_slot, args=(i,), name=f"tag-{i}", daemon=True)
                       for i in range(slots)]
        for slot in self._slots:
            slot.start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: this process has ONNX Runtime's and other threads, which a forked child would lack.
        executor = ProcessPoolExecutor(self.jobs - 1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(self.arguments, self.nice))
        # A spawned executor starts a process per call submitted while none is idle: start them all now, so
        # that they load the model while this process prepares its own and tags its first file.
        for _ in range(self.jobs - 1):
            executor.submit(os.getpid)
        return executor

    def submit(self, index: int, path: str | Path, **tag_options: Any) -> Future[FileOutcome]:
        """Queue a file (a path or a URL, :func:`source_path`); ``tag_options`` go to :meth:`Tagger.tag_file`,
        whose ``decode_ahead`` defaults to :attr:`decode_ahead`."""
        future: Future[FileOutcome] = Future()
        tag_options.setdefault("decode_ahead", self.decode_ahead)
        self._queue.put((index, source_path(path), tag_options, future))
        return future

    def _run_slot(self, slot: int) -> None:
        if slot == 0:
            _lower_thread_priority(self.nice)
        ahead = slot >= self.jobs  # feeds a worker its next file while it tags one
        while not self._stop.is_set():
            if ahead and self._queue.qsize() <= self.jobs:
                # Near the end, a file queued behind a worker's could wait there while another job is free.
                self._stop.wait(0.05)
                continue
            item = self._queue.get()
            if item is _STOP:  # close() wakes every slot at once (polling cost each run up to 0.2 s at its end)
                break
            index, path, options, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if slot == 0:
                    outcome = tag_one(self.tagger, index, path, self._stop.is_set, **options)
                else:
                    outcome = self._in_worker(index, path, options)
            except BaseException as exc:  # Cancelled, or a bug: handed to whoever waits on the file
                future.set_exception(exc)
            else:
                future.set_result(outcome)

    def _in_worker(self, index: int, path: str | Path, options: dict[str, Any]) -> FileOutcome:
        for attempt in range(2):
            with self._lock:
                if self._stop.is_set() or self._executor is None:
                    raise Cancelled(f"{path}: cancelled")
                executor = self._executor
            try:
                return executor.submit(_tag_in_worker, index, path, options).result()
            except BrokenProcessPool:
                if self._stop.is_set():
                    raise Cancelled(f"{path}: cancelled") from None
                self._replace(executor)
                if attempt:
                    return FileOutcome(index, path, error=f"{path}: the worker process tagging it died twice "
                                                          "(a crash in the decoder, or out of memory)")
        raise AssertionError("unreachable")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken:  # another slot replaced it already
                return
            self._restarts += 1
            if self._restarts > MAX_RESTARTS:
                self._executor = None
                raise TaggerError(f"the tagging worker processes died {self._restarts} times: giving up "
                                  "(--jobs 1 shows the error in this process)")
            log.warning("a tagging worker process died: starting new ones")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()

    def close(self) -> None:
        """Stop now: the local slot at its next decoded block, the worker processes killed."""
        self._stop.set()
        with self._lock:
            executor, self._executor = self._executor, None
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item[-1].cancel()
        for _ in self._slots:
            self._queue.put(_STOP)
        if executor is not None:
            processes = list(getattr(executor, "_processes", {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(5)
        for slot in self._slots:
            slot.join(10)


def worker_threads(jobs: int, nice: int = 0, name: str = "tag") -> ThreadPoolExecutor:
    """``jobs`` threads, each ``nice`` steps below this thread's priority (for work that runs FFmpeg out of
    process, as the daemon's isolated decoders do, so that threads do not queue for the GIL)."""
    return ThreadPoolExecutor(max(1, jobs), thread_name_prefix=name, initializer=_lower_thread_priority,
                              initargs=(nice,))


def _lower_thread_priority(nice: int) -> None:
    """Lower this thread's scheduling priority by ``nice`` (Linux keeps one per thread; threads it starts
    inherit it). Ignored where it is not permitted."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.debug("cannot lower the priority of thread %d: %s", tid, exc)


def source_path(path: str | Path) -> str | Path:
    """A URL as it is (a :class:`~pathlib.Path` would fold its ``//``), anything else as a :class:`Path`."""
    from tagger.decode import is_url

    return path if isinstance(path, str) and is_url(path) else Path(path)


def size_bytes(path: str | Path) -> int:
    """A local file's size in bytes (0 for a URL or a file that cannot be read: its error comes later)."""
    try:
        return os.stat(path).st_size if isinstance(path, Path) else 0
    except OSError:
        return 0


def largest_first(items: Iterable[tuple[int, str | Path]]) -> list[tuple[int, str | Path]]:
    """``(index, path)`` items in the order to hand them out: the largest file first (input order among
    equal sizes; URLs and unreadable files, size 0, last)."""
    return sorted(items, key=lambda item: -size_bytes(item[1]))


def tag_files(tagger: Tagger, paths: Iterable[str | Path], jobs: int, **tag_options: Any) -> Iterator[FileOutcome]:
    """Tag ``paths`` (files or URLs) with ``jobs`` jobs; yield each outcome in the order of ``paths``.

    The order is the input order whatever the completion order, so a run is reproducible, and each file's
    result is the one a single job gives (the same model file, the same per-call arithmetic). With several
    jobs, the files go to them in windows of :data:`DISPATCH_WINDOW`, each window's largest files first,
    and at most two windows are in flight. Leaving early (an exception in the consumer, Ctrl-C) stops the
    workers at once. One job runs here, in this process. ``tag_options`` go to :meth:`Tagger.tag_file`;
    ``decode_ahead`` defaults to :func:`decode_ahead_for_jobs`.
    """
    items = ((i, source_path(p)) for i, p in enumerate(paths))
    if jobs <= 1:
        tag_options.setdefault("decode_ahead", decode_ahead_for_jobs(1))
        for index, path in items:
            yield tag_one(tagger, index, path, **tag_options)
        return
    pool = WorkerPool(tagger, jobs)
    windows: deque[list[Future[FileOutcome]]] = deque()  # each window's futures, in input order

    def queue_window() -> None:
        window = list(islice(items, DISPATCH_WINDOW))
        futures = {index: pool.submit(index, path, **tag_options)
                   for index, path in largest_first(window)}
        if window:
            windows.append([futures[index] for index, _ in window])

    try:
        queue_window()
        queue_window()
        while windows:
            for future in windows.popleft():
                yield future.result()
            queue_window()
    finally:
        pool.close()
