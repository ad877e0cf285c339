"""The console sink: the daemon says what it does, a line per file, and a progress bar of the queue.

Each tagged file is one line on stdout: ``tagged  PATH  → jazz (72 %)``, ``→ uncertain: jazz / blues
(56 %)`` below the threshold, or ``→ no music (90 %)``; so is each genre change of a live source
(``live radio  at 42 s  → jazz (72 %)``, ``→ uncertain: jazz (45 %)`` or ``→ no music (90 %)``), so
that ``daemon --live`` shows on its terminal what it hears. A file that failed is the daemon's own warning
line on stderr (``genre-tagger: WARNING: PATH: reason``), so it is not repeated here. Each library scan
ends with a ``scan done: N files, M queued, in S s`` line (the folder watcher's).

On a terminal, while files wait in the queue, a progress bar on stderr counts them down (it stays below
the lines and disappears when the queue is empty, leaving a ``queue empty`` line). Under systemd the
same lines go to the journal (stdout and stderr are the journal there) and ``STATUS=`` carries the
queue; no bar. Queued (its own thread): a terminal that stops reading never slows the daemon.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from service.events import GenreChanged, Status, TrackDone
from service.sinks import DEFAULT_QUEUE, Sink, SinkContext, SinkSettings
from tagger.ensemble import NO_MUSIC


@dataclass
class ConsoleSection(SinkSettings):
    """enabled: a line per tagged file on stdout (default true). progress: a progress bar of the queue
    on stderr while files wait, on a terminal only (default true). queue: lines waiting to be printed
    before the oldest are dropped (and counted)."""

    enabled: bool = True
    progress: bool = True
    queue: int = DEFAULT_QUEUE

    def active(self) -> bool:
        return self.enabled


def describe_track(event: TrackDone) -> str:
    """``tagged  PATH  → jazz (72 %)`` (or uncertain / no music) for a tagged file; '' for a failure."""
    if event.result is None:
        return ""
    estimate = next(iter(event.result.outputs.values()), None)
    if not event.music:
        probability = event.result.music_probability
        verdict = NO_MUSIC + ("" if probability is None else f" ({100 * (1 - probability):.0f} %)")
    elif estimate is None:
        verdict = "no outputs"
    elif estimate.uncertain:
        candidates = " / ".join((estimate.candidates or [estimate.top])[:3])
        verdict = f"uncertain: {candidates} ({100 * estimate.confidence:.0f} %)"
    else:
        verdict = f"{estimate.top} ({100 * estimate.confidence:.0f} %)"
    return f"tagged  {event.path}  → {verdict}"


def describe_change(event: GenreChanged) -> str:
    """``live radio  at 42 s  → jazz (72 %)`` (or no music) for a live source's genre change; the stream
    time in seconds since the source started."""
    if not event.music:
        verdict = f"{NO_MUSIC} ({100 * event.confidence:.0f} %)"
    elif event.uncertain:  # music whose genre is not decided: the likeliest, never said as fact
        verdict = f"uncertain: {event.current} ({100 * event.confidence:.0f} %)"
    else:
        verdict = f"{event.current} ({100 * event.confidence:.0f} %)"
    return f"live {event.source}  at {event.stream_s:.0f} s  → {verdict}"


class ConsoleSink(Sink):
    name: ClassVar[str] = "console"
    Settings: ClassVar[type[SinkSettings]] = ConsoleSection
    inline: ClassVar[bool] = False

    def __init__(self, settings: ConsoleSection, context: SinkContext, out: IO[str] | None = None,
                 err: IO[str] | None = None) -> None:
        super().__init__(settings, context)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.use_bar = settings.progress and self.err.isatty()
        self._bar: Any = None
        self._redirect: Any = None
        self.done = 0  # files finished since the bar appeared
        self.tagged = 0
        self.failed = 0

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def track(self, event: TrackDone) -> None:
        if event.ok:
            self.tagged += 1
            self._print(describe_track(event))
        else:
            self.failed += 1
        if self._bar is not None:
            self.done += 1
            self._bar.total = max(self._bar.total, self.done)
            self._bar.update(1)

    def genre_changed(self, event: GenreChanged) -> None:
        self._print(describe_change(event))

    def status(self, event: Status) -> None:
        if not self.use_bar:
            return
        if event.queue_depth and self._bar is None:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.done = 0
            self._bar = tqdm(total=event.queue_depth, unit="file", desc="queue", file=self.err, dynamic_ncols=True,
                             leave=False)
            self._redirect = logging_redirect_tqdm()  # log lines print above the bar, not through it
            self._redirect.__enter__()
        elif self._bar is not None:
            self._bar.total = self.done + event.queue_depth
            self._bar.refresh()
            if not event.queue_depth:
                self._close_bar()
                self._print(f"queue empty: {self.tagged} tagged, {self.failed} failed since start")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def close(self, deadline: float) -> None:
        self._close_bar()
