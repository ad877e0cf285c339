"""The tags sink: the daemon writes each tagged file's decided genres into the file's own tags.

Off unless ``[tags] write = true``: the daemon never touches a user's files unless asked. Queued (its
own thread): a write reads and rewrites a file, which may take a while on a slow disk. Each write goes
through :class:`service.tagwriter.TagWriter`, which records the file's new size, mtime and fingerprint
in the library before the rewritten file replaces the old one, so the folder watcher sees the file
as already tagged and never queues it again because of its new tags. A file whose library row is no
longer ``tagged`` (it changed and was queued again) or whose content changed since it was tagged is
left alone: its next result will be written.

Nothing is lost: when a result's genres are to be written (:meth:`TagsSink.owes`), the library stores
a ``tags_owed`` row with the result in the same transaction that marks the file tagged, and this sink
removes it only after the write was made and verified (or found unnecessary: already so, the user's own
genres kept, the file changed since). Whatever stops a write from being made (a kill -9, a crash, a power
cut, a full queue, a suspension, a stop), the daemon makes it later from that row, without tagging the
file again: at its next start, or, for writes this sink lost while running, at its next heartbeat. A
write that cannot be made (a read-only file or folder, an unsupported format, hard links) is recorded as
failed for good at once, with its reason (``genre-tagger library stats`` counts them, ``library show``
says why); one that may work later (a file locked by another program, a full disk) is tried again
while the daemon runs, at a heartbeat after ``retry_seconds``, then twice as long after each failure
(at most :data:`RETRY_MAX_S`), and after a restart at the time it was given (kept in the library, so quick
restarts do not use up its attempts); it is recorded as failed for good at its ``write_attempts``-th
failure. ``[tagging] retry_errors`` owes the failed ones again. A file that another genre-tagger process
(``library retag``, ``tag --write-tags``, ``library restore-tags``) is writing meanwhile (it claims it in
the library) is left to it and looked at again at the next heartbeat: no two processes write one file at
once, nor one write twice. A
stored result the writer cannot use (a row it cannot read, a ``[tags] outputs`` the old result lacks)
sends the file back to be tagged again.

Owed writes are made only while ``write = true``: with file tagging turned off they are kept, untouched,
and counted in the daemon's status (``tag_writes_owed``); they are made when it is turned on again, unless
the file changed or was tagged again meanwhile (then its new result decides).

``retag_outdated`` queues at start, behind every other file, the tracks an older model (or another
one) tagged; the worker re-tags them and this sink rewrites their files' genres under this section's
settings (``genre-tagger library retag --outdated`` does the same from the command line, each file
under the settings it was last written with).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from service.events import Event, Status, TrackDone
from service.library import OWED_ATTEMPTS, Library, OwedWrite
from service.sinks import DEFAULT_QUEUE, Sink, SinkContext, SinkSettings, check
from service.tagwriter import BUSY, FAILED, QUEUED, SKIPPED, WRITTEN, TagWriter, WriteSettings, write_owed
from tagger.errors import ConfigError
from tagger.filetags import POLICIES, TagWriteError

if TYPE_CHECKING:
    from service.config import Config
    from tagger.pipeline import TrackResult

log = logging.getLogger(__name__)
CATCH_UP_BATCH = 50  # owed writes read from the library at a time
CATCH_UP_S = 5.0  # the longest a catch-up writes at one heartbeat before the queued events go first (s)
RETRY_MAX_S = 3600.0  # the longest wait before a failed owed write is tried again while the daemon runs (s)


def retry_delay(retry_seconds: float, attempts: int) -> float:
    """Seconds to wait before trying again a write that failed ``attempts`` times for a passing reason:
    ``retry_seconds``, then twice as long after each failure, at most :data:`RETRY_MAX_S`."""
    return min(RETRY_MAX_S, retry_seconds * 2.0 ** max(0, attempts - 1))


@dataclass
class TagsSection(SinkSettings):
    """write: write decided genres into the files' own tags (default false). policy: if-empty (only
    files without genres, or with genre-tagger's own), merge (theirs, then ours) or replace. outputs:
    model outputs whose decided labels are written (empty: the model's first). threshold: the
    probability a label needs, 0..1 (0 = [tagging] threshold; higher for stricter tags, never lower: a
    file never gets a genre the library calls uncertain). aliases: "label=Name" strings, the names
    written. retag_outdated: at start, queue the tracks another model or version tagged,
    behind all other work. queue: tracks waiting to be written before the oldest are dropped.
    retry_seconds: wait (s) before a write that failed for a passing reason (a file locked by another
    program, a full disk) is tried again while the daemon runs, doubled after each failure up to an hour.
    write_attempts: failures after which such a write is recorded as failed for good."""

    write: bool = False
    policy: str = "if-empty"
    outputs: list[str] = field(default_factory=list)
    threshold: float = 0.0
    aliases: list[str] = field(default_factory=list)
    retag_outdated: bool = False
    queue: int = DEFAULT_QUEUE
    retry_seconds: float = 60.0
    write_attempts: int = OWED_ATTEMPTS

    def active(self) -> bool:
        return self.write or self.retag_outdated

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.policy in POLICIES, f"{section}.policy", f"must be one of {', '.join(POLICIES)}")
        check(0.0 <= self.threshold <= 1.0, f"{section}.threshold", "must be within 0..1 (0 = [tagging] threshold)")
        for alias in self.aliases:
            check("=" in alias and alias.split("=", 1)[0].strip() and alias.split("=", 1)[1].strip(),
                  f"{section}.aliases", f"{alias!r} is not LABEL=NAME")
        check(self.retry_seconds > 0, f"{section}.retry_seconds", "must be positive (seconds)")
        check(self.write_attempts >= 1, f"{section}.write_attempts", "must be at least 1")

    def validate_with(self, section: str, config: Config) -> None:
        # Below the tagging threshold, files would get genres the library, console and status call
        # uncertain (contract: an uncertain result never becomes a file tag).
        tagging = config.tagging.threshold
        check(not self.active() or not self.threshold or self.threshold >= tagging, f"{section}.threshold",
              f"{self.threshold:g} is below tagging.threshold {tagging:g}: a file would get genres the library "
              f"calls uncertain (raise {section}.threshold, lower tagging.threshold, or set 0 to use it)")

    def write_threshold(self, tagging: float) -> float:
        """The probability a label needs to be written: ``threshold``, or the tagging one (0..1)."""
        return max(self.threshold, tagging)

    def alias_map(self) -> dict[str, str]:
        return {a.split("=", 1)[0].strip(): a.split("=", 1)[1].strip() for a in self.aliases}

    def write_settings(self, tagging: float) -> WriteSettings:
        """How the daemon writes genres into files under this section (``tagging``: [tagging] threshold)."""
        return WriteSettings(self.policy, tuple(self.outputs), self.write_threshold(tagging), self.alias_map())


class TagsSink(Sink):
    name: ClassVar[str] = "tags"
    Settings: ClassVar[type[SinkSettings]] = TagsSection
    inline: ClassVar[bool] = False

    def __init__(self, settings: TagsSection, context: SinkContext) -> None:
        super().__init__(settings, context)
        self.settings: TagsSection = settings
        unknown = [o for o in settings.outputs if context.labels and o not in context.labels]
        if unknown:
            raise ConfigError(f"config tags.outputs: {', '.join(unknown)} is not an output of the model "
                              f"({', '.join(context.labels)})")
        self.library: Library | None = None
        self.writer: TagWriter | None = None
        self.written = 0
        # Owed writes to make from the library at the next heartbeat(s): at start, and after lost events.
        self._catch_up = False
        self._lost = False
        self._pass: tuple[int, int] | None = None  # the pass under way: (last owed id done, last id of the pass)
        # Owed ids to try again while running (a passing failure, or another process was writing the file):
        # the time.monotonic() at which; the catch-up passes leave them to that time.
        self._due: dict[int, float] = {}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--write-tags", action="store_true", default=None,
                            help="write each tagged file's decided genres into its own tags ([tags] write)")
        parser.add_argument("--tag-policy", choices=POLICIES, default=None,
                            help="files that already have genres: if-empty (default), merge or replace ([tags] policy)")
        parser.add_argument("--retag-outdated", action="store_true", default=None,
                            help="re-tag, behind all other work, the tracks an older model tagged "
                                 "([tags] retag_outdated)")

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {"write": args.write_tags, "policy": args.tag_policy, "retag_outdated": args.retag_outdated}

    def start(self) -> None:
        settings = self.settings
        config = self.context.config
        self.library = Library(config.library_path, config.tagging.store_top_k)
        self.writer = TagWriter(self.library, settings.write_settings(config.tagging.threshold), "daemon",
                                list(self.context.labels) or None)
        if settings.retag_outdated and " " in self.context.model:
            model, version = self.context.model.rsplit(" ", 1)
            queued = self.library.queue_outdated(model, version)
            if queued:
                log.info("%d tracks tagged by another model or version queued to be re-tagged with %s", queued,
                         self.context.model)
        owed, failed = self.library.owed_counts()
        if settings.write:
            self._catch_up = True
            if owed:
                log.info("tags: %d genre writes owed from before (the daemon stopped before making them): "
                         "writing them", owed)
        if failed:
            log.warning("tags: %d files' genre writes failed for good earlier (`genre-tagger library stats`; "
                        "[tagging] retry_errors tries them again)", failed)

    def describe(self) -> str:
        settings = self.settings
        if not settings.write:
            return "re-tag outdated tracks (file tags not written)"
        return f"genres into file tags (policy {settings.policy})"

    def owes(self, result: TrackResult) -> bool:
        """A result owes a write when file tagging is on and it has genres to write (music, decided at the
        write threshold): never for an uncertain result or music == False."""
        if not self.settings.write or self.writer is None:
            return False
        try:
            return bool(self.writer.genres(result.outputs, result.music))
        except TagWriteError:
            return False

    def takes_owed(self) -> bool:
        return self.settings.write

    def track(self, event: TrackDone) -> bool:
        if not self.settings.write or event.result is None or self.library is None:
            return False
        owed = self.library.owed_write(event.track_id)
        if owed is None:
            return False  # nothing to write (uncertain, not music), or already written by a catch-up
        return self._settle(owed)

    def status(self, event: Status) -> bool:
        """At a heartbeat, make owed writes from the library (after a start, or after lost events) and try again
        those whose time came (:meth:`_settle`), for at most :data:`CATCH_UP_S`; the rest at the next heartbeats."""
        if not self.settings.write or self.library is None:
            return False
        deadline = time.monotonic() + CATCH_UP_S
        did = self._catch_up_pass(deadline) if self._catch_up else False
        now = time.monotonic()
        for owed_id in sorted(i for i, due in self._due.items() if due <= now):
            if time.monotonic() >= deadline:
                break
            del self._due[owed_id]
            owed = self.library.owed_writes(owed_id - 1, owed_id, 1)
            if owed:  # else made, replaced by a newer result, or failed for good meanwhile
                did = self._settle(owed[0]) or did
        return did

    def _catch_up_pass(self, deadline: float) -> bool:
        assert self.library is not None
        library = self.library
        if self._pass is None:
            self._pass = (0, library.last_owed_id())  # the writes owed now; newer ones come with their events
        did = False
        while time.monotonic() < deadline:
            done, last = self._pass
            batch = library.owed_writes(done, last, CATCH_UP_BATCH)
            if not batch:
                self._pass = None
                self._catch_up, self._lost = self._lost, False  # lost meanwhile: one more pass
                break
            for owed in batch:
                self._pass = (owed.id, last)
                if owed.id in self._due:
                    pass  # its time is kept there
                elif (wait := owed.retry_wait()) > 0:  # failed before a restart: tried at the time it was given
                    self._due[owed.id] = time.monotonic() + min(wait, RETRY_MAX_S)
                else:
                    did = self._settle(owed) or did
                if time.monotonic() >= deadline:
                    break
        return did

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait before trying again a write that failed ``attempts`` times (passing failures)."""
        return retry_delay(self.settings.retry_seconds, attempts)

    def _settle(self, owed: OwedWrite) -> bool:
        """Make one owed write and record how it ended; False when there was nothing to write."""
        assert self.library is not None and self.writer is not None
        self._due.pop(owed.id, None)
        outcome, final = write_owed(self.library, self.writer, owed, attempts=self.settings.write_attempts,
                                    retry_delay=self.retry_delay)
        if outcome is None:
            return False  # changed, tagged again, deleted, or written already: its new result (or none) decides
        if outcome.action == QUEUED:
            log.warning("tags: %s", outcome.line())
            return False
        if outcome.action == BUSY:  # `library retag` is writing it: made by it, or failed and ours to try again
            log.debug("tags: %s (looked at again at the next heartbeat)", outcome.line())
            self._due[owed.id] = time.monotonic()
            return False
        if outcome.action not in (SKIPPED, FAILED):
            if outcome.action == WRITTEN:
                self.written += 1
                log.info("tags: %s", outcome.line())
            else:
                log.debug("tags: %s", outcome.line())
            return True
        if final:
            log.warning("tags: %s (not tried again: `genre-tagger library stats` counts these)", outcome.line())
        else:
            attempts = owed.attempts + 1
            delay = self.retry_delay(attempts)
            self._due[owed.id] = time.monotonic() + delay
            log.warning("tags: %s (failure %d of %d; tried again in %.0f s)", outcome.line(), attempts,
                        self.settings.write_attempts, delay)
        return True

    def lost(self, events: list[Event]) -> None:
        """Tagged files whose event this sink will not get (its queue overflowed, it was suspended, or the
        daemon stopped first): their writes stay owed in the library and are made from there, at the next
        heartbeat or, after a stop, at the next start; nothing is tagged again."""
        lost = sum(1 for e in events if isinstance(e, TrackDone) and e.result is not None)
        if not lost or not self.settings.write:
            return
        self._lost = self._catch_up = True
        log.warning("tags: %d files' tags were not written now (the writer fell behind, failed or the daemon "
                    "stopped first): they stay owed in the library and are written later", lost)

    def close(self, deadline: float) -> None:
        if self.library is not None:
            self.library.close()
            self.library = None
