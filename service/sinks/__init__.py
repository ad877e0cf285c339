"""Sinks: where the daemon's events go (ZeroMQ, the HTTP display, a text file, Icecast...).

A sink is a :class:`Sink` subclass in a module of this package, configured by its own TOML section
(``[<name>]``, its :class:`SinkSettings`). The daemon builds every active sink into one
:class:`SinkHub` and hands each event to the hub; it knows no sink by name. Adding a sink means a new
module here (found by :func:`sink_classes`) and its section in ``service/genre-tagger.toml``.

The hub calls an ``inline`` sink directly in the producer's thread (only for sinks that can never
block: the ZeroMQ publisher). Every other sink gets its own bounded queue and thread, so a slow or
stuck sink costs only its own dropped events (the oldest go first, counted) and never delays the
live path or the tagging worker. Exceptions are caught and logged per sink; a sink that keeps failing
is suspended with an exponential backoff (events meanwhile are dropped and counted), then tried again.

The library is not a sink: the tagging worker records a result first and only then tells the hub.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import pkgutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from service.events import Event, GenreChanged, LiveUpdate, Status, TrackDone
from tagger.errors import ConfigError

if TYPE_CHECKING:
    import argparse

    from service.config import Config
    from tagger.pipeline import TrackResult

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
FAILURES_BEFORE_BACKOFF = 3  # consecutive failures a sink may have before it is suspended
DEFAULT_QUEUE = 1000
LOST_MAX = 10_000  # lost events kept for a sink's ``lost`` at most (beyond: counted only)
# After a live update, a queued sink's thread looks at its queue every QUEUE_POLL_S for LIVE_LINGER_S (the
# next update is due a hop later, so the live thread finds it awake and wakes nobody); otherwise an idle
# sink's thread sleeps until a producer puts an event into its empty queue.
QUEUE_POLL_S = 0.02
LIVE_LINGER_S = 3.0


@dataclass
class SinkSettings:
    """A sink's TOML section: subclasses add their keys, each with its default and unit."""

    def active(self) -> bool:
        """Whether the daemon should build this sink (sinks are off unless ``enabled``)."""
        return bool(getattr(self, "enabled", False))

    def validate(self, section: str) -> None:
        """Raise :class:`ConfigError` naming ``section.key`` for a bad value."""
        queue = getattr(self, "queue", DEFAULT_QUEUE)
        check(isinstance(queue, int) and queue >= 1, f"{section}.queue", "must be at least 1")

    def validate_with(self, section: str, config: Config) -> None:
        """Raise :class:`ConfigError` naming ``section.key`` for a value that contradicts another section."""


@dataclass
class QueuedSinkSettings(SinkSettings):
    """enabled: turn the sink on (off by default). queue: events waiting for the sink before the
    oldest are dropped (and counted)."""

    enabled: bool = False
    queue: int = DEFAULT_QUEUE


