"""Genres into the audio files' own tags, remembered in the library so a run can be undone.

:class:`TagWriter` decides what a file should hold (:func:`tagger.filetags.plan_genres` under the
policy), writes it atomically (:func:`tagger.filetags.write_state`) and, just before the rewritten
file replaces the old one, records in the library the genre tags before and after and the file's
new size, mtime and fingerprint: the daemon's folder watcher then sees the rewritten file as the
tagged one and does not queue it again. :func:`restore_tags` puts the recorded ``before`` back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.library import OWED_ATTEMPTS, Library, OwedWrite, fingerprint, result_from_json
from tagger.ensemble import OutputEstimate, summarise
from tagger.filetags import (
    DEFAULT_POLICY,
    POLICIES,
    FileSkipped,
    GenreState,
    TagWriteError,
    decided_genres,
    plan_genres,
    provenance_value,
    read_state,
    remove_stale_temps,
    unique,
    with_genres,
    write_state,
)
from tagger.model import OutputSpec

WRITTEN, UNCHANGED, KEPT, UNDECIDED, SKIPPED, FAILED, DRY_RUN, RESTORED, QUEUED, BUSY, SUPERSEDED = (
    "written", "unchanged", "kept", "undecided", "skipped", "error", "dry-run", "restored", "queued again",
    "busy", "superseded")
# How often a process waiting for another one's claim on a file looks again (s).
CLAIM_POLL_S = 0.2
# How long a command (`library retag`, `tag --write-tags`, `library restore-tags`) waits for another process (the
# daemon) to finish writing a file it wants to write (s); still held after that, the file is left (BUSY).
CLAIM_WAIT_S = 120.0


class Superseded(FileSkipped):
    """An owed write whose ``tags_owed`` row went while the file was being written (a newer result replaced
    it, or another process made it): the rewritten copy is dropped, the file left as it was."""


@dataclass(frozen=True)
class WriteSettings:
    """How genres go into files.

    Attributes:
        policy: ``if-empty`` (default), ``merge`` or ``replace`` (see :func:`tagger.filetags.plan_genres`).
        outputs: the model outputs whose decided labels are written (empty: the model's first output).
        threshold: the probability a label needs (0..1); the model's probabilities are calibrated.
        aliases: model label → the user's genre name.
        dry_run: say what would change, write nothing.
    """

    policy: str = DEFAULT_POLICY
    outputs: tuple[str, ...] = ()
    threshold: float = 0.6
    aliases: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise TagWriteError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise TagWriteError(f"threshold {self.threshold} is not within 0..1")

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "outputs": list(self.outputs), "threshold": self.threshold,
                "aliases": dict(self.aliases)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WriteSettings:
        return cls(data.get("policy", DEFAULT_POLICY), tuple(data.get("outputs") or ()),
                   float(data.get("threshold", 0.6)), dict(data.get("aliases") or {}))


@dataclass
class Outcome:
    """What happened to one file; :meth:`line` is the user's one line about it."""

    path: str
    action: str
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    reason: str = ""
    lasting: bool = False  # a skip or failure that trying again will not mend (a read-only file, a format)
    owed_dropped: bool = False  # restore-tags: a genre write the daemon still owed for this file was dropped

    def line(self) -> str:
        def show(genres: tuple[str, ...]) -> str:
            return "; ".join(genres) if genres else "(none)"

        change = f"{show(self.before)} → {show(self.after)}"
        if self.action in (WRITTEN, RESTORED):
            return f"{self.path}: {change}"
        if self.action == DRY_RUN:
            return f"{self.path}: {change} (dry run)"
        if self.action == UNCHANGED:
            return f"{self.path}: {show(self.before)} (already so)"
        if self.action == KEPT:
            return f"{self.path}: {show(self.before)} kept ({self.reason})"
        return f"{self.path}: {self.action}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "action": self.action, "before": list(self.before), "after": list(self.after),
                "reason": self.reason}


def reestimate(outputs: Mapping[str, OutputEstimate], threshold: float,
               aliases: Mapping[str, str] | None) -> dict[str, OutputEstimate]:
    """The same probabilities judged at ``threshold`` with ``aliases`` (from estimates made without aliases).

    An estimate lists every label of its output with its probability, so it is judged again exactly as
    the tagger would have judged it with these settings (:func:`tagger.ensemble.summarise`).
    """
    result = {}
    for name, est in outputs.items():
        labels = tuple(s.label for s in est.scores)
        spec = OutputSpec(name, name, "sigmoid" if est.multi_label else "softmax", labels, est.title)
        probs = np.array([s.score for s in est.scores])
        result[name] = summarise(spec, probs, {}, est.slices, threshold, len(labels), aliases)
    return result


