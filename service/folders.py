"""Watched folders: a full scan at start, then watchdog events, feeding the library's queue.

A file is queued only once it is stable: closed after writing and unchanged for
``min(0.5, settle_seconds)``, or with size and mtime unchanged for ``settle_seconds``; so a file being
copied is never read half-way. A file seen being written but not yet closed waits for its close (a
slow writer's pauses do not count), or at most :data:`OPEN_FILE_MAX_WAIT_SECONDS` unchanged. Unchanged
files are never queued twice (same path, size and mtime, or the same content fingerprint after a move);
renames and moves carry the tags along; deletions mark the track ``deleted``.

Nothing stops discovery: an error on one path is logged with the path and the watcher goes on. Only
regular files are read; FIFOs, sockets, devices, dangling symlinks, symlink loops and unreadable
folders get an ``error`` row saying why (and one log line), so the library explains every absence.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from service.library import Library, LibraryError, LibraryStopped, printable
from tagger.cli import AUDIO_EXTENSIONS
from tagger.decode import file_problem

log = logging.getLogger(__name__)
CLOSED_SETTLE_SECONDS = 0.5
# A file seen being written and not closed since is read once closed, or once unchanged this long (s).
OPEN_FILE_MAX_WAIT_SECONDS = 30.0
# Seconds between attempts to open the library when it cannot be opened at all.
REOPEN_SECONDS = 5.0


def is_audio(path: str | Path) -> bool:
    name = Path(path).name
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")


@dataclass
class _Candidate:
    size: int
    mtime: float
    since: float
    closed: bool = False
    writing: bool = False  # modified since its last close: a writer still has it open


MISSING_ROOT_CHECK_S = 5.0  # how often a watched folder that does not exist is looked for


class _Handler(FileSystemEventHandler):
    def __init__(self, events: queue.Queue) -> None:
        self.events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.events.put(event)


class FolderWatcher:
    """Scans and watches ``roots``; writes discoveries to its own :class:`Library` connection.

    Args:
        roots: folders to watch (recursively).
        library_path: the SQLite library.
        settle_seconds: how long size and mtime must hold still before a file is read.
        on_queued: called (no arguments) whenever a file was queued, to wake the tagging worker.
        scan_on_start: scan every root fully before watching events.
    """

    def __init__(self, roots: list[str], library_path: Path, settle_seconds: float = 2.0,
                 on_queued: Callable[[], None] | None = None, scan_on_start: bool = True) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self.library_path = library_path
        self.settle_seconds = settle_seconds
        self.on_queued = on_queued or (lambda: None)
        self.scan_on_start = scan_on_start
        self._events: queue.Queue[FileSystemEvent] = queue.Queue()
        self._candidates: dict[str, _Candidate] = {}
        self._observer = Observer()
        self._thread: threading.Thread | None = None
        self.scanned = threading.Event()
        self.counts = {"queued": 0, "unchanged": 0, "moved": 0, "deleted": 0, "skipped": 0}
        self._sees_closes = True  # inotify reports closes; a polling observer does not
        self._missing: list[Path] = []
        self._handler: _Handler | None = None

    def start(self, stop: threading.Event) -> None:
        handler = self._handler = _Handler(self._events)
        # A root that does not exist (yet: a drive not mounted) is waited for, never scanned: scanning it
        # would mark every track under it deleted.
        self._missing = [root for root in self.roots if not root.is_dir()]
        for root in self._missing:
            log.warning("folder %s does not exist: watching for it to appear (checked every %.0f s)",
                        printable(str(root)), MISSING_ROOT_CHECK_S)
        self.roots = [root for root in self.roots if root not in self._missing]
        try:
            for root in self.roots:
                self._observer.schedule(handler, str(root), recursive=True)
            self._observer.start()  # before the scan, so nothing created during it is missed
        except OSError as exc:  # inotify watches exhausted, say: poll instead of going blind
            from watchdog.observers.polling import PollingObserver

            log.warning("cannot watch the folders with inotify (%s); polling them instead", exc.strerror or exc)
            self._observer = PollingObserver(timeout=max(1.0, self.settle_seconds))
            self._sees_closes = False
            for root in self.roots:
                self._observer.schedule(handler, str(root), recursive=True)
            self._observer.start()
        self._thread = threading.Thread(target=self._run, args=(stop,), name="folders", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the watcher (its thread and the file system observer's) still runs, once started."""
        return self._thread is not None and self._thread.is_alive() and self._observer.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._observer.stop()
        self._observer.join(timeout)
        if self._thread:
            self._thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        library = None
        while library is None and not stop.is_set():
            try:
                library = Library(self.library_path, stop=stop)
            except (LibraryError, LibraryStopped) as exc:
                log.error("folder watcher: %s; retrying in %.0f s", exc, REOPEN_SECONDS)
                stop.wait(REOPEN_SECONDS)
        if library is None:
            return
        try:
            if self.scan_on_start:
                for root in self.roots:
                    self._guarded(str(root), self._scan, library, root, stop)
            self.scanned.set()
            next_check = time.monotonic() + MISSING_ROOT_CHECK_S
            while not stop.is_set():
                if self._missing and time.monotonic() >= next_check:
                    next_check = time.monotonic() + MISSING_ROOT_CHECK_S
                    self._guarded("", self._adopt_appeared_roots, library, stop)
                try:
                    event = self._events.get(timeout=0.1)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._guarded(os.fsdecode(event.src_path), self._handle, library, event)
                self._guarded("", self._promote_stable, library)
        except LibraryStopped:
            pass  # stopping while the library was locked or the disk full: the files are found again at start
        finally:
            self.scanned.set()
            library.close()

    def _adopt_appeared_roots(self, library: Library, stop: threading.Event) -> None:
        for root in [r for r in self._missing if r.is_dir()]:
            log.warning("folder %s appeared: scanning and watching it", printable(str(root)))
            self._observer.schedule(self._handler, str(root), recursive=True)
            self._missing.remove(root)
            self.roots.append(root)
            self._scan(library, root, stop)

    def _guarded(self, path: str, step: Callable, *args) -> None:
        """Run one discovery step; any error is logged with its path and discovery goes on."""
        try:
            step(*args)
        except LibraryStopped:
            raise
        except Exception as exc:  # the watcher must outlive any one path
            log.error("folder watcher: %s: %s: %s (continuing)", printable(path) or "(pending files)",
                      type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))

    def _scan(self, library: Library, root: Path, stop: threading.Event) -> None:
        started = time.monotonic()
        before = dict(self.counts)
        seen: set[str] = set()
        found = 0
        for path in self._walk(library, str(root), seen):
            if stop.is_set():
                return
            seen.add(path)
            found += 1
            self._guarded(path, self._consider, library, path, False, True)
        gone = library.mark_missing_under(root, seen)  # and the rows of folders that became readable
        self.counts["deleted"] += gone
        done = {k: self.counts[k] - before[k] for k in self.counts}
        log.info("scan done: %d files, %d queued, in %.1f s (%s: %d unchanged, %d moved, %d gone, %d skipped)",
                 found, done["queued"], time.monotonic() - started, printable(str(root)), done["unchanged"],
                 done["moved"], gone, done["skipped"])

    def _walk(self, library: Library, top: str, unreadable_seen: set[str] | None = None):
        """Audio file paths under ``top`` (hidden folders skipped); unreadable folders are recorded (and
        added to ``unreadable_seen``)."""

        def unreadable(exc: OSError) -> None:
            folder = os.fsdecode(exc.filename) if exc.filename else top
            if unreadable_seen is not None:
                unreadable_seen.add(folder)
            self._guarded(folder, self._skip, library, folder, f"cannot read folder: {exc.strerror or exc}")

        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if is_audio(path):
                    yield path

    def _skip(self, library: Library, path: str, reason: str) -> None:
        self._candidates.pop(path, None)
        if library.record_skipped(path, reason):
            self.counts["skipped"] += 1
            log.warning("skipping %s: %s", printable(path), reason)

    def _consider(self, library: Library, path: str, closed: bool, from_scan: bool = False,
                  modified: bool = False) -> None:
        try:
            st = os.stat(path)
        except OSError:
            self._candidates.pop(path, None)
            if os.path.islink(path):  # dangling, or a loop: say so; a vanished file needs no row
                self._skip(library, path, file_problem(path) or "unreadable symbolic link")
            return
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever, a device never end
            self._skip(library, path, file_problem(path) or "not a regular file")
            return
        now = time.time()
        if from_scan and now - st.st_mtime >= self.settle_seconds:
            self._discover(library, path)
            return
        known = self._candidates.get(path)
        if known and known.size == st.st_size and known.mtime == st.st_mtime:
            known.closed = known.closed or closed
            known.writing = (known.writing or modified) and not closed
        else:
            writing = (modified or (known is not None and known.writing)) and not closed
            self._candidates[path] = _Candidate(st.st_size, st.st_mtime, time.monotonic(), closed, writing)

    def _promote_stable(self, library: Library) -> None:
        now = time.monotonic()
        for path, cand in list(self._candidates.items()):
            if cand.closed:
                wait = min(CLOSED_SETTLE_SECONDS, self.settle_seconds)
            elif cand.writing:
                wait = max(self.settle_seconds, OPEN_FILE_MAX_WAIT_SECONDS)
            else:
                wait = self.settle_seconds
            if now - cand.since < wait:
                continue
            try:
                st = os.stat(path)
            except OSError:
                del self._candidates[path]
                continue
            if (st.st_size, st.st_mtime) != (cand.size, cand.mtime):
                self._candidates[path] = _Candidate(st.st_size, st.st_mtime, now, False, cand.writing)
                continue
            del self._candidates[path]
            self._guarded(path, self._discover, library, path)

    def _discover(self, library: Library, path: str) -> None:
        try:
            outcome = library.discover(path)
        except OSError as exc:  # vanished or unreadable between stat and fingerprint
            log.info("skipping %s: %s", printable(path), exc.strerror or exc)
            if os.path.exists(path):
                library.discover_unreadable(path, f"cannot read: {exc.strerror or exc}")
                self.on_queued()
            return
        self.counts[outcome] += 1
        if outcome == "queued":
            self.on_queued()

    def _handle(self, library: Library, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        if isinstance(event, DirMovedEvent):
            dest = os.fsdecode(event.dest_path)
            library.moved_tree(src, dest)
            if self._inside(dest):
                for path in self._walk(library, dest):
                    self._guarded(path, self._consider, library, path, False)
            return
        if isinstance(event, DirDeletedEvent):
            library.mark_deleted_tree(src)
            return
        if event.is_directory:
            if event.event_type == "created":  # a folder moved in from outside: scan it
                for path in self._walk(library, src):
                    self._guarded(path, self._consider, library, path, False)
            return
        if event.event_type == "moved":
            dest = os.fsdecode(event.dest_path)
            self._candidates.pop(src, None)
            if is_audio(src) and library.moved(src, dest) and is_audio(dest):
                self.counts["moved"] += 1
                self._consider(library, dest, closed=False)  # confirms unchanged, or queues if it changed
            elif is_audio(dest) and self._inside(dest):
                self._consider(library, dest, closed=False)
            elif is_audio(src):
                library.mark_deleted(src)  # moved out of the watched folders, or renamed to a non-audio name
            return
        if not is_audio(src):
            return
        if event.event_type == "deleted":
            self._candidates.pop(src, None)
            if library.mark_deleted(src):
                self.counts["deleted"] += 1
        elif event.event_type in ("created", "modified", "closed"):
            self._consider(library, src, closed=isinstance(event, FileClosedEvent),
                           modified=event.event_type == "modified" and self._sees_closes)

    def _inside(self, path: str) -> bool:
        p = Path(path)
        return any(p == r or r in p.parents for r in self.roots)
