"""Watched folders: a full scan at start, then watchdog events, feeding the library's queue.

A file is queued only once it is stable: closed after writing and unchanged for
``min(0.5, settle_seconds)``, or with size and mtime unchanged for ``settle_seconds``; so a file being
copied is never read half-way. Unchanged files are never queued twice (same path, size and mtime,
or the same content fingerprint after a move); renames and moves carry the tags along; deletions
mark the track ``deleted``.
"""

from __future__ import annotations

import logging
import os
import queue
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

from service.library import Library
from tagger.cli import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)
CLOSED_SETTLE_SECONDS = 0.5


def is_audio(path: str | Path) -> bool:
    name = Path(path).name
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")


@dataclass
class _Candidate:
    size: int
    mtime: float
    since: float
    closed: bool = False


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
        self.counts = {"queued": 0, "unchanged": 0, "moved": 0, "deleted": 0}

    def start(self, stop: threading.Event) -> None:
        handler = _Handler(self._events)
        for root in self.roots:
            self._observer.schedule(handler, str(root), recursive=True)
        self._observer.start()  # before the scan, so nothing created during it is missed
        self._thread = threading.Thread(target=self._run, args=(stop,), name="folders", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._observer.stop()
        self._observer.join(timeout)
        if self._thread:
            self._thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        library = Library(self.library_path)
        try:
            if self.scan_on_start:
                for root in self.roots:
                    self._scan(library, root, stop)
            self.scanned.set()
            while not stop.is_set():
                try:
                    event = self._events.get(timeout=0.1)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._handle(library, event)
                self._promote_stable(library)
        except Exception:  # keep the daemon informed rather than dying silently
            log.exception("folder watcher failed")
            raise
        finally:
            library.close()

    def _scan(self, library: Library, root: Path, stop: threading.Event) -> None:
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if stop.is_set():
                    return
                path = os.path.join(dirpath, name)
                if is_audio(path):
                    seen.add(path)
                    self._consider(library, path, closed=False, from_scan=True)
        gone = library.mark_missing_under(root, seen)
        self.counts["deleted"] += gone

    def _consider(self, library: Library, path: str, closed: bool, from_scan: bool = False) -> None:
        try:
            st = os.stat(path)
        except OSError:
            self._candidates.pop(path, None)
            return
        now = time.time()
        if from_scan and now - st.st_mtime >= self.settle_seconds:
            self._discover(library, path)
            return
        known = self._candidates.get(path)
        if known and known.size == st.st_size and known.mtime == st.st_mtime:
            known.closed = known.closed or closed
        else:
            self._candidates[path] = _Candidate(st.st_size, st.st_mtime, time.monotonic(), closed)

    def _promote_stable(self, library: Library) -> None:
        now = time.monotonic()
        for path, cand in list(self._candidates.items()):
            wait = min(CLOSED_SETTLE_SECONDS, self.settle_seconds) if cand.closed else self.settle_seconds
            if now - cand.since < wait:
                continue
            try:
                st = os.stat(path)
            except OSError:
                del self._candidates[path]
                continue
            if (st.st_size, st.st_mtime) != (cand.size, cand.mtime):
                self._candidates[path] = _Candidate(st.st_size, st.st_mtime, now, False)
                continue
            del self._candidates[path]
            self._discover(library, path)

    def _discover(self, library: Library, path: str) -> None:
        try:
            outcome = library.discover(path)
        except OSError as exc:  # vanished or unreadable between stat and fingerprint
            log.info("skipping %s: %s", path, exc.strerror or exc)
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
                for dirpath, _, filenames in os.walk(dest):
                    for name in filenames:
                        path = os.path.join(dirpath, name)
                        if is_audio(path):
                            self._consider(library, path, closed=False)
            return
        if isinstance(event, DirDeletedEvent):
            library.mark_deleted_tree(src)
            return
        if event.is_directory:
            if event.event_type == "created":  # a folder moved in from outside: scan it
                for dirpath, _, filenames in os.walk(src):
                    for name in filenames:
                        if is_audio(os.path.join(dirpath, name)):
                            self._consider(library, os.path.join(dirpath, name), closed=False)
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
            self._consider(library, src, closed=isinstance(event, FileClosedEvent))

    def _inside(self, path: str) -> bool:
        p = Path(path)
        return any(p == r or r in p.parents for r in self.roots)
