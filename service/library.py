"""The SQLite library: tracks, their genres, per-view results, and the durable work queue.

Schema (version 10; ``PRAGMA user_version`` holds it, :func:`migrate` upgrades older files):

``tracks``
    id, path (unique), size (bytes), mtime (seconds), fingerprint (see :func:`fingerprint`),
    duration_s, status (``pending`` | ``tagged`` | ``error`` | ``deleted``), error (one line),
    model, model_version, tagged_at (ISO 8601 UTC), queued_at, attempts, tag_count,
    music (1, or 0 when the model's music detector heard no music; NULL for rows tagged before v3 or by
    a model without a detector), music_probability (0..1 or NULL),
    priority (the queue takes higher first; ``retag --outdated`` queues at -1, behind new files),
    coverage (what was analysed: ``full`` or ``excerpts:KxS``, see :mod:`tagger.coverage`; NULL for rows
    tagged before v6, which were all full) and analysed_s (seconds of audio analysed),
    level_dbfs (v10: the gated level of the audio analysed before any gain, dBFS, :mod:`tagger.level`; NULL for
    digital silence, or for a row tagged before v10) and gain_db (v10: the constant gain the audio was analysed
    raised by, dB: above 0 for a file quieter than the model's level floor, else 0; NULL for a row tagged before
    v10, or imported from a batch shard written before results carried it: its level is unknown).
``genres``
    track_id, output (model output name), label, score (0..1), rank (1 = best), decided (0/1).
    The best ``store_top_k`` labels of each output, plus every decided one. A track that is not music
    has no decided genre (its genres are kept, undecided, for inspection).
``track_views``
    track_id, output, view, slices, scores (JSON object label → score, best first).
``tag_runs``
    id, started_at, command: one ``tag --write-tags`` / ``library retag`` run (or a daemon's life).
``tag_writes``
    id, run_id, track_id, path, written_at, before and after (JSON :class:`tagger.filetags.GenreState`:
    the file's genre tags before and after the write), policy, settings (JSON: outputs, threshold,
    aliases), model, model_version, size, mtime, fingerprint (the file after the write), restored_at.
    ``library restore-tags`` puts ``before`` back.
``tags_owed``
    id (never used again, v8), track_id (unique), fingerprint (the file the result is for), result (JSON: the result's
    probabilities for every label, see :func:`result_json`), owed_at, attempts, failed_at, error,
    retry_at (v9: after a passing failure, when the write is tried again, UTC ISO time; kept across restarts).
    A genre write into the file that the daemon owes: stored in the same transaction as the result it
    comes from, removed only after the write was made and verified (or found unnecessary), so a kill
    -9, a crash or a power cut between the two loses no write (the daemon makes it at its next start,
    from this row, without tagging the file again). A write that failed for good (a read-only file, an
    unsupported format, or ``[tags] write_attempts`` failures) keeps its row with ``failed_at`` and the
    reason, visible in ``library stats`` and ``library show``; ``retry_errors`` tries it again. ``library
    restore-tags`` drops the row of each file it restores, in the transaction that marks the file restored.
``tag_claims``
    track_id (primary key), host, pid, started (the process's start time in clock ticks, from
    ``/proc/PID/stat``; "" where unknown), claimed_at. The process writing an owed write into this
    track's file now (:meth:`Library.claim_tag_write`): the daemon, ``library retag``, ``tag --write-tags``
    and ``library restore-tags`` share the library, so no two write one file at once, nor one write twice.
    A claim whose process is gone (killed mid-write) is taken over.

Pending rows are the queue: a restart resumes them. Each track's result is written in one
transaction (genres replaced, status set), so a crash never leaves a half-written track. WAL mode
and a busy timeout keep readers (your scripts, a beets or Mixxx export) unblocked.

Every write retries, with backoff, while the file is locked by another process (a backup, an open
``sqlite3`` session) or the disk is full: the caller's work waits in memory, and
:func:`blocked` tells the daemon's status what the library is waiting for. Paths that are not valid
UTF-8 are stored losslessly as BLOBs of the file name's bytes (readers get ``bytes`` for those rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from tagger.errors import TaggerError
from tagger.pipeline import TrackResult

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 10
# An owed tag write that failed this many times is recorded as failed for good (the daemon's
# ``[tags] write_attempts`` sets its own; this is the default there and for ``library retag``).
OWED_ATTEMPTS = 6
# A claim on a file's tag write by a process on another host (not checkable) is taken over after this (s).
CLAIM_FOREIGN_S = 3600.0
# How long SQLite itself waits for a lock (ms) before a write is retried here, with backoff.
BUSY_TIMEOUT_MS = 2_000
RETRY_MAX_DELAY_S = 2.0
# A "still waiting" log line at most this often (s) while the library cannot be written.
BLOCKED_LOG_INTERVAL_S = 30.0
# The WAL is truncated to this size (bytes) at each checkpoint.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
FINGERPRINT_CHUNK = 64 * 1024
# Same-content rows whose file is stat-ed (outside any write transaction) to find a move's source.
TWIN_CANDIDATES = 8

PENDING, TAGGED, ERROR, DELETED = "pending", "tagged", "error", "deleted"
STATUSES = (PENDING, TAGGED, ERROR, DELETED)


def fingerprint(path: str | Path, size: int | None = None) -> str:
    """A content fingerprint: BLAKE2b of the size and three 64 KiB chunks (start, middle, end).

    Cheap on huge files (three reads), and unchanged by a rename or a move.
    """
    path = Path(path)
    size = path.stat().st_size if size is None else size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - FINGERPRINT_CHUNK // 2), max(0, size - FINGERPRINT_CHUNK)}):
            f.seek(offset)
            digest.update(f.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()


class LibraryError(TaggerError):
    """A library file that cannot be opened or written (one line: the path and the reason)."""


class LibraryStopped(TaggerError):
    """A write abandoned because the daemon is stopping while the library was blocked."""


# SQLite's primary result codes that mean "wait and try again" (the lock holder or the disk will
# change), with the words the status uses.
_TRANSIENT = {5: "locked by another process", 6: "locked by another process", 13: "disk full",
              10: "disk I/O error (disk full?)"}
_blocked_lock = threading.Lock()
_blocked: dict[str, tuple[float, str]] = {}


def blocked(path: str | Path) -> tuple[float, str] | None:
    """(seconds, reason) the library at ``path`` has been unwritable for in this process, or None."""
    with _blocked_lock:
        entry = _blocked.get(str(path))
    return None if entry is None else (time.monotonic() - entry[0], entry[1])


def blocked_message(path: str | Path) -> str | None:
    """"library locked by another process for 42 s" (or "… disk full …"), or None when writable."""
    state = blocked(path)
    return None if state is None else f"library {state[1]} for {state[0]:.0f} s"


def _transient(exc: sqlite3.Error) -> str | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return _TRANSIENT.get(code & 0xFF)
    text = str(exc)
    return "locked by another process" if "locked" in text else "disk full" if "full" in text else None


def db_path(path: str | Path) -> str | bytes:
    """The value stored in ``tracks.path``: text, or the name's bytes when it is not valid UTF-8."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def fs_path(value: str | bytes) -> str:
    """A ``tracks.path`` value back to a file-system path string (surrogate-escaped when not UTF-8)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def printable(path: str | bytes) -> str:
    """A path fit for any terminal or log: undecodable bytes as ``\\xNN``."""
    return os.fsencode(fs_path(path)).decode("utf-8", "backslashreplace")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TrackRow:
    id: int
    path: str
    size: int
    mtime: float
    fingerprint: str | None
    status: str
    error: str | None

    @classmethod
    def of(cls, row: tuple) -> TrackRow:
        return cls(row[0], fs_path(row[1]), *row[2:])


@dataclass(frozen=True)
class OwedWrite:
    """A genre write into a file that the daemon owes (a ``tags_owed`` row) and its track as it is now.

    Attributes:
        id: the owed row's id. track_id: its track. path, status, fingerprint: the track's now (None when the
        track is gone). owed_fingerprint: the file's fingerprint when the result was stored. result: JSON
        (:func:`result_json`). attempts: failed tries so far. retry_at: when to try it again after a passing
        failure (UTC ISO time; None: at once). failed: it failed for good (only listed when asked for).
    """

    id: int
    track_id: int
    path: str | None
    status: str | None
    fingerprint: str | None
    owed_fingerprint: str | None
    result: str
    attempts: int
    retry_at: str | None = None
    failed: bool = False

    def retry_wait(self) -> float:
        """Seconds until this write is to be tried again (0: now)."""
        if not self.retry_at:
            return 0.0
        try:
            return max(0.0, (datetime.fromisoformat(self.retry_at) - datetime.now(UTC)).total_seconds())
        except ValueError:
            return 0.0

    def file_is_current(self) -> bool:
        """Whether the result is still for the file: its track is tagged and the file's content is the one
        tagged (else a new result decides). The file itself is read, not only the row: a daemon killed after
        recording a write (the row then has the rewritten file's fingerprint) but before the rename left the
        tagged file as it was, and its write is still owed."""
        if self.status != TAGGED or self.path is None or self.owed_fingerprint is None:
            return False
        try:
            return fingerprint(self.path) == self.owed_fingerprint
        except OSError:
            return False


def result_json(result: TrackResult) -> str:
    """What a file's tag write needs of a result: each output's probability for every label, the music
    detector's answer and the model (the library's ``genres`` keep only the top labels)."""
    return json.dumps({
        "model": result.model, "model_version": result.model_version, "duration_s": result.duration_s,
        "music": result.music, "music_probability": result.music_probability,
        "outputs": {name: {"title": est.title, "multi_label": est.multi_label, "threshold": est.threshold,
                           "labels": [s.label for s in est.scores], "scores": [s.score for s in est.scores],
                           "slices": est.slices}
                    for name, est in result.outputs.items()}})


def result_from_json(text: str, path: str = "") -> TrackResult:
    """The :class:`TrackResult` a ``tags_owed`` row was stored from (its estimates judged at their own
    threshold; a tag writer judges them again at its own). Raises ValueError for a row it cannot read."""
    from tagger.ensemble import summarise
    from tagger.model import OutputSpec

    try:
        data = json.loads(text)
        outputs = {}
        for name, out in data["outputs"].items():
            labels = tuple(out["labels"])
            if not labels or len(labels) != len(out["scores"]):
                raise ValueError(f"output {name}: {len(labels)} labels, {len(out['scores'])} scores")
            spec = OutputSpec(name, name, "sigmoid" if out["multi_label"] else "softmax", labels, out["title"])
            outputs[name] = summarise(spec, out["scores"], {}, out.get("slices") or {}, out["threshold"], len(labels))
        return TrackResult(path, float(data["duration_s"]), outputs, data["model"], data["model_version"], "", 0.0,
                           music=bool(data["music"]), music_probability=data.get("music_probability"))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a stored result that cannot be read ({type(exc).__name__}: {exc})") from None


def _create_v1(db: sqlite_utils.Database) -> None:
    db["tracks"].create({
        "id": int, "path": str, "size": int, "mtime": float, "fingerprint": str, "duration_s": float,
        "status": str, "error": str, "model": str, "model_version": str, "tagged_at": str, "queued_at": str,
        "attempts": int,
    }, pk="id", not_null={"path", "status"}, defaults={"attempts": 0}, if_not_exists=True)
    db["tracks"].create_index(["path"], unique=True, if_not_exists=True)
    db["tracks"].create_index(["status", "id"], if_not_exists=True)
    db["tracks"].create_index(["fingerprint"], if_not_exists=True)
    db["genres"].create({"track_id": int, "output": str, "label": str, "score": float, "rank": int, "decided": int},
                        pk=("track_id", "output", "label"), foreign_keys=[("track_id", "tracks", "id")],
                        if_not_exists=True)
    db["genres"].create_index(["label", "score"], if_not_exists=True)
    db["track_views"].create({"track_id": int, "output": str, "view": str, "slices": int, "scores": str},
                             pk=("track_id", "output", "view"), foreign_keys=[("track_id", "tracks", "id")],
                             if_not_exists=True)


def _add_missing_columns(db: sqlite_utils.Database, table: str, columns: dict[str, type],
                         not_null_default: dict[str, object] | None = None) -> None:
    """Add each of ``columns`` (name: Python type) to ``table`` unless it is there already: a migration that adds
    columns runs twice harmlessly. ``not_null_default`` gives a column NOT NULL with that default."""
    present = db[table].columns_dict
    for name, kind in columns.items():
        if name not in present:
            db[table].add_column(name, kind, not_null_default=(not_null_default or {}).get(name))


def _v1_to_v2(db: sqlite_utils.Database) -> None:
    # v2 counts how often a track was tagged (a re-tag after a file change is legitimate, a double one is not).
    _add_missing_columns(db, "tracks", {"tag_count": int}, not_null_default={"tag_count": 0})


def _v2_to_v3(db: sqlite_utils.Database) -> None:
    # v3 records the music detector's answer ("no music" is a result, not a genre).
    _add_missing_columns(db, "tracks", {"music": int, "music_probability": float})
    db["tracks"].create_index(["music"], if_not_exists=True)


def _v3_to_v4(db: sqlite_utils.Database) -> None:
    # v4: the genres written into files (history for restore-tags) and a queue priority (retag --outdated).
    _add_missing_columns(db, "tracks", {"priority": int}, not_null_default={"priority": 0})
    db["tag_runs"].create({"id": int, "started_at": str, "command": str}, pk="id", if_not_exists=True)
    db["tag_writes"].create({
        "id": int, "run_id": int, "track_id": int, "path": str, "written_at": str, "before": str, "after": str,
        "policy": str, "settings": str, "model": str, "model_version": str, "size": int, "mtime": float,
        "fingerprint": str, "restored_at": str,
    }, pk="id", foreign_keys=[("run_id", "tag_runs", "id")], if_not_exists=True)
    db["tag_writes"].create_index(["track_id", "id"], if_not_exists=True)
    db["tag_writes"].create_index(["run_id"], if_not_exists=True)
    db["tracks"].create_index(["status", "priority", "id"], if_not_exists=True)


def _v4_to_v5(db: sqlite_utils.Database) -> None:
    # v5: same-content lookups by (fingerprint, status) in the index, whatever the number of twins.
    db["tracks"].create_index(["fingerprint", "status"], if_not_exists=True)


def _v5_to_v6(db: sqlite_utils.Database) -> None:
    # v6: how much of each track was analysed (coverage excerpts make a genre cheaper and less certain).
    _add_missing_columns(db, "tracks", {"coverage": str, "analysed_s": float})


def _v6_to_v7(db: sqlite_utils.Database) -> None:
    # v7: genre writes into files the daemon owes, so that a kill -9 between the result and the write loses none.
    db["tags_owed"].create({
        "id": int, "track_id": int, "fingerprint": str, "result": str, "owed_at": str, "attempts": int,
        "failed_at": str, "error": str,
    }, pk="id", not_null={"track_id", "result"}, defaults={"attempts": 0}, if_not_exists=True)
    db["tags_owed"].create_index(["track_id"], unique=True, if_not_exists=True)
    db["tags_owed"].create_index(["failed_at"], if_not_exists=True)


def _v7_to_v8(db: sqlite_utils.Database) -> None:
    # v8: who is writing a track's file now, so the daemon and `library retag` never write one file at once.
    db["tag_claims"].create({"track_id": int, "host": str, "pid": int, "started": str, "claimed_at": str},
                            pk="track_id", not_null={"host", "pid"}, if_not_exists=True)
    # An owed write's id is never used again: a writer tells by the id that the row it is making is still the one
    # owed (a newer result's row must not be taken for it), and SQLite reuses the highest rowid once it is deleted.
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tags_owed'").fetchone()[0]
    if "AUTOINCREMENT" not in sql.upper():
        db.execute("CREATE TABLE tags_owed_v8 (id INTEGER PRIMARY KEY AUTOINCREMENT, track_id INTEGER NOT NULL, "
                   "fingerprint TEXT, result TEXT NOT NULL, owed_at TEXT, attempts INTEGER DEFAULT 0, "
                   "failed_at TEXT, error TEXT)")
        db.execute("INSERT INTO tags_owed_v8 SELECT id, track_id, fingerprint, result, owed_at, attempts, failed_at, "
                   "error FROM tags_owed")
        db.execute("DROP TABLE tags_owed")
        db.execute("ALTER TABLE tags_owed_v8 RENAME TO tags_owed")
    db["tags_owed"].create_index(["track_id"], unique=True, if_not_exists=True)
    db["tags_owed"].create_index(["failed_at"], if_not_exists=True)


def _v8_to_v9(db: sqlite_utils.Database) -> None:
    # v9: when a write that failed for a passing reason is tried again, so a restart keeps to the schedule (it tried
    # every such write at once, and a few quick restarts used up its attempts).
    _add_missing_columns(db, "tags_owed", {"retry_at": str})


def _v9_to_v10(db: sqlite_utils.Database) -> None:
    # v10: the level each track was analysed at, and the gain a quiet one was raised by (the model's level floor).
    _add_missing_columns(db, "tracks", {"level_dbfs": float, "gain_db": float})


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7, 7: _v7_to_v8,
              8: _v8_to_v9, 9: _v9_to_v10}
OUR_TABLES = frozenset(("tracks", "genres", "track_views", "tag_runs", "tag_writes", "tags_owed", "tag_claims",
                        "sqlite_sequence"))


def _started(pid: int) -> str:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22); "" where unknown.
    With the pid it names one process: a pid used again later has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return ""


def _me() -> tuple[str, int, str]:
    """This process as a tag write claim names it: (host, pid, start time)."""
    pid = os.getpid()
    return socket.gethostname(), pid, _started(pid)


def _claim_alive(host: str, pid: int, started: str, claimed_at: str) -> bool:
    """Whether the process that made a claim may still be writing (else its claim is taken over)."""
    me_host, me_pid, me_started = _me()
    if host != me_host:  # another machine sharing the library: cannot be asked, so trusted for a while
        try:
            age = (datetime.now(UTC) - datetime.fromisoformat(claimed_at)).total_seconds()
        except (TypeError, ValueError):
            return False
        return age < CLAIM_FOREIGN_S
    if pid == me_pid:
        return started == me_started  # else an earlier process with this pid (a container's daemon, restarted)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    now = _started(pid)
    return not (started and now and now != started)


def migrate(db: sqlite_utils.Database) -> int:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`; return the version found."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"library schema version {found} is newer than this genre-tagger ({SCHEMA_VERSION})")
    if found == SCHEMA_VERSION:
        return found  # nothing to write: opening never waits for another process's lock
    tables = set(db.table_names())
    if found == 0 and tables and not tables <= OUR_TABLES:
        raise RuntimeError(f"an SQLite database, but not a genre-tagger library (tables: "
                           f"{', '.join(sorted(tables)[:5])})")
    with db.conn:
        if found == 0:
            _create_v1(db)
            found_now = 1
        else:
            found_now = found
        while found_now < SCHEMA_VERSION:
            MIGRATIONS[found_now](db)
            found_now += 1
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found


class Library:
    """The library database. One instance per thread (SQLite connections are not shared).

    Args:
        path: the SQLite file (created, with its folder, unless ``readonly``).
        store_top_k: labels per output kept for each track.
        readonly: open without ever writing (``library`` queries; works on a read-only file or folder).
        stop: set when the owner is shutting down: a write blocked by a lock or a full disk then
            raises :class:`LibraryStopped` instead of waiting on.

    Raises :class:`LibraryError` (one line) for a file that cannot be opened or is not a library.
    """

    def __init__(self, path: str | Path, store_top_k: int = 10, readonly: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.path = Path(path)
        self.store_top_k = store_top_k
        self.readonly = readonly
        self.stop = stop
        try:
            self.db = sqlite_utils.Database(self._connect())
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db.execute("PRAGMA foreign_keys = ON")
            if readonly:
                self._check_readable()
            else:
                self._retry(self._prepare)
        except (sqlite3.Error, RuntimeError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if "file is not a database" in reason:
                reason = "not a genre-tagger library (not an SQLite database)"
            elif self.path.is_dir():  # SQLite says "unable to open database file"
                reason = "a folder, not a library file"
            raise LibraryError(f"{printable(str(self.path))}: cannot open the library: {reason}") from None

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                # A WAL file in a read-only folder with no -shm beside it: readable only as immutable
                # (no writer can be running there, it could not write either).
                return sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)

    def _prepare(self) -> None:
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable at checkpoints, never corrupt
        self.db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        migrate(self.db)

    def _check_readable(self) -> None:
        found = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = set(self.db.table_names())
        if "tracks" not in tables:
            raise RuntimeError("not a genre-tagger library (no tracks table)")
        if found > SCHEMA_VERSION:
            raise RuntimeError(f"library schema version {found} is newer than this genre-tagger ({SCHEMA_VERSION})")

    def close(self) -> None:
        self.db.conn.close()

    @property
    def has_levels(self) -> bool:
        """True when the tracks table has the v10 level columns (level_dbfs, gain_db). False only for a library
        older than v10 opened ``readonly`` (``library`` queries right after an upgrade, before the daemon migrated
        the file): its tracks' levels are unknown."""
        return "gain_db" in self.db["tracks"].columns_dict

    # -- writing through locks and full disks ----------------------------------------------------------

    def _retry(self, write: Callable[[], T]) -> T:
        """Run ``write`` (one whole transaction) until SQLite takes it; wait out locks and full disks."""
        delay, first, last_log = 0.05, None, 0.0
        while True:
            try:
                result = write()
            except sqlite3.OperationalError as exc:
                reason = _transient(exc)
                if reason is None:
                    raise
                now = time.monotonic()
                if first is None:
                    first = now - BUSY_TIMEOUT_MS / 1000 if "locked" in reason else now
                    with _blocked_lock:
                        _blocked.setdefault(str(self.path), (first, reason))
                if now - last_log >= BLOCKED_LOG_INTERVAL_S:
                    log.warning("library %s for %.0f s (%s); the work waits in memory and is retried",
                                reason, now - first, self.path)
                    last_log = now
                if self.stop is not None and self.stop.wait(delay):
                    raise LibraryStopped(f"{self.path}: stopping while the library is {reason}") from None
                if self.stop is None:
                    time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_DELAY_S)
                continue
            if first is not None:
                log.warning("library writable again after %.0f s", time.monotonic() - first)
                with _blocked_lock:
                    _blocked.pop(str(self.path), None)
            return result

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (bounded disk use); skipped while busy."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if _transient(exc) is None:
                raise

    # -- the queue ---------------------------------------------------------------------------------

    _COLUMNS = "id, path, size, mtime, fingerprint, status, error"

    def get(self, path: str | Path) -> TrackRow | None:
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks WHERE path = ?", [db_path(path)]).fetchone()
        return TrackRow.of(row) if row else None

    def by_fingerprint(self, fp: str) -> list[TrackRow]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks WHERE fingerprint = ? ORDER BY id", [fp])
        return [TrackRow.of(r) for r in rows.fetchall()]

    def rows_of_file(self, path: str | Path, fp: str | None = None) -> list[TrackRow]:
        """Every row of the file at ``path``, oldest first, under whatever name the library knows it: ``path`` itself,
        its real path (a symlinked folder on either side, ``..``), or another name of the same file (same device and
        inode: a symlink, a hard link, a bind mount) among the rows with its fingerprint. ``fp``: the file's
        fingerprint when the caller has it (else it is read: three 64 KiB reads). Raises OSError when the file
        cannot be read."""
        st = os.stat(path)
        fp = fingerprint(path, st.st_size) if fp is None else fp
        found: dict[int, TrackRow] = {}
        for name in dict.fromkeys((os.fspath(path), os.path.realpath(path))):
            row = self.get(name)
            if row is not None:
                found[row.id] = row
        for row in self.by_fingerprint(fp):
            if row.id not in found:
                try:
                    other = os.stat(row.path)
                except OSError:  # that name is gone: another file's row, or a stale one
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    found[row.id] = row
        return sorted(found.values(), key=lambda row: row.id)

    def discover(self, path: str | Path) -> str:
        """Record a stable file; queue it unless it is known unchanged. Returns what was done.

        ``unchanged``: same path, size and mtime. ``moved``: a known file (same size and fingerprint)
        whose old path no longer exists; its row follows it, tags kept (an error is not: the new file
        is tried afresh). ``queued``: new or changed.
        """
        path = Path(path)
        st = path.stat()
        known = self.get(path)
        if known and known.size == st.st_size and known.mtime == st.st_mtime and known.status != DELETED:
            return "unchanged"
        fp = fingerprint(path, st.st_size)
        # A move's source: a deleted twin (indexed), else a recent twin whose file is gone, found
        # before the write transaction so that no stat happens while the library is locked.
        source = None if known else self._vanished_twin(fp, st.st_size)
        key = db_path(path)

        def write() -> str:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                current = self.get(path)
                if current and current.fingerprint == fp and current.status in (TAGGED, PENDING):
                    self.db.execute("UPDATE tracks SET size = ?, mtime = ? WHERE id = ?",
                                    [st.st_size, st.st_mtime, current.id])
                    return "unchanged"
                if not current and source is not None:
                    moved = self.db.execute(
                        "UPDATE tracks SET path = ?, size = ?, mtime = ?, error = NULL, status = CASE "
                        "WHEN status IN ('deleted', 'tagged') AND model IS NOT NULL THEN 'tagged' ELSE 'pending' END, "
                        "attempts = CASE WHEN status = 'error' THEN 0 ELSE attempts END "
                        "WHERE id = ? AND path = ? AND fingerprint = ?",
                        [key, st.st_size, st.st_mtime, source.id, db_path(source.path), fp]).rowcount
                    if moved:
                        return "moved"
                self.db.execute(
                    "INSERT INTO tracks (path, size, mtime, fingerprint, status, error, queued_at, attempts) "
                    "VALUES (?, ?, ?, ?, 'pending', NULL, ?, 0) ON CONFLICT(path) DO UPDATE SET "
                    "size = excluded.size, mtime = excluded.mtime, fingerprint = excluded.fingerprint, "
                    "status = 'pending', error = NULL, queued_at = excluded.queued_at, attempts = 0, priority = 0",
                    [key, st.st_size, st.st_mtime, fp, now_iso()])
                return "queued"

        return self._retry(write)

    def _vanished_twin(self, fp: str, size: int) -> TrackRow | None:
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks WHERE fingerprint = ? AND status = 'deleted' "
                              "AND size = ? ORDER BY id DESC LIMIT 1", [fp, size]).fetchone()
        if row:
            return TrackRow.of(row)
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks "
                               "WHERE fingerprint = ? ORDER BY id DESC LIMIT ?", [fp, TWIN_CANDIDATES]).fetchall()
        for twin in map(TrackRow.of, rows):
            if twin.status != DELETED and twin.size == size and not os.path.lexists(twin.path):
                return twin
        return None

    def moved(self, src: str | Path, dest: str | Path) -> bool:
        """A rename or move seen by the watcher: the row follows the file. False if src was unknown."""

        def write() -> bool:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                known = self.get(src)
                if not known:
                    return False
                self.db.execute("DELETE FROM genres WHERE track_id IN (SELECT id FROM tracks WHERE path = ? "
                                "AND id != ?)", [db_path(dest), known.id])
                self.db.execute("DELETE FROM track_views WHERE track_id IN (SELECT id FROM tracks WHERE path = ? "
                                "AND id != ?)", [db_path(dest), known.id])
                self.db.execute("DELETE FROM tags_owed WHERE track_id IN (SELECT id FROM tracks WHERE path = ? "
                                "AND id != ?)", [db_path(dest), known.id])
                self.db.execute("DELETE FROM tracks WHERE path = ? AND id != ?", [db_path(dest), known.id])
                self.db.execute("UPDATE tracks SET path = ? WHERE id = ?", [db_path(dest), known.id])
            return True

        return self._retry(write)

    def moved_tree(self, src: str | Path, dest: str | Path) -> int:
        """A folder was renamed or moved: every track under it follows."""
        prefix = str(src).rstrip(os.sep) + os.sep

        def write() -> int:
            with self.db.conn:
                return self.db.execute(
                    "UPDATE tracks SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
                    [str(dest).rstrip(os.sep) + os.sep, len(prefix) + 1, len(prefix), prefix]).rowcount

        return self._retry(write)

    def mark_deleted_tree(self, root: str | Path) -> int:
        prefix = str(root).rstrip(os.sep) + os.sep

        def write() -> int:
            with self.db.conn:
                return self.db.execute("UPDATE tracks SET status = 'deleted' WHERE status != 'deleted' "
                                       "AND substr(path, 1, ?) = ?", [len(prefix), prefix]).rowcount

        return self._retry(write)

    def discover_unreadable(self, path: str | Path, message: str) -> None:
        """Queue a file that exists but cannot be read, so it ends as an error with its reason."""

        def write() -> None:
            with self.db.conn:
                self.db.execute(
                    "INSERT INTO tracks (path, size, mtime, status, error, queued_at, attempts) VALUES "
                    "(?, 0, 0, 'pending', ?, ?, 0) ON CONFLICT(path) DO UPDATE SET status = 'pending', "
                    "error = excluded.error", [db_path(path), message, now_iso()])

        self._retry(write)

    def record_skipped(self, path: str | Path, reason: str) -> bool:
        """A path that will not be read (not a regular file, a dangling symlink, an unreadable folder):
        an ``error`` row with the reason, so the library says why the file is not there. Returns
        whether the row is new or its reason changed."""

        def write() -> bool:
            with self.db.conn:
                return self.db.execute(
                    "INSERT INTO tracks (path, size, mtime, status, error, queued_at, attempts) VALUES "
                    "(?, 0, 0, 'error', ?, ?, 0) ON CONFLICT(path) DO UPDATE SET status = 'error', "
                    "error = excluded.error, fingerprint = NULL WHERE status != 'error' OR error IS NOT excluded.error",
                    [db_path(path), reason, now_iso()]).rowcount > 0

        return self._retry(write)

    def mark_deleted(self, path: str | Path) -> bool:
        def write() -> bool:
            with self.db.conn:
                return self.db.execute("UPDATE tracks SET status = 'deleted' WHERE path = ? AND status != 'deleted'",
                                       [db_path(path)]).rowcount > 0

        return self._retry(write)

    def mark_missing_under(self, root: str | Path, seen: set[str]) -> int:
        """Mark deleted every known track under ``root`` not in ``seen`` (after a full scan), and the rows
        of folders once unreadable that are not in ``seen`` any more (they are scanned now)."""
        prefix = str(Path(root)) + os.sep
        rows = self.db.execute("SELECT path FROM tracks WHERE status != 'deleted' AND substr(path, 1, ?) = ?",
                               [len(prefix), prefix]).fetchall()
        gone = [p for p in (fs_path(r) for (r,) in rows)
                if p not in seen and (not os.path.lexists(p) or os.path.isdir(p))]
        for p in gone:
            self.mark_deleted(p)
        return len(gone)

    def next_pending(self, exclude: set[int] | None = None, below_priority: int | None = None) -> TrackRow | None:
        """The next queued track: higher priority first, then oldest (``below_priority``: only lower ones)."""
        where = "" if below_priority is None else f" AND priority < {int(below_priority)}"
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM tracks WHERE status = 'pending'{where} "
                               "ORDER BY priority DESC, id LIMIT ?", [1 + len(exclude or ())]).fetchall()
        for r in rows:
            if not exclude or r[0] not in exclude:
                return TrackRow.of(r)
        return None

    def pending_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM tracks WHERE status = 'pending'").fetchone()[0]

    # -- results -----------------------------------------------------------------------------------

    def record_result(self, track_id: int, result: TrackResult, expected_fingerprint: str | None = None,
                      owe_tags: bool = False) -> bool:
        """Write a track's genres and mark it tagged, in one transaction.

        ``owe_tags``: the result's genres are to be written into the file (the daemon's tags sink): a
        ``tags_owed`` row is stored in the same transaction, so the write survives a crash before it is made.
        Returns False (and writes nothing) when the row changed meanwhile (a file modified or deleted
        while it was being tagged): it will be tagged again from its new state. While the library is
        locked or the disk full, waits with the result in memory (see :meth:`_retry`).
        """

        def write() -> bool:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute("SELECT status, fingerprint FROM tracks WHERE id = ?", [track_id]).fetchone()
                if not row or row[0] != PENDING or (expected_fingerprint and row[1] != expected_fingerprint):
                    return False
                self._store_result(track_id, result, owe_tags)
            return True

        return self._retry(write)

    def record_file_result(self, path: str | Path, result: TrackResult, size: int, mtime: float,
                           fp: str, level_known: bool = True) -> int:
        """Record a file tagged outside the queue (``tag --write-tags``) as tagged; returns its track id.

        ``size``, ``mtime`` and ``fp`` describe the file as it was read. ``level_known`` False (default True): the
        result does not say at what level the file was analysed (a batch shard written before results carried
        it), so level_dbfs and gain_db are stored NULL, unknown, as for a row tagged before v10.
        """
        def write() -> int:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    "INSERT INTO tracks (path, size, mtime, fingerprint, status, queued_at, attempts) VALUES "
                    "(?, ?, ?, ?, 'pending', ?, 0) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                    "mtime = excluded.mtime, fingerprint = excluded.fingerprint, status = 'pending', error = NULL",
                    [db_path(path), size, mtime, fp, now_iso()])
                (track_id,) = self.db.execute("SELECT id FROM tracks WHERE path = ?", [db_path(path)]).fetchone()
                self._store_result(track_id, result, level_known=level_known)
            return track_id

        return self._retry(write)

    def _store_result(self, track_id: int, result: TrackResult, owe_tags: bool = False,
                      level_known: bool = True) -> None:
        # A new result replaces the write the old one owed (or its failure): the new one decides.
        self.db.execute("DELETE FROM tags_owed WHERE track_id = ?", [track_id])
        if owe_tags:
            self.db.execute("INSERT INTO tags_owed (track_id, fingerprint, result, owed_at) "
                            "SELECT id, fingerprint, ?, ? FROM tracks WHERE id = ?",
                            [result_json(result), now_iso(), track_id])
        self.db.execute("DELETE FROM genres WHERE track_id = ?", [track_id])
        self.db.execute("DELETE FROM track_views WHERE track_id = ?", [track_id])
        genre_rows, view_rows = [], []
        music = result.music
        for output, est in result.outputs.items():
            for rank, s in enumerate(est.scores, start=1):
                # Genres of silence, talk or noise are never decided (and never tags).
                decided = music and s.label in est.decided
                if rank <= self.store_top_k or decided:
                    genre_rows.append((track_id, output, s.label, s.score, rank, int(decided)))
            for view, scores in est.per_view.items():
                view_rows.append((track_id, output, view, est.slices.get(view, 0),
                                  json.dumps({s.label: round(s.score, 6) for s in scores})))
        self.db.conn.executemany("INSERT INTO genres VALUES (?, ?, ?, ?, ?, ?)", genre_rows)
        self.db.conn.executemany("INSERT INTO track_views VALUES (?, ?, ?, ?, ?)", view_rows)
        self.db.execute(
            "UPDATE tracks SET status = 'tagged', error = NULL, duration_s = ?, model = ?, model_version = ?, "
            "tagged_at = ?, attempts = attempts + 1, tag_count = tag_count + 1, music = ?, music_probability = ?, "
            "priority = 0, coverage = ?, analysed_s = ?, level_dbfs = ?, gain_db = ? WHERE id = ?",
            [result.duration_s, result.model, result.model_version, now_iso(), int(music),
             result.music_probability, result.coverage, result.analysed_s or result.duration_s,
             result.level_dbfs if level_known else None, result.gain_db if level_known else None, track_id])

    def record_error(self, track_id: int, message: str, force: bool = False, path: str | Path | None = None) -> bool:
        """Mark a pending track failed with a one-line reason (``force``: whatever its status).

        With ``path``, only while the row still has that path: a row that followed a move to another
        file meanwhile does not inherit the error of the file that vanished. Returns whether it was marked.
        """
        condition = "" if force else " AND status = 'pending'"
        args: list = [message.splitlines()[0][:500], track_id]
        if path is not None:
            condition += " AND path = ?"
            args.append(db_path(path))

        def write() -> bool:
            with self.db.conn:
                return self.db.execute("UPDATE tracks SET status = 'error', error = ?, attempts = attempts + 1 "
                                       f"WHERE id = ?{condition}", args).rowcount > 0

        return self._retry(write)

    # -- genre writes the daemon owes ------------------------------------------------------------------

    def owed_writes(self, after_id: int = 0, up_to_id: int | None = None, limit: int = 100,
                    failed: bool = False) -> list[OwedWrite]:
        """Owed tag writes not failed for good (``failed``: those too), by id (``after_id`` < id <= ``up_to_id``),
        with their track."""
        rows = self.db.execute(
            "SELECT o.id, o.track_id, t.path, t.status, t.fingerprint, o.fingerprint, o.result, o.attempts, "
            "o.retry_at, o.failed_at IS NOT NULL FROM tags_owed o LEFT JOIN tracks t ON t.id = o.track_id WHERE "
            f"{'' if failed else 'o.failed_at IS NULL AND '}o.id > ? AND o.id <= ? ORDER BY o.id LIMIT ?",
            [after_id, up_to_id if up_to_id is not None else 2 ** 62, limit])
        return [OwedWrite(r[0], r[1], None if r[2] is None else fs_path(r[2]), r[3], r[4], r[5], r[6], r[7], r[8],
                          bool(r[9])) for r in rows.fetchall()]

    def owed_paths(self, failed: bool = False) -> list[tuple[int, str | None]]:
        """(owed id, its file's path or None) of every owed tag write not failed for good (``failed``: those too),
        by id: what ``library retry-owed`` goes through, without their stored results."""
        rows = self.db.execute("SELECT o.id, t.path FROM tags_owed o LEFT JOIN tracks t ON t.id = o.track_id "
                               f"{'' if failed else 'WHERE o.failed_at IS NULL '}ORDER BY o.id")
        return [(r[0], None if r[1] is None else fs_path(r[1])) for r in rows.fetchall()]

    def owed_write(self, track_id: int) -> OwedWrite | None:
        """The write owed for this track (not failed for good), or None."""
        row = self.db.execute("SELECT id FROM tags_owed WHERE track_id = ? AND failed_at IS NULL",
                              [track_id]).fetchone()
        if row is None:
            return None
        found = self.owed_writes(row[0] - 1, row[0], 1)
        return found[0] if found else None

    def last_owed_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM tags_owed").fetchone()[0]

    def queue_again(self, track_ids: list[int], priority: int = -1) -> int:
        """Queue tagged tracks again (behind other work at the default ``priority``)."""
        def write() -> int:
            with self.db.conn:
                return sum(self.db.execute("UPDATE tracks SET status = 'pending', priority = ?, attempts = 0, "
                                           "queued_at = ? WHERE id = ? AND status = 'tagged'",
                                           [priority, now_iso(), i]).rowcount for i in track_ids)

        return self._retry(write)

    def owed_done(self, owed_id: int) -> None:
        """The owed write was made and verified, or is not needed any more (by its row id: a newer result's
        write, owed meanwhile, stays owed)."""
        def write() -> None:
            with self.db.conn:
                self.db.execute("DELETE FROM tags_owed WHERE id = ?", [owed_id])

        self._retry(write)

    def owed_failed(self, owed_id: int, error: str, lasting: bool, attempts: int = OWED_ATTEMPTS,
                    retry_in: float = 0.0) -> bool:
        """An owed write that failed: recorded as failed for good when ``lasting`` (a read-only file, an
        unsupported format) or at its ``attempts``-th failure; else kept owed, to be tried again ``retry_in``
        seconds from now (kept in the row: a restart keeps to it). Returns whether it failed for good."""
        retry_at = (datetime.now(UTC) + timedelta(seconds=retry_in)).isoformat(timespec="seconds") if retry_in else None

        def write() -> bool:
            with self.db.conn:
                self.db.execute(
                    "UPDATE tags_owed SET attempts = attempts + 1, error = ?, failed_at = CASE WHEN ? OR "
                    "attempts + 1 >= ? THEN ? END, retry_at = ? WHERE id = ?",
                    [error.splitlines()[0][:500] if error else "", int(lasting), attempts, now_iso(), retry_at,
                     owed_id])
                row = self.db.execute("SELECT failed_at FROM tags_owed WHERE id = ?", [owed_id]).fetchone()
            return bool(row and row[0])

        return self._retry(write)

    def owed_unfail(self, owed_id: int) -> None:
        """A write that failed for good is owed again for one try the user asked for (``library retry-owed
        --failed``; its attempts kept): :meth:`owed_tried` fails it for good again if that try fails."""
        def write() -> None:
            with self.db.conn:
                self.db.execute("UPDATE tags_owed SET failed_at = NULL WHERE id = ?", [owed_id])

        self._retry(write)

    def owed_tried(self, owed_id: int, error: str, for_good: bool) -> None:
        """A try the user asked for (``library retry-owed``) failed: its reason is kept, and the write is failed for
        good when ``for_good``; its attempts and retry time are left as they were, so the daemon's tries (and
        their schedule) are not used up by the user's."""
        def write() -> None:
            with self.db.conn:
                self.db.execute("UPDATE tags_owed SET error = ?, failed_at = CASE WHEN ? THEN ? END WHERE id = ?",
                                [error.splitlines()[0][:500] if error else "", int(for_good), now_iso(), owed_id])

        self._retry(write)

    def claim_tag_write(self, track_id: int) -> int | None:
        """Claim the writing of this track's file for this process (the daemon and the commands that write tags
        share the library: the claim keeps them from writing one file at once). Returns None once claimed (or already
        ours), else the pid of the live process that holds the claim. A claim whose process is gone is taken
        over. Release it with :meth:`release_tag_write`."""
        host, pid, started = _me()

        def write() -> int | None:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute("SELECT host, pid, started, claimed_at FROM tag_claims WHERE track_id = ?",
                                      [track_id]).fetchone()
                if row is not None and tuple(row[:3]) != (host, pid, started) and _claim_alive(*row):
                    return int(row[1])
                self.db.execute("INSERT OR REPLACE INTO tag_claims (track_id, host, pid, started, claimed_at) "
                                "VALUES (?, ?, ?, ?, ?)", [track_id, host, pid, started, now_iso()])
            return None

        return self._retry(write)

    def release_tag_write(self, track_id: int) -> None:
        """This process is done writing this track's file (see :meth:`claim_tag_write`)."""
        host, pid, started = _me()

        def write() -> None:
            with self.db.conn:
                self.db.execute("DELETE FROM tag_claims WHERE track_id = ? AND host = ? AND pid = ? AND started = ?",
                                [track_id, host, pid, started])

        self._retry(write)

    def owed_counts(self) -> tuple[int, int]:
        """(owed, failed for good) tag writes; (0, 0) in a library older than schema v7 (read-only use)."""
        try:
            owed, failed = self.db.execute("SELECT count(*) - count(failed_at), count(failed_at) FROM tags_owed"
                                           ).fetchone()
        except sqlite3.OperationalError:
            return 0, 0
        return owed or 0, failed or 0

    def retry_failed_tag_writes(self) -> int:
        """Owed tag writes that failed for good are owed again, from their first attempt (``retry_errors``)."""
        def write() -> int:
            with self.db.conn:
                return self.db.execute("UPDATE tags_owed SET failed_at = NULL, attempts = 0, retry_at = NULL "
                                       "WHERE failed_at IS NOT NULL").rowcount

        return self._retry(write)

    def requeue_errors(self) -> int:
        def write() -> int:
            with self.db.conn:
                return self.db.execute("UPDATE tracks SET status = 'pending', error = NULL WHERE status = 'error' "
                                       "AND fingerprint IS NOT NULL").rowcount

        return self._retry(write)

    # -- genres written into files, and re-tagging -------------------------------------------------

    def start_tag_run(self, command: str) -> int:
        """A new run of tag writes (what ``restore-tags --run`` undoes); returns its id."""
        def write() -> int:
            with self.db.conn:
                return int(self.db.execute("INSERT INTO tag_runs (started_at, command) VALUES (?, ?)",
                                           [now_iso(), command]).lastrowid)

        return self._retry(write)

    def record_tag_write(self, run_id: int, track_id: int, path: str | Path, before: dict, after: dict,
                         policy: str, settings: dict, model: str, model_version: str, size: int, mtime: float,
                         fp: str, owed_id: int | None = None) -> bool:
        """Remember a write about to replace ``path`` and the file's new size, mtime and fingerprint, in one
        transaction, so the folder watcher recognises the rewritten file as the tagged one.

        ``owed_id``: the write is the ``tags_owed`` row with this id; when that row is gone (a newer result
        replaced it while the file was being written, or another process made it), nothing is recorded and
        False is returned: the write must not replace the file."""
        def write() -> bool:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                if owed_id is not None and self.db.execute(
                        "SELECT 1 FROM tags_owed WHERE id = ? AND failed_at IS NULL", [owed_id]).fetchone() is None:
                    return False
                self.db.execute(
                    "INSERT INTO tag_writes (run_id, track_id, path, written_at, before, after, policy, settings, "
                    "model, model_version, size, mtime, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, track_id, db_path(path), now_iso(), json.dumps(before), json.dumps(after), policy,
                     json.dumps(settings), model, model_version, size, mtime, fp])
                self.db.execute("UPDATE tracks SET size = ?, mtime = ?, fingerprint = ? WHERE id = ?",
                                [size, mtime, fp, track_id])
            return True

        return self._retry(write)

    def file_rewritten(self, track_id: int, size: int, mtime: float, fp: str, before: str | None = None) -> None:
        """A file whose tags genre-tagger (restore-tags) or beets rewrote, its audio the same: its new size, mtime
        and fingerprint. ``before``: the file's fingerprint just before that write; the track is updated only if
        it described that file, and a write owed for that file (``tags_owed``) is kept for the rewritten one (its
        result is for the same audio; made later, it plans from the tags the file holds then), in one
        transaction. Without ``before`` the owed row is left as it is."""

        def write() -> None:
            with self.db.conn:
                if before is None:
                    self.db.execute("UPDATE tracks SET size = ?, mtime = ?, fingerprint = ? WHERE id = ?",
                                    [size, mtime, fp, track_id])
                    return
                self.db.execute("BEGIN IMMEDIATE")
                if self.db.execute("UPDATE tracks SET size = ?, mtime = ?, fingerprint = ? WHERE id = ? AND "
                                   "fingerprint = ?", [size, mtime, fp, track_id, before]).rowcount:
                    self.db.execute("UPDATE tags_owed SET fingerprint = ? WHERE track_id = ? AND fingerprint = ?",
                                    [fp, track_id, before])

        self._retry(write)

    def last_tag_write(self, track_id: int) -> dict | None:
        """The newest write into this track's file that was not undone (its ``after`` is what we wrote)."""
        rows = list(self.db.query("SELECT * FROM tag_writes WHERE track_id = ? AND restored_at IS NULL "
                                  "ORDER BY id DESC LIMIT 1", [track_id]))
        return _decode_write(rows[0]) if rows else None

    def tag_writes(self, run_id: int | None = None, paths: list[str] | None = None,
                   track_id: int | None = None) -> list[dict]:
        """Writes not yet undone, oldest first: those of one run, or all; only under ``paths`` if given; only
        into one track's file with ``track_id``."""
        sql = "SELECT * FROM tag_writes WHERE restored_at IS NULL"
        args: list = []
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        if track_id is not None:
            sql += " AND track_id = ?"
            args.append(track_id)
        rows = [_decode_write(r) for r in self.db.query(sql + " ORDER BY id", args)]
        if paths:
            rows = [r for r in rows if under(r["path"], paths)]
        return rows

    def last_tag_run(self) -> int | None:
        row = self.db.execute("SELECT max(run_id) FROM tag_writes WHERE restored_at IS NULL").fetchone()
        return row[0] if row else None

    def mark_restored(self, write_ids: list[int], track_id: int | None = None) -> int:
        """These writes were undone (``restore-tags``). With ``track_id`` (their file's track), the genre write
        owed for that file (``tags_owed``, failed for good or not) is dropped in the same transaction: made
        later, it would write back the genres the user just removed. Returns how many owed rows were dropped."""
        def write() -> int:
            with self.db.conn:
                self.db.conn.executemany("UPDATE tag_writes SET restored_at = ? WHERE id = ?",
                                         [(now_iso(), i) for i in write_ids])
                if track_id is None:
                    return 0
                return self.db.execute("DELETE FROM tags_owed WHERE track_id = ?", [track_id]).rowcount

        return self._retry(write)

    # The tagged tracks another model or version tagged (parameters: model, version).
    _OUTDATED = "status = 'tagged' AND (model IS NOT ? OR model_version IS NOT ?)"

    def outdated(self, model: str, version: str) -> list[tuple[str, str | None, str | None]]:
        """The tracks :meth:`queue_outdated` would queue: (path, model, model_version), by path."""
        return self.db.execute(f"SELECT path, model, model_version FROM tracks WHERE {self._OUTDATED} ORDER BY path",
                               [model, version]).fetchall()

    def queue_outdated(self, model: str, version: str, priority: int = -1) -> int:
        """Queue (behind every other pending file) the tagged tracks another model or version tagged."""
        def write() -> int:
            with self.db.conn:
                return self.db.execute(
                    f"UPDATE tracks SET status = 'pending', priority = ?, attempts = 0, queued_at = ? "
                    f"WHERE {self._OUTDATED}", [priority, now_iso(), model, version]).rowcount

        return self._retry(write)

    def queued_below(self, priority: int = 0) -> int:
        """Pending tracks queued below ``priority`` (re-tags waiting their turn)."""
        return self.db.execute("SELECT count(*) FROM tracks WHERE status = 'pending' AND priority < ?",
                               [priority]).fetchone()[0]

    def stored_genres(self, track_id: int) -> dict[str, list[tuple[str, float, bool]]]:
        """Each output's stored (label, score, decided) rows, best first."""
        out: dict[str, list[tuple[str, float, bool]]] = {}
        for output, label, score, decided in self.db.execute(
                "SELECT output, label, score, decided FROM genres WHERE track_id = ? ORDER BY output, rank",
                [track_id]):
            out.setdefault(output, []).append((label, score, bool(decided)))
        return out

    # -- reading -----------------------------------------------------------------------------------

    def stats(self) -> dict:
        counts = dict(self.db.execute("SELECT status, count(*) FROM tracks GROUP BY status").fetchall())
        top = self.db.execute(
            "SELECT g.output, g.label, count(*) FROM genres g JOIN tracks t ON t.id = g.track_id "
            "WHERE g.rank = 1 AND t.status = 'tagged' GROUP BY g.output, g.label ORDER BY g.output, 3 DESC"
        ).fetchall()
        by_output: dict[str, dict[str, int]] = {}
        for output, label, n in top:
            by_output.setdefault(output, {})[label] = n
        music = dict(self.db.execute("SELECT music, count(*) FROM tracks WHERE status = 'tagged' GROUP BY music"
                                     ).fetchall())
        files, runs = self.db.execute("SELECT count(DISTINCT track_id), count(DISTINCT run_id) FROM tag_writes "
                                      "WHERE restored_at IS NULL").fetchone()
        owed, failed = self.owed_counts()
        raised, unknown = 0, counts.get(TAGGED, 0)  # a library older than v10 opened read-only: all unknown
        if self.has_levels:
            raised, unknown = self.db.execute("SELECT coalesce(sum(gain_db > 0), 0), coalesce(sum(gain_db IS NULL), 0) "
                                              "FROM tracks WHERE status = 'tagged'").fetchone()
        return {"tracks": {s: counts.get(s, 0) for s in STATUSES}, "top_genres": by_output,
                "music": {"music": music.get(1, 0), "no_music": music.get(0, 0), "unknown": music.get(None, 0)},
                "level": {"raised": raised, "unknown": unknown},
                "tag_writes": {"files": files, "runs": runs, "owed": owed, "failed": failed},
                # The file's own version: a library opened read-only before the daemon migrated it is older.
                "schema_version": self.db.execute("PRAGMA user_version").fetchone()[0], "path": str(self.path)}

    def search(self, label: str | None = None, min_score: float = 0.0, output: str | None = None,
               status: str | None = TAGGED, limit: int | None = None, music: bool | None = None,
               decided: bool = False) -> Iterator[dict]:
        """Tracks (best first) with ``label`` at ``min_score`` or more (and ``decided``: at or above the
        threshold it was tagged with); all tracks when label is None.

        A genre search leaves out tracks that are not music (their genres mean nothing). ``music``:
        only tracks the detector called music (True; rows without an answer count as music) or not (False).
        """
        level = "t.level_dbfs, t.gain_db" if self.has_levels else "NULL, NULL"  # else unknown: see has_levels
        sql = ["SELECT t.id, t.path, t.status, t.duration_s, t.error, g.output, g.label, g.score, t.music, "
               f"t.music_probability, {level} FROM tracks t"]
        args: list = []
        if label is not None:
            sql.append("JOIN genres g ON g.track_id = t.id AND lower(g.label) = lower(?) AND g.score >= ?")
            args += [label, min_score]
            if decided:
                sql.append("AND g.decided = 1")
            if output:
                sql.append("AND g.output = ?")
                args.append(output)
        else:
            sql.append("LEFT JOIN genres g ON g.track_id = t.id AND g.rank = 1")
            if output:
                sql.append("AND g.output = ?")
                args.append(output)
        where = []
        if status:
            where.append("t.status = ?")
            args.append(status)
        if label is not None and music is None:
            music = True
        if music is not None:
            where.append("coalesce(t.music, 1) = ?")
            args.append(int(music))
        if where:
            sql.append("WHERE " + " AND ".join(where))
        sql.append("ORDER BY g.score DESC, t.path" if label is not None else "ORDER BY t.path, g.output")
        if limit:
            sql.append("LIMIT ?")
            args.append(limit)
        for r in self.db.execute(" ".join(sql), args):
            yield {"id": r[0], "path": fs_path(r[1]), "status": r[2], "duration_s": r[3], "error": r[4], "output": r[5],
                   "label": r[6], "score": r[7], "music": None if r[8] is None else bool(r[8]),
                   "music_probability": r[9], "level_dbfs": r[10], "gain_db": r[11]}

    def track(self, path_or_id: str | int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM tracks WHERE path = ?", [db_path(str(path_or_id))]))
        if not rows and (isinstance(path_or_id, int) or str(path_or_id).isdigit()):
            rows = list(self.db.query("SELECT * FROM tracks WHERE id = ?", [int(path_or_id)]))
        if not rows:
            return None
        track = rows[0]
        track["path"] = fs_path(track["path"])
        for key in ("level_dbfs", "gain_db"):  # v10: absent from an older library opened read-only
            track.setdefault(key, None)
        track["level"] = level_text(track["level_dbfs"], track["gain_db"])
        track["genres"] = list(self.db.query("SELECT output, label, score, rank, decided FROM genres "
                                             "WHERE track_id = ? ORDER BY output, rank", [track["id"]]))
        track["views"] = [{**v, "scores": json.loads(v["scores"])} for v in self.db.query(
            "SELECT output, view, slices, scores FROM track_views WHERE track_id = ? ORDER BY output, view",
            [track["id"]])]
        track["tag_writes"] = [
            {"run_id": w["run_id"], "written_at": w["written_at"], "before": w["before"]["genres"],
             "after": w["after"]["genres"], "policy": w["policy"], "model": f"{w['model']} {w['model_version']}",
             "restored_at": w["restored_at"]}
            for w in (_decode_write(r) for r in self.db.query("SELECT * FROM tag_writes WHERE track_id = ? "
                                                              "ORDER BY id", [track["id"]]))]
        track["tags_owed"] = None
        with contextlib.suppress(sqlite3.OperationalError):  # a library older than v7, opened read-only
            owed = list(self.db.query("SELECT * FROM tags_owed WHERE track_id = ?", [track["id"]]))
            keys = ("owed_at", "attempts", "failed_at", "error", "retry_at")  # retry_at from v9
            track["tags_owed"] = {k: owed[0][k] for k in keys if k in owed[0]} if owed else None
        return track


def level_text(level_dbfs: float | None, gain_db: float | None) -> str:
    """A track's stored level and gain in words: "unknown" for a row tagged before v10 (or never tagged)."""
    if gain_db is None:
        return "unknown (not tagged since the library began keeping levels)"
    if level_dbfs is None:
        return "silence (nothing above -70 dBFS): not raised"
    if gain_db > 0:
        return f"{level_dbfs:.1f} dBFS: quiet, analysed raised by {gain_db:.1f} dB to the model's level floor"
    return f"{level_dbfs:.1f} dBFS"


def under(path: str | None, paths: list[str]) -> bool:
    """Whether ``path`` is one of ``paths`` or in a folder among them (absolute paths, as the library keeps them)."""
    if path is None:
        return False
    for p in paths:
        p = str(Path(p))
        if path == p or path.startswith(p.rstrip(os.sep) + os.sep):
            return True
    return False


def _decode_write(row: dict) -> dict:
    return {**row, "path": fs_path(row["path"]), "before": json.loads(row["before"]), "after": json.loads(row["after"]),
            "settings": json.loads(row["settings"] or "{}")}


def wait_for_writer(path: str | Path, seconds: float = 5.0) -> None:
    """Block until the library file exists (for readers started beside the daemon)."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