def check(ok: bool, key: str, message: str) -> None:
    """Raise the daemon's one-line configuration error for ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config {key}: {message}")


CHANGE_FIELDS = ("genre", "confidence", "percent", "source", "previous", "time")


def format_change(template: str, event: GenreChanged) -> str:
    """``template`` with a genre change's fields: {genre}, {confidence} (0..1), {percent} (0..100),
    {source}, {previous} ('' at the start), {time} (local HH:MM:SS)."""
    return template.format(genre=event.current, confidence=round(event.confidence, 3),
                           percent=round(100 * event.confidence), source=event.source,
                           previous=event.previous or "", time=time.strftime("%H:%M:%S", time.localtime(event.ts)))


def check_template(template: str, key: str) -> None:
    """A configuration error unless ``template`` uses only :data:`CHANGE_FIELDS`."""
    sample = GenreChanged(source="radio", stream_s=0.0, previous=None, current="jazz", confidence=0.9)
    try:
        format_change(template, sample)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"config {key}: {template!r} is not a valid format ({type(exc).__name__}: {exc}; "
                          f"fields: {', '.join('{' + f + '}' for f in CHANGE_FIELDS)})") from None


@dataclass(frozen=True)
class SinkContext:
    """What a sink may need from the daemon besides its own settings.

    Attributes:
        config: the daemon's whole configuration (read-only by convention).
        labels: each model output's labels, in order.
        model: the model's name and version.
    """

    config: Config
    labels: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    model: str = ""


class Sink:
    """An event consumer. Every method is a no-op; override what the sink needs.

    An event handler returns None (or True) when it did its work, and False when the event asked nothing
    of it (another source's change, an uncertain one, a "no music" title left as it is): such an event is
    counted as ``skipped``, not ``delivered``, and is no sign that a failing sink works again (a heartbeat
    that asked nothing, e.g. of the tags sink when no write is owed, is not counted at all).

    Class attributes:
        name: the TOML section (one word, so ``GENRE_TAGGER_<NAME>_<KEY>`` still parses).
        Settings: the section's dataclass (a :class:`SinkSettings` subclass).
        inline: call it in the producer's thread; only for sinks that can never block.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[SinkSettings]] = SinkSettings
    inline: ClassVar[bool] = False

    def __init__(self, settings: SinkSettings, context: SinkContext) -> None:
        self.settings = settings
        self.context = context

    @classmethod
    def check_environment(cls) -> None:
        """Raise :class:`ConfigError` when an enabled sink cannot work here (a missing package...)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this sink's ``genre-tagger daemon`` flags (optional)."""

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        """This section's keys set by the flags of :meth:`add_arguments` (None values are ignored)."""
        return {}

    def start(self) -> None:
        """Open what the sink needs (sockets, servers); called once before the first event."""

    def describe(self) -> str:
        """A few words for the daemon's start-up line, e.g. 'ZeroMQ on tcp://127.0.0.1:5556'."""
        return self.name

    @property
    def dropped(self) -> int:
        """Events this sink's own consumers missed (beyond the hub's queue drops)."""
        return 0

    def owes(self, result: TrackResult) -> bool:
        """Whether this sink's work for a file's ``result`` must survive a crash: the library then stores a
        durable note (``tags_owed``) with the result, in the same transaction, and the sink clears it once
        the work is done. Called in the tagging worker's thread, before the result is stored."""
        return False

    def takes_owed(self) -> bool:
        """Whether this sink makes the owed work the library holds (the daemon says so when none does)."""
        return False

    def track(self, event: TrackDone) -> bool | None:
        pass

    def live(self, event: LiveUpdate) -> bool | None:
        pass

    def genre_changed(self, event: GenreChanged) -> bool | None:
        pass

    def status(self, event: Status) -> bool | None:
        pass

    def lost(self, events: list[Event]) -> None:
        """Events this sink will never get: pushed out of its full queue, dropped while it was suspended, or
        still queued when the daemon stopped. A sink whose work must not be lost keeps a durable note of it
        (:meth:`owes`) and learns here that it must catch up from that note. Called from the sink's own
        thread, or at the close from the closing thread, possibly while a stuck handler still runs: use no
        state that handler uses."""

    def close(self, deadline: float) -> None:
        """Release everything by ``deadline`` (a :func:`time.monotonic` value)."""


@dataclass
class ChangeSection(QueuedSinkSettings):
    """The keys of a sink that shows a live source's genre as text. format: the text for a genre (see
    :func:`format_change`). no_music: the text when the stream turns to talk or silence. uncertain: the
    text when the music's genre is not decided (a genre the music left, withdrawn; music back after "no
    music" before its genre is decided): never the genre itself (contract §3). source: the live source to
    follow ("" = every source)."""

    queue: int = 100
    format: str = "{genre}"
    no_music: str = ""
    uncertain: str = ""
    source: str = ""

    def validate(self, section: str) -> None:
        super().validate(section)
        check_template(self.format, f"{section}.format")


class ChangeSink(Sink):
    """A sink that shows each genre change of its source as text (:meth:`show`): ``format`` for a decided
    genre, ``no_music`` for a change to "no music", ``uncertain`` for an uncertain change (never its genre,
    contract §3: the genre shown before must not go on looking true once the detector withdrew it)."""

    settings: ChangeSection

    def genre_changed(self, event: GenreChanged) -> bool:
        if self.settings.source and event.source != self.settings.source:
            return False
        if event.uncertain and event.music:
            log.debug("%s: the change to %s is uncertain: showing %r", self.describe(), event.current,
                      self.settings.uncertain)
            return self.show(self.settings.uncertain)
        return self.show(format_change(self.settings.format, event) if event.trustworthy else self.settings.no_music)

    def show(self, text: str) -> bool:
        """Present ``text`` (the formatted genre, ``no_music`` or ``uncertain``); False when nothing was done."""
        raise NotImplementedError


_HANDLERS: dict[type, str] = {TrackDone: "track", LiveUpdate: "live", GenreChanged: "genre_changed",
                              Status: "status"}


def sink_classes() -> dict[str, type[Sink]]:
    """Every sink of this package, by section name (each module of the package is imported once)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[Sink]] = {}
    pending = list(Sink.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.name and cls.__module__.startswith(f"{__name__}."):  # not a test's or the bench's own
            found[cls.name] = cls
    return dict(sorted(found.items()))


@dataclass
class SinkCounts:
    delivered: int = 0
    skipped: int = 0  # handled without error, but the sink had nothing to do (its handler returned False)
    dropped: int = 0  # by the hub: the queue was full, or the sink was suspended
    errors: int = 0
    consecutive_failures: int = 0
    suspended_until: float = 0.0  # monotonic time; 0 = not suspended
    backoff: float = BACKOFF_START_S
    last_error: str = ""


class _Slot:
    """One sink with its counts and, unless it is inline, its queue and thread.

    Several producers (the live threads, the tagging worker, the heartbeat) offer events at once: the
    queue's bound and every count change under one lock per slot, held for a few list operations only
    (never while the sink runs), so the counts are exact and a queue never holds more than its size.

    An idle sink's thread sleeps on ``wakeup``, which the producer that finds it asleep sets. Waking a
    thread makes a system call and, on a loaded machine, lets the scheduler run the woken thread in the
    producer's place (measured on 2 busy cores: 2-3 ms p50 per live update), so a sink that has just
    handled a live update polls its queue for ``LIVE_LINGER_S`` instead of sleeping: the live thread's
    next update finds it awake.
    """

    def __init__(self, sink: Sink, queue_size: int) -> None:
        self.sink = sink
        self.counts = SinkCounts()
        self.inline = sink.inline
        # Only the events the sink overrides a handler for: a sink that shows genre changes must not find
        # them pushed out of its queue by live updates it ignores, nor take an ignored event for a success.
        self.handles = frozenset(kind for kind, method in _HANDLERS.items()
                                 if getattr(type(sink), method) is not getattr(Sink, method))
        self.queue: collections.deque[Event] = collections.deque()
        self.queue_size = queue_size
        self.lock = threading.Lock()  # the queue's bound, the counts, ``asleep`` and ``lost``
        # Dropped events the sink wants to hear of (it overrides Sink.lost), until its thread hands them over.
        self.keeps_lost = type(sink).lost is not Sink.lost
        self.lost: list[Event] = []
        self.asleep = False  # the sink's thread waits on ``wakeup``: the next producer sets it
        self.wakeup = threading.Event()
        self.closing = threading.Event()
        self.thread: threading.Thread | None = None

    # -- delivery ------------------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        if type(event) not in self.handles:
            return
        if self.inline:
            if self.counts.suspended_until and time.monotonic() < self.counts.suspended_until:
                with self.lock:
                    self.counts.dropped += 1
                return
            self.deliver(event)
            return
        with self.lock:
            if self.closing.is_set():  # too late for the sink's thread
                self._drop([event])
                return
            if len(self.queue) >= self.queue_size:
                self._drop([self.queue.popleft()])
            self.queue.append(event)
            wake, self.asleep = self.asleep, False
        if wake:
            self.wakeup.set()

    def _take(self) -> Event | None:
        """The oldest queued event, or None."""
        with self.lock:
            return self.queue.popleft() if self.queue else None

    def _drop(self, events: list[Event]) -> None:
        """Count ``events`` as dropped and keep them for the sink's ``lost`` (the caller holds the lock)."""
        self.counts.dropped += len(events)
        if self.keeps_lost:
            self.lost.extend(events[:max(0, LOST_MAX - len(self.lost))])

    def _drop_queued(self) -> None:
        with self.lock:
            self._drop(list(self.queue))
            self.queue.clear()

    def _hand_lost(self) -> None:
        """Tell the sink of the events it lost since the last call."""
        with self.lock:
            lost, self.lost = self.lost, []
        if not lost:
            return
        try:
            self.sink.lost(lost)
        except BaseException as exc:  # as in deliver: the sink's thread goes on
            log.warning("sink %s: %d lost events could not be noted: %s", self.sink.name, len(lost), exc)

    def deliver(self, event: Event) -> None:
        try:
            done = getattr(self.sink, _HANDLERS[type(event)])(event)
        except BaseException as exc:  # SystemExit included: a sink's thread must not end silently
            self._failed(exc)
            return
        if done is False:  # nothing was sent: no proof that a failing sink works again
            if type(event) is not Status:  # a heartbeat that asked nothing is the sink's clock, not an event it skipped
                with self.lock:
                    self.counts.skipped += 1
            return
        with self.lock:
            c = self.counts
            c.delivered += 1
            recovered = c.consecutive_failures
            c.consecutive_failures, c.suspended_until, c.backoff = 0, 0.0, BACKOFF_START_S
        if recovered:
            log.info("sink %s works again", self.sink.name)

    def _failed(self, exc: BaseException) -> None:
        try:
            text = str(exc)
        except Exception:  # an exception that cannot say what it is must not end the sink's thread
            text = ""
        error = f"{type(exc).__name__}: {text}".splitlines()[0] if text else type(exc).__name__
        with self.lock:
            c = self.counts
            c.errors += 1
            c.consecutive_failures += 1
            c.last_error = error
            failures, backoff = c.consecutive_failures, c.backoff
            if failures >= FAILURES_BEFORE_BACKOFF:
                c.suspended_until = time.monotonic() + backoff
                c.backoff = min(BACKOFF_MAX_S, backoff * 2)
        if failures == 1:
            log.warning("sink %s failed: %s", self.sink.name, error, exc_info=log.isEnabledFor(logging.DEBUG))
        if failures >= FAILURES_BEFORE_BACKOFF:
            log.warning("sink %s failed %d times in a row (%s); suspended for %.1f s", self.sink.name, failures,
                        error, backoff)

    # -- the queued sink's thread --------------------------------------------------------------

    def start(self) -> None:
        if self.inline:
            return
        self.thread = threading.Thread(target=self._run, name=f"sink-{self.sink.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_live = -float("inf")
        while True:
            event = self._take()
            if event is None:
                if self.closing.is_set():
                    return  # closing, and everything was delivered
                if time.monotonic() - last_live < LIVE_LINGER_S:
                    self.closing.wait(QUEUE_POLL_S)
                else:
                    self._sleep()
                continue
            if type(event) is LiveUpdate:
                last_live = time.monotonic()
            wait = self.counts.suspended_until - time.monotonic()
            if wait > 0 and self.closing.wait(wait):  # suspended: wait (a close ends it), then try again
                with self.lock:
                    self._drop([event])
                self._drop_queued()
                return
            self.deliver(event)
            if self.lost:
                self._hand_lost()

    def _sleep(self) -> None:
        """Wait until a producer queues an event or the slot closes."""
        self.wakeup.clear()
        with self.lock:  # checked after the clear: a set that comes later is not lost
            if self.queue or self.closing.is_set():
                return
            self.asleep = True
        self.wakeup.wait()

    def stop(self, deadline: float) -> None:
        """Let the thread deliver what is queued until ``deadline``, then drop (and count) the rest; tell
        the sink of every event it lost."""
        with self.lock:  # an offer from now on is dropped (and counted)
            self.closing.set()
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread is None or self.thread.is_alive():
            if self.queue:
                log.warning("sink %s did not finish in time; its last %d events are dropped", self.sink.name,
                            len(self.queue))
            self._drop_queued()
        self._hand_lost()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            c = dataclasses.replace(self.counts)
            queued = len(self.queue)
        out: dict[str, Any] = {"delivered": c.delivered, "dropped": c.dropped + self.sink.dropped, "errors": c.errors}
        if c.skipped:
            out["skipped"] = c.skipped
        if not self.inline:
            out["queued"] = queued
        if c.suspended_until and time.monotonic() < c.suspended_until:
            out["suspended_s"] = round(c.suspended_until - time.monotonic(), 1)
        if c.last_error:
            out["last_error"] = c.last_error
        return out


class SinkHub:
    """Fans each event out to every sink: inline ones directly, the others through their own queue.

    The hub is itself shaped like a :class:`Sink` (``track``, ``live``, ``genre_changed``, ``status``),
    so a producer (the tagging worker, a :class:`service.live.LiveTagger`) takes either.
    """

    def __init__(self, sinks: list[Sink]) -> None:
        self.slots = [_Slot(s, getattr(s.settings, "queue", DEFAULT_QUEUE)) for s in sinks]
        self._started = False

    @classmethod
    def from_config(cls, config: Config, context: SinkContext,
                    classes: dict[str, type[Sink]] | None = None) -> SinkHub:
        """Build (not start) every active sink of ``config``. A sink that cannot be built raises."""
        sinks: list[Sink] = []
        for name, sink_cls in (classes or sink_classes()).items():
            settings = config.sinks.get(name)
            if settings is None or not settings.active():
                continue
            sink_cls.check_environment()
            sinks.append(sink_cls(settings, context))
        return cls(sinks)

    @property
    def sinks(self) -> list[Sink]:
        return [slot.sink for slot in self.slots]

    def start(self) -> None:
        """Start every sink (in order; if one fails, the ones started are closed and the error raised)."""
        started: list[_Slot] = []
        try:
            for slot in self.slots:
                slot.sink.start()
                started.append(slot)
        except BaseException:
            for slot in started:
                slot.sink.close(time.monotonic() + 1.0)
            raise
        for slot in self.slots:
            slot.start()
        self._started = True

    def describe(self) -> str:
        return ", ".join(s.sink.describe() for s in self.slots) or "no sinks"

    def emit(self, event: Event) -> None:
        for slot in self.slots:
            slot.offer(event)

    track: Callable[[TrackDone], None] = emit  # type: ignore[assignment]
    live: Callable[[LiveUpdate], None] = emit  # type: ignore[assignment]
    genre_changed: Callable[[GenreChanged], None] = emit  # type: ignore[assignment]
    status: Callable[[Status], None] = emit  # type: ignore[assignment]

    def owes(self, result: TrackResult) -> bool:
        """Whether some sink's work for ``result`` must survive a crash (see :meth:`Sink.owes`)."""
        return any(slot.sink.owes(result) for slot in self.slots)

    def takes_owed(self) -> bool:
        return any(slot.sink.takes_owed() for slot in self.slots)

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per sink: delivered, dropped (queue full, suspended, or its own consumers), errors, queued, and
        skipped (events it had nothing to do for) when there were any."""
        return {slot.sink.name: slot.snapshot() for slot in self.slots}

    @property
    def dropped(self) -> int:
        return sum(slot.counts.dropped + slot.sink.dropped for slot in self.slots)

    def close(self, deadline: float) -> None:
        """Drain the queues and close every sink by ``deadline`` (monotonic seconds); never raises."""
        for slot in self.slots:
            slot.stop(deadline)
        for slot in self.slots:
            try:
                slot.sink.close(deadline)
            except Exception as exc:
                log.warning("sink %s did not close cleanly: %s", slot.sink.name, exc)
