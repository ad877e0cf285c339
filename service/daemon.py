"""``genre-tagger daemon``: watched folders and live inputs, tagged into SQLite and handed to the sinks.

Threads: the folder watcher (scan + events → the library queue), the tagging coordinator (queue → ``jobs``
slots → library → a ``TrackDone`` event; the one writer of results, in order of completion), the
slots (each tags one file at a time: its own decoding child process, the shared model), one thread
per live input, the heartbeat (``Status`` events,
systemd STATUS and WATCHDOG), and one thread per queued sink. Every event goes to one
:class:`service.sinks.SinkHub`, which knows the sinks (ZeroMQ, HTTP...); the daemon knows none by name.
SIGTERM or SIGINT stops it: the track being tagged is abandoned
(it stays queued, nothing half-written), sockets and the library are closed, exit 0.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

from service.config import Config
from service.events import Status, TrackDone
from service.folders import FolderWatcher
from service.library import Library, LibraryError, LibraryStopped, TrackRow, blocked_message, fingerprint
from service.live import LiveCapture
from service.livefile import LiveFile
from service.notify import Notifier
from service.sinks import SinkContext, SinkHub
from tagger.engine import EngineOptions
from tagger.errors import Cancelled, DecodeError, TaggerError
from tagger.isolated import IsolatedDecoder
from tagger.parallel import default_jobs, engine_options_for_jobs, worker_threads
from tagger.pipeline import Tagger, TrackResult

log = logging.getLogger(__name__)
# How much nicer the tagging slots run than live capture, when the daemon has both (Linux nice steps).
LIVE_NICE = 5
# Seconds between WAL checkpoints (truncating the -wal file) from the heartbeat.
CHECKPOINT_SECONDS = 60.0


@dataclass
class Counters:
    started: float = field(default_factory=time.monotonic)
    tagged: int = 0
    errors: int = 0
    audio_seconds: float = 0.0
    last_beat: float = field(default_factory=time.monotonic)
    last_audio_seconds: float = 0.0


STOP_S = 4.5  # the whole shutdown after SIGTERM (the daemon's promise: out within 5 s)
SINKS_CLOSE_S = 1.0  # of it, the last part: for the sinks' last events


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.counters = Counters()
        self.notifier = Notifier()
        c = config
        self.jobs = c.daemon.jobs or default_jobs()
        self.tagger = Tagger(
            c.daemon.model or None, threshold=c.tagging.threshold, top_k=c.tagging.top_k,
            hop_fraction=c.tagging.hop or None,
            engine_options=engine_options_for_jobs(
                EngineOptions(device=c.daemon.device, intra_op_threads=c.daemon.threads,
                              batch_size=c.daemon.batch_size, chunk_frames=c.daemon.chunk_frames,
                              memory_arena=c.daemon.memory_arena), self.jobs),
            coverage=c.tagging.coverage)
        labels = {o.name: tuple(o.labels) for o in self.tagger.manifest.outputs}
        self.hub = SinkHub.from_config(c, SinkContext(c, labels, f"{self.tagger.manifest.name} "
                                                                 f"{self.tagger.manifest.version}"))
        self.hub.start()
        try:
            c.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = "a file is in the way" if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror
            raise LibraryError(f"{c.state_dir}: cannot create the state folder ({reason or exc})") from None
        self.library = Library(c.library_path, c.tagging.store_top_k, stop=self.stop)
        # Files are decoded in child processes (one per slot): a decoder crash or hang costs that file, never
        # the daemon. That also takes FFmpeg, which holds the GIL, out of this process: the slots are threads
        # sharing one model (ONNX Runtime releases the GIL), with no worker process loading it again.
        self.decoders: queue.SimpleQueue[IsolatedDecoder] = queue.SimpleQueue()
        self._all_decoders = [IsolatedDecoder() for _ in range(self.jobs)]
        for decoder in self._all_decoders:
            self.decoders.put(decoder)
        if c.tagging.retry_errors:
            self.library.requeue_errors()
            self.library.retry_failed_tag_writes()
        owed, _ = self.library.owed_counts()
        if owed and not self.hub.takes_owed():
            log.warning("%d genre writes into files are owed from before, and kept: file tagging is off "
                        "([tags] write = false); they are made when it is turned on again", owed)
        self.watcher = FolderWatcher(c.folders.roots, c.library_path, c.folders.settle_seconds, self.wake.set,
                                     c.folders.scan_on_start) if c.folders.roots else None
        self.lives: list[LiveCapture | LiveFile] = []
        if c.live.enabled:
            self.lives.append(LiveCapture(self.tagger, self.hub, c.live.source, c.live.device,
                                          c.live.change_settings(), c.live.block_seconds,
                                          c.live.buffer_seconds, c.live.sample_rate, c.live.channels, c.tagging.top_k,
                                          c.live.level_floor))
        if c.live.file:
            self.lives.append(LiveFile(self.tagger, self.hub, c.live.file, c.live.file_source_name, c.live.file_loop,
                                       c.live.change_settings(), c.live.block_seconds,
                                       c.tagging.top_k, c.live.level_floor))
        self._worker = threading.Thread(target=self._work, name="tagging", daemon=True)
        # Live audio keeps its priority: with live capture on, the slots (and their decoders) run nicer.
        self._slots = worker_threads(self.jobs, nice=LIVE_NICE if self.lives else 0)

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.watcher:
                self.watcher.start(self.stop)
            for live in self.lives:
                live.start(self.stop)
            self._worker.start()
            log.info("genre-tagger daemon: model %s %s on %s, library %s, sinks: %s",
                     self.tagger.manifest.name, self.tagger.manifest.version, self.tagger.provider,
                     self.config.library_path, self.hub.describe())
            self.notifier.ready(self._status_line())
            self._heartbeat_loop()
        finally:
            self.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if any(live.status.hung_closes for live in self.lives):
            # A capture left an audio stream's close hanging in a thread: ending the interpreter normally tears
            # PortAudio and ALSA down under it (measured: SIGSEGV at exit). All is closed and flushed by now.
            log.warning("exiting at once: an audio stream's close still hangs")
            logging.shutdown()
            os._exit(0)
        return 0

    def _on_signal(self, signum: int, frame) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop.set()
        self.wake.set()

    def shutdown(self) -> None:
        self.stop.set()
        self.wake.set()
        self.notifier.stopping()
        # One budget for every wait, so that slow steps cannot add up past it: each waits at most its own
        # share and never into the sinks' last second.
        threads_by = time.monotonic() + STOP_S - SINKS_CLOSE_S

        def share(most: float) -> float:
            return max(0.0, min(most, threads_by - time.monotonic()))

        if self._worker.is_alive():
            self._worker.join(share(3.0))
        self._slots.shutdown(wait=False, cancel_futures=True)
        if self.watcher:
            self.watcher.join(share(1.0))
        for live in self.lives:
            live.join(share(1.0 / len(self.lives)))
        for decoder in self._all_decoders:
            decoder.close()
        self.hub.close(time.monotonic() + SINKS_CLOSE_S)
        self.library.close()

    # -- heartbeat ---------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self.config.publish.heartbeat_seconds
        if self.notifier.watchdog_seconds:
            interval = min(interval, self.notifier.watchdog_seconds / 2)
        self._beat()
        last_checkpoint = time.monotonic()
        while not self.stop.wait(interval):
            if not self._worker.is_alive():
                log.error("the tagging worker died; stopping so that the service manager restarts us")
                raise RuntimeError("tagging worker died")
            if self.watcher is not None and not self.watcher.alive() and not self.stop.is_set():
                # Else no new file would ever be seen again, and nothing would say so.
                log.error("the folder watcher died; stopping so that the service manager restarts us")
                raise RuntimeError("folder watcher died")
            try:
                self._beat()
                if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                    self.library.checkpoint()  # keeps the WAL bounded
                    last_checkpoint = time.monotonic()
            except Exception:  # a heartbeat that fails once must not stop the next ones
                log.exception("heartbeat failed")
            self.notifier.watchdog()

    def _status_line(self) -> str:
        c = self.counters
        owed, _ = self.library.owed_counts()
        line = (f"{c.tagged} tagged, {c.errors} errors, {self.library.pending_count()} queued"
                + (f", {owed} tag writes owed" if owed else "")
                + f"; model {self.tagger.manifest.name} on {self.tagger.provider}")
        waiting = blocked_message(self.config.library_path)
        return f"{waiting}; {line}" if waiting else line

    def _beat(self) -> None:
        c = self.counters
        now = time.monotonic()
        elapsed = max(1e-6, now - c.last_beat)
        rate = (c.audio_seconds - c.last_audio_seconds) / elapsed
        c.last_beat, c.last_audio_seconds = now, c.audio_seconds
        self.hub.status(Status(
            uptime_s=now - c.started, queue_depth=self.library.pending_count(), tagged=c.tagged, errors=c.errors,
            audio_seconds=c.audio_seconds, realtime_factor=rate, provider=self.tagger.provider,
            model=f"{self.tagger.manifest.name} {self.tagger.manifest.version}", dropped_messages=self.hub.dropped,
            live={live.source: live.status.as_dict() for live in self.lives}, sinks=self.hub.counts(),
            library=blocked_message(self.config.library_path), tag_writes_owed=self.library.owed_counts()[0]))
        self.notifier.status(self._status_line())

    # -- tagging worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        library = Library(self.config.library_path, self.config.tagging.store_top_k, stop=self.stop)
        in_flight: dict[Future, TrackRow] = {}
        try:
            while not self.stop.is_set():
                while len(in_flight) < self.jobs:  # oldest pending first, none twice
                    row = library.next_pending(exclude={r.id for r in in_flight.values()})
                    if row is None:
                        break
                    in_flight[self._slots.submit(self._tag_in_slot, row)] = row
                if not in_flight:
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue
                done, _ = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:  # in order of completion, by this thread alone
                    self._record(library, in_flight.pop(future), future)
        except LibraryStopped:
            pass  # stopping while the library could not be written: the tracks stay queued
        except Exception:
            log.exception("tagging worker failed")
            raise
        finally:
            for future in in_flight:
                future.cancel()
            library.close()

    def _tag_in_slot(self, row: TrackRow) -> TrackResult | None:
        """A slot thread: tag one file with a decoder of its own (None: queued as unreadable)."""
        if row.error and row.size == 0 and row.mtime == 0:  # queued as unreadable by the watcher
            return None
        decoder = self.decoders.get()
        try:
            return self.tagger.tag_file(Path(row.path), cancelled=self.stop.is_set, decode=decoder.blocks)
        finally:
            self.decoders.put(decoder)

    def _record(self, library: Library, row: TrackRow, future: Future) -> None:
        path = Path(row.path)
        try:
            result = future.result()
        except Cancelled:
            return  # stays pending: done again after the restart
        except (TaggerError, OSError) as exc:
            reason = exc.reason if isinstance(exc, DecodeError) else str(exc)
            self._fail(library, row.id, path, reason)
            return
        except Exception as exc:  # an engine failure or a bug on this one file: it fails alone, and is not
            # tried again at every restart (it would take the worker down each time: a crash loop)
            log.debug("%s: unexpected error", path, exc_info=exc)
            self._fail(library, row.id, path, f"unexpected error: {type(exc).__name__}: {exc}".splitlines()[0])
            return
        if result is None:
            self._fail(library, row.id, path, row.error or "unreadable")
            return
        if not path.exists():
            # Only this path's error: a same-content file that took the row over meanwhile is not failed.
            self._fail(library, row.id, path, "the file vanished while it was being read", force=True, only_path=True)
            return
        try:
            current = fingerprint(path)
        except OSError as exc:
            self._fail(library, row.id, path, f"cannot read: {exc.strerror or exc}", force=True)
            return
        if current != row.fingerprint:
            return  # changed while we read it: the watcher queues it again with its new content
        # The library first (with a durable note of the file-tag write owed, if any), then the sinks.
        if library.record_result(row.id, result, current, owe_tags=self.hub.owes(result)):
            self.counters.tagged += 1
            self.counters.audio_seconds += result.duration_s
            self.hub.track(TrackDone(row.id, str(path), result, top_k=self.config.tagging.top_k))

    def _fail(self, library: Library, track_id: int, path: Path, reason: str, force: bool = False,
              only_path: bool = False) -> None:
        log.warning("%s: %s", path, reason)
        if not library.record_error(track_id, reason, force=force, path=path if only_path else None) and only_path:
            return
        self.counters.errors += 1
        self.hub.track(TrackDone(track_id, str(path), error=reason, top_k=self.config.tagging.top_k))