def ours(last_write: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The genres genre-tagger added with its last write (those of ``after`` not in ``before``)."""
    if last_write is None:
        return None
    before = {g.casefold() for g in last_write["before"].get("genres") or ()}
    return unique(g for g in last_write["after"].get("genres") or () if g.casefold() not in before)


class TagWriter:
    """Writes decided genres into files and records each write in the library.

    Args:
        library: the library (its thread's connection); None for a dry run without one.
        settings: policy, outputs, threshold, aliases, dry run.
        command: what started this run (kept with the run, for ``restore-tags``).
        output_names: the model's outputs, to check the settings' against now (else at the first write).
    """

    def __init__(self, library: Library | None, settings: WriteSettings, command: str,
                 output_names: Sequence[str] | None = None) -> None:
        self.library = library
        self.settings = settings
        self.command = command
        self.run_id: int | None = None
        if output_names is not None:
            for name in settings.outputs:
                if name not in output_names:
                    raise TagWriteError(f"--tag-output {name}: not an output of the model ({', '.join(output_names)})")

    def genres(self, outputs: Mapping[str, OutputEstimate], music: bool = True,
               settings: WriteSettings | None = None) -> tuple[str, ...]:
        """The genres a result allows under these settings (nothing for uncertain or non-music results)."""
        settings = settings or self.settings
        judged = reestimate(outputs, settings.threshold, settings.aliases)
        return decided_genres(judged, settings.outputs or None, music)

    def write(self, track_id: int | None, path: str | Path, outputs: Mapping[str, OutputEstimate], model: str,
              model_version: str, expected_fingerprint: str | None, music: bool = True,
              settings: WriteSettings | None = None, owed_id: int | None = None) -> Outcome:
        """Write one tagged file's genres (``settings`` overrides the writer's for this file).

        ``owed_id``: the write is this ``tags_owed`` row's; if the row is gone by the time the rewritten copy
        is ready, the file is left as it was (:data:`SUPERSEDED`).
        """
        settings = settings or self.settings
        path = str(path)
        try:
            new = self.genres(outputs, music, settings)
        except TagWriteError as exc:
            return Outcome(path, FAILED, reason=str(exc))
        if not new:
            why = "not music" if not music else "no genre reached the threshold"
            return Outcome(path, UNDECIDED, reason=f"{why}, tags left alone")
        try:
            current = read_state(path)
            last = None if track_id is None or self.library is None else self.library.last_tag_write(track_id)
            planned = plan_genres(current, new, settings.policy, ours(last))
            if planned is None:
                return Outcome(path, KEPT, current.genres, current.genres,
                               f"its own genres, policy {settings.policy}")
            target = with_genres(current, planned, provenance_value(model, model_version))
            if target == current:
                return Outcome(path, UNCHANGED, current.genres, current.genres)
            if settings.dry_run or track_id is None or self.library is None:
                return Outcome(path, DRY_RUN, current.genres, target.genres)
            if expected_fingerprint is not None and fingerprint(path) != expected_fingerprint:
                raise FileSkipped(f"{path}: changed since it was tagged, tags not written (it will be tagged again)")

            library = self.library

            def record(temp: Path, st: os.stat_result) -> None:
                if self.run_id is None:
                    self.run_id = library.start_tag_run(self.command)
                if not library.record_tag_write(self.run_id, track_id, path, current.as_dict(), target.as_dict(),
                                                settings.policy, settings.as_dict(), model, model_version,
                                                st.st_size, st.st_mtime, fingerprint(temp, st.st_size), owed_id):
                    raise Superseded(f"{path}: a newer result replaced this write, or it was made meanwhile")

            done = write_state(path, target, expected=current, before_replace=record)
        except Superseded as exc:
            return Outcome(path, SUPERSEDED, reason=_reason(exc, path))
        except FileSkipped as exc:
            return Outcome(path, SKIPPED, reason=_reason(exc, path), lasting=exc.lasting)
        except (TagWriteError, OSError) as exc:
            return Outcome(path, FAILED, reason=_reason(exc, path))
        return Outcome(path, WRITTEN if done.changed else UNCHANGED, current.genres, target.genres)


def claim(library: Library, track_id: int, wait_s: float = 0.0,
          waiting: Callable[[int], None] | None = None) -> int | None:
    """Claim the writing of a track's file for this process (:meth:`Library.claim_tag_write`: the daemon and
    every command that writes tags share the library's claims, so no two write one file at once), waiting up
    to ``wait_s`` seconds for another live process's claim (``waiting`` is called once with its pid when the
    wait begins). Returns None once claimed (release it with :meth:`Library.release_tag_write`), else the pid
    of the process that still holds it."""
    holder = library.claim_tag_write(track_id)
    if holder is not None and wait_s > 0:
        if waiting is not None:
            waiting(holder)
        deadline = time.monotonic() + wait_s
        while holder is not None and time.monotonic() < deadline:
            time.sleep(CLAIM_POLL_S)
            holder = library.claim_tag_write(track_id)
    return holder


def under_claim(library: Library, track_id: int, path: str | Path, wait_s: float,
                waiting: Callable[[int], None] | None, left: str, write: Callable[[], Outcome]) -> Outcome:
    """``write()`` under the claim of a track's file (:func:`claim`, waiting up to ``wait_s`` seconds), released
    after; a file another process still holds is not touched: :data:`BUSY`, its reason ending with ``left``."""
    holder = claim(library, track_id, wait_s, waiting)
    if holder is not None:
        return Outcome(str(path), BUSY, reason=f"genre-tagger process {holder} was writing its tags for {wait_s:g} s, "
                                               f"{left}")
    try:
        return write()
    finally:
        library.release_tag_write(track_id)


def waiting_line(path: str | Path, pid: int) -> str:
    """The one line a command prints when it begins to wait for another process's claim on ``path``."""
    return (f"genre-tagger: {path}: waiting for genre-tagger process {pid} (the daemon, or another run), which is "
            "writing its tags now")


