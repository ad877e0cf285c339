"""The tags sink: the daemon writes each tagged file's decided genres into the file's own tags.

Off unless ``[tags] write = true``: the daemon never touches a user's files unless asked. Queued (its
own thread): a write reads and rewrites a file, which may take a while on a slow disk. Each write goes
through :class:`service.tagwriter.TagWriter`, which records the file's new size, mtime and fingerprint
in the library before the rewritten file replaces the old one, so the folder watcher sees the file
as already tagged and never queues it again because of its new tags. A file whose library row is no
longer ``tagged`` (it changed and was queued again) or whose content changed since it was tagged is
left alone: its next result will be written.

A tagged file whose write this sink never makes (its queue overflowed, it was suspended after failures,
or the daemon stopped first) is queued again behind all other work (:meth:`TagsSink.lost`), so it is
tagged and its tags written again later, in this run or the next: none is left unwritten for good.

``retag_outdated`` queues at start, behind every other file, the tracks an older model (or another
one) tagged; the worker re-tags them and this sink rewrites their files' genres under this section's
settings (``genre-tagger library retag --outdated`` does the same from the command line, each file
under the settings it was last written with).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from service.events import Event, TrackDone
from service.library import TAGGED, Library, now_iso
from service.sinks import DEFAULT_QUEUE, Sink, SinkContext, SinkSettings, check
from service.tagwriter import FAILED, SKIPPED, WRITTEN, TagWriter, WriteSettings
from tagger.errors import ConfigError
from tagger.filetags import POLICIES

if TYPE_CHECKING:
    from service.config import Config

log = logging.getLogger(__name__)
LOST_TIMEOUT_S = 0.25  # how long noting unwritten files may wait for the library's lock (it may run at SIGTERM)


@dataclass
class TagsSection(SinkSettings):
    """write: write decided genres into the files' own tags (default false). policy: if-empty (only
    files without genres, or with genre-tagger's own), merge (theirs, then ours) or replace. outputs:
    model outputs whose decided labels are written (empty: the model's first). threshold: the
    probability a label needs, 0..1 (0 = [tagging] threshold; higher for stricter tags, never lower: a
    file never gets a genre the library calls uncertain). aliases: "label=Name" strings, the names
    written. retag_outdated: at start, queue the tracks another model or version tagged,
    behind all other work. queue: tracks waiting to be written before the oldest are dropped."""

    write: bool = False
    policy: str = "if-empty"
    outputs: list[str] = field(default_factory=list)
    threshold: float = 0.0
    aliases: list[str] = field(default_factory=list)
    retag_outdated: bool = False
    queue: int = DEFAULT_QUEUE

    def active(self) -> bool:
        return self.write or self.retag_outdated

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.policy in POLICIES, f"{section}.policy", f"must be one of {', '.join(POLICIES)}")
        check(0.0 <= self.threshold <= 1.0, f"{section}.threshold", "must be within 0..1 (0 = [tagging] threshold)")
        for alias in self.aliases:
            check("=" in alias and alias.split("=", 1)[0].strip() and alias.split("=", 1)[1].strip(),
                  f"{section}.aliases", f"{alias!r} is not LABEL=NAME")

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
        write = WriteSettings(settings.policy, tuple(settings.outputs),
                              settings.write_threshold(config.tagging.threshold), settings.alias_map())
        self.writer = TagWriter(self.library, write, "daemon", list(self.context.labels) or None)
        if settings.retag_outdated and " " in self.context.model:
            model, version = self.context.model.rsplit(" ", 1)
            queued = self.library.queue_outdated(model, version)
            if queued:
                log.info("%d tracks tagged by another model or version queued to be re-tagged with %s", queued,
                         self.context.model)

    def describe(self) -> str:
        settings = self.settings
        if not settings.write:
            return "re-tag outdated tracks (file tags not written)"
        return f"genres into file tags (policy {settings.policy})"

    def track(self, event: TrackDone) -> bool:
        settings = self.settings
        if not settings.write or event.result is None or self.library is None or self.writer is None:
            return False
        row = self.library.get(event.path)
        if row is None or row.status != TAGGED or row.id != event.track_id:
            return False  # changed, moved or deleted since: its next result is written instead
        result = event.result
        outcome = self.writer.write(row.id, event.path, result.outputs, result.model, result.model_version,
                                    row.fingerprint, event.music)
        if outcome.action == WRITTEN:
            self.written += 1
            log.info("tags: %s", outcome.line())
        elif outcome.action in (SKIPPED, FAILED):
            log.warning("tags: %s", outcome.line())
        else:
            log.debug("tags: %s", outcome.line())
        return True

    def lost(self, events: list[Event]) -> None:
        """Tagged files whose tags this sink will not write (its queue overflowed, it was suspended, or the
        daemon stopped first) are queued again behind all other work, so their tags are written after they
        are tagged again, in this run or the next: a file is never left tagged in the library but unwritten."""
        ids = [(e.track_id,) for e in events if isinstance(e, TrackDone) and e.result is not None]
        if not ids or not self.settings.write:
            return
        # A connection of its own, quick to give up: this may run at the close, beside a stuck write.
        try:
            db = sqlite3.connect(self.context.config.library_path, timeout=LOST_TIMEOUT_S)
            try:
                with db:
                    db.executemany("UPDATE tracks SET status = 'pending', priority = -1, attempts = 0, queued_at = ? "
                                   f"WHERE id = ? AND status = '{TAGGED}'", [(now_iso(), *i) for i in ids])
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.warning("tags: %d files' tags were not written and could not be queued again (%s); they get "
                        "their tags when they are next tagged", len(ids), exc)
            return
        log.warning("tags: %d files' tags were not written (the writer fell behind, failed or the daemon stopped "
                    "first): queued to be tagged and written again", len(ids))

    def close(self, deadline: float) -> None:
        if self.library is not None:
            self.library.close()
            self.library = None