def write_owed(library: Library, writer: TagWriter, owed: OwedWrite, settings: WriteSettings | None = None,
               attempts: int = OWED_ATTEMPTS, wait_s: float = 0.0, waiting: Callable[[int], None] | None = None,
               retry_delay: Callable[[int], float] | None = None, asked: bool = False) -> tuple[Outcome | None, bool]:
    """Make a write the library holds as owed (``tags_owed``) from its stored result, and record how it ended.

    The file is claimed first (:meth:`Library.claim_tag_write`), so the daemon and ``library retag`` never
    write one file at once, and the owed row is read again under the claim, so a write the other one made
    meanwhile is not made twice. Another live process's claim is waited for up to ``wait_s`` seconds
    (``waiting`` is called once with its pid when the wait begins); still held, the outcome is :data:`BUSY`
    and the row is left to that process.

    Returns (outcome, failed for good). The outcome is None when there is nothing to write any more (the
    file changed, was tagged again, was deleted, or was written already: the row is removed, or a newer
    result replaced it), and :data:`QUEUED` when the stored result is not enough to write from (it lacks an
    output ``settings`` names, or cannot be read): the track is queued to be tagged again. A write that was
    made, or found unnecessary, removes the row; a skip or failure is recorded (:meth:`Library.owed_failed`:
    failed for good when lasting, or at the ``attempts``-th failure; else to be tried again
    ``retry_delay(failures so far)`` seconds later, a time kept in the row).

    ``asked``: a try the user asked for (``library retry-owed``), not one of the daemon's: a write that failed for
    good is tried too, and a failure uses none of the write's attempts and leaves its retry time as it was
    (:meth:`Library.owed_tried`): only its reason is kept; it fails for good when lasting, or when it had failed
    for good before.
    """
    holder = claim(library, owed.track_id, wait_s, waiting)
    if holder is not None:
        return Outcome(owed.path or "", BUSY, reason=f"being written by another genre-tagger process "
                                                     f"(pid {holder}), left to it"), False
    try:
        fresh = library.owed_writes(owed.id - 1, owed.id, 1, failed=asked)
        if not fresh:
            return None, False  # made by the other process meanwhile, or replaced by a newer result
        if fresh[0].failed:
            library.owed_unfail(fresh[0].id)  # the write's record is made only for a write still owed
        return _write_claimed(library, writer, fresh[0], settings or writer.settings, attempts, retry_delay, asked)
    finally:
        library.release_tag_write(owed.track_id)


def _write_claimed(library: Library, writer: TagWriter, owed: OwedWrite, settings: WriteSettings,
                   attempts: int, retry_delay: Callable[[int], float] | None,
                   asked: bool = False) -> tuple[Outcome | None, bool]:
    if not owed.file_is_current() or owed.path is None:
        library.owed_done(owed.id)
        if owed.path is not None:  # a writer killed mid-write left its copy beside the file: no write removes it now
            remove_stale_temps(Path(owed.path))
        return None, False
    try:
        result = result_from_json(owed.result, owed.path)
        missing = [o for o in settings.outputs if o not in result.outputs]
        if missing:
            raise ValueError(f"the stored result has no output {', '.join(missing)}")
    except ValueError as exc:
        library.queue_again([owed.track_id])
        library.owed_done(owed.id)
        return Outcome(owed.path, QUEUED, reason=f"{exc}: to be tagged again"), False
    # Never below the threshold the library judged this result at (lowered since: the library still calls the
    # labels in between uncertain, and the file is not tagged again).
    judged_at = max((result.outputs[o].threshold for o in settings.outputs or result.outputs), default=0.0)
    if judged_at > settings.threshold:
        settings = replace(settings, threshold=judged_at)
    outcome = writer.write(owed.track_id, owed.path, result.outputs, result.model, result.model_version,
                           owed.owed_fingerprint, result.music, settings, owed.id)
    if outcome.action == SUPERSEDED:
        return None, False  # its row is gone: the newer result's own write decides
    if outcome.action not in (SKIPPED, FAILED):
        library.owed_done(owed.id)
        if outcome.action != WRITTEN:  # no write ran, so none removed a killed writer's copy
            remove_stale_temps(Path(owed.path))
        return outcome, False
    if asked:
        for_good = outcome.lasting or owed.failed
        library.owed_tried(owed.id, outcome.reason, for_good)
        return outcome, for_good
    retry_in = retry_delay(owed.attempts + 1) if retry_delay is not None else 0.0
    return outcome, library.owed_failed(owed.id, outcome.reason, outcome.lasting, attempts, retry_in)


def _reason(exc: BaseException, path: str) -> str:
    text = str(exc)
    for prefix in (f"{path}: ", f"{os.path.realpath(path)}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def restore_tags(library: Library, run_id: int | None = None, paths: Sequence[str] | None = None,
                 dry_run: bool = False, force: bool = False, wait_s: float = 0.0,
                 waiting: Callable[[str, int], None] | None = None) -> list[Outcome]:
    """Put back the genre tags files had before genre-tagger wrote them.

    Args:
        run_id: undo this run and every later one (None: every write, back to the files' own tags).
        paths: only files at or under these paths.
        dry_run: say what would change, write nothing.
        force: restore even files whose genres were changed by someone else since genre-tagger wrote them.
        wait_s: how long to wait (s) for another process (the daemon) that is writing a file's tags now; still
            writing after that, the file is left as it is (:data:`BUSY`).
        waiting: called with (path, pid) when such a wait begins.
    """
    writes = library.tag_writes(None, list(paths) if paths else None)
    if run_id is not None:
        writes = [w for w in writes if w["run_id"] >= run_id]
    by_track: dict[int, list[dict]] = {}
    for w in writes:
        by_track.setdefault(w["track_id"], []).append(w)
    outcomes = []
    for track_id, history in by_track.items():
        path = history[-1]["path"]
        row = library.track(track_id)
        if row and row["path"] != path and Path(row["path"]).exists():
            path = row["path"]  # the file moved since; its row followed it
        if dry_run:
            outcomes.append(_restore_one(library, track_id, path, history, dry_run, force))
            continue

        def restore(t: int = track_id, p: str = path, h: list[dict] = history) -> Outcome:
            # The writes read again under the claim: one the daemon made while this waited for it is undone too.
            fresh = [w for w in library.tag_writes(track_id=t) if run_id is None or w["run_id"] >= run_id]
            return _restore_one(library, t, p, fresh or h, dry_run, force)

        # Read and written under the claim: a write the daemon is making now is waited for, not raced.
        outcomes.append(under_claim(
            library, track_id, path, wait_s, None if waiting is None else lambda pid, p=path: waiting(p, pid),
            "not restored (run restore-tags again)", restore))
    return outcomes


def _restore_one(library: Library, track_id: int, path: str, history: list[dict], dry_run: bool,
                 force: bool) -> Outcome:
    """Restore one file (under its claim unless ``dry_run``). A file that holds its own genres again, restored
    now or found so, is marked restored, and the write the daemon still owes for it is dropped in that same
    transaction (:meth:`Library.mark_restored`): made later, it would put genre-tagger's genres back."""
    first, last = history[0], history[-1]
    original = GenreState.from_dict(first["before"])
    ids = [w["id"] for w in history]
    try:
        current = read_state(path)
        if current == original:
            dropped = not dry_run and library.mark_restored(ids, track_id) > 0
            return Outcome(path, UNCHANGED, current.genres, current.genres, owed_dropped=dropped)
        written = GenreState.from_dict(last["after"])
        if current.genres != written.genres and not force:
            raise FileSkipped(f"{path}: genres changed since genre-tagger wrote them "
                              f"({'; '.join(current.genres) or 'none'}), left alone (--force restores anyway)")
        if dry_run:
            return Outcome(path, DRY_RUN, current.genres, original.genres)

        def record(temp: Path, st: os.stat_result) -> None:
            library.file_rewritten(track_id, st.st_size, st.st_mtime, fingerprint(temp, st.st_size))

        write_state(path, original, expected=current, before_replace=record)
        dropped = library.mark_restored(ids, track_id) > 0
        return Outcome(path, RESTORED, current.genres, original.genres, owed_dropped=dropped)
    except FileSkipped as exc:
        return Outcome(path, SKIPPED, reason=_reason(exc, path))
    except (TagWriteError, OSError) as exc:
        return Outcome(path, FAILED, reason=_reason(exc, path))
