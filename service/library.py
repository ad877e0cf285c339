"""The SQLite library: tracks, their genres, per-view results, and the durable work queue.

Schema (version 4; ``PRAGMA user_version`` holds it, :func:`migrate` upgrades older files):

``tracks``
    id, path (unique), size (bytes), mtime (seconds), fingerprint (see :func:`fingerprint`),
    duration_s, status (``pending`` | ``tagged`` | ``error`` | ``deleted``), error (one line),
    model, model_version, tagged_at (ISO 8601 UTC), queued_at, attempts, tag_count,
    music (1, or 0 when the model's music detector heard no music; NULL for rows tagged before v3 or by
    a model without a detector), music_probability (0..1 or NULL),
    priority (the queue takes higher first; ``retag --outdated`` queues at -1, behind new files).
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

Pending rows are the queue: a restart resumes them. Each track's result is written in one
transaction (genres replaced, status set), so a crash never leaves a half-written track. WAL mode
and a busy timeout keep readers (your scripts, a beets or Mixxx export) unblocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from tagger.pipeline import TrackResult

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000
FINGERPRINT_CHUNK = 64 * 1024

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


def _v1_to_v2(db: sqlite_utils.Database) -> None:
    # v2 counts how often a track was tagged (a re-tag after a file change is legitimate, a double one is not).
    if "tag_count" not in db["tracks"].columns_dict:
        db["tracks"].add_column("tag_count", int, not_null_default=0)


def _v2_to_v3(db: sqlite_utils.Database) -> None:
    # v3 records the music detector's answer ("no music" is a result, not a genre).
    columns = db["tracks"].columns_dict
    if "music" not in columns:
        db["tracks"].add_column("music", int)
    if "music_probability" not in columns:
        db["tracks"].add_column("music_probability", float)
    db["tracks"].create_index(["music"], if_not_exists=True)


def _v3_to_v4(db: sqlite_utils.Database) -> None:
    # v4: the genres written into files (history for restore-tags) and a queue priority (retag --outdated).
    if "priority" not in db["tracks"].columns_dict:
        db["tracks"].add_column("priority", int, not_null_default=0)
    db["tag_runs"].create({"id": int, "started_at": str, "command": str}, pk="id", if_not_exists=True)
    db["tag_writes"].create({
        "id": int, "run_id": int, "track_id": int, "path": str, "written_at": str, "before": str, "after": str,
        "policy": str, "settings": str, "model": str, "model_version": str, "size": int, "mtime": float,
        "fingerprint": str, "restored_at": str,
    }, pk="id", foreign_keys=[("run_id", "tag_runs", "id")], if_not_exists=True)
    db["tag_writes"].create_index(["track_id", "id"], if_not_exists=True)
    db["tag_writes"].create_index(["run_id"], if_not_exists=True)
    db["tracks"].create_index(["status", "priority", "id"], if_not_exists=True)


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(db: sqlite_utils.Database) -> int:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`; return the version found."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"library schema version {found} is newer than this genre-tagger ({SCHEMA_VERSION})")
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
    """The library database. One instance per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | Path, store_top_k: int = 10) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable at checkpoints, never corrupt
        self.db.execute("PRAGMA foreign_keys = ON")
        migrate(self.db)
        self.store_top_k = store_top_k

    def close(self) -> None:
        self.db.conn.close()

    # -- the queue ---------------------------------------------------------------------------------

    def get(self, path: str | Path) -> TrackRow | None:
        row = self.db.execute("SELECT id, path, size, mtime, fingerprint, status, error FROM tracks WHERE path = ?",
                              [str(path)]).fetchone()
        return TrackRow(*row) if row else None

    def by_fingerprint(self, fp: str) -> list[TrackRow]:
        rows = self.db.execute("SELECT id, path, size, mtime, fingerprint, status, error FROM tracks "
                               "WHERE fingerprint = ? ORDER BY id", [fp]).fetchall()
        return [TrackRow(*r) for r in rows]

    def discover(self, path: str | Path) -> str:
        """Record a stable file; queue it unless it is known unchanged. Returns what was done.

        ``unchanged``: same path, size and mtime. ``moved``: a known file (same fingerprint) whose old
        path no longer exists; its row follows it, tags kept. ``queued``: new or changed.
        """
        path = Path(path)
        st = path.stat()
        known = self.get(path)
        if known and known.size == st.st_size and known.mtime == st.st_mtime and known.status != DELETED:
            return "unchanged"
        fp = fingerprint(path, st.st_size)
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            if known and known.fingerprint == fp and known.status in (TAGGED, PENDING):
                self.db.execute("UPDATE tracks SET size = ?, mtime = ? WHERE id = ?",
                                [st.st_size, st.st_mtime, known.id])
                return "unchanged"
            if not known:
                for twin in self.by_fingerprint(fp):
                    if twin.status == DELETED or not Path(twin.path).exists():
                        self.db.execute("UPDATE tracks SET path = ?, size = ?, mtime = ?, status = CASE WHEN "
                                        "status = 'deleted' AND model IS NOT NULL THEN 'tagged' WHEN status = "
                                        "'deleted' THEN 'pending' ELSE status END WHERE id = ?",
                                        [str(path), st.st_size, st.st_mtime, twin.id])
                        return "moved"
            self.db.execute(
                "INSERT INTO tracks (path, size, mtime, fingerprint, status, error, queued_at, attempts) "
                "VALUES (?, ?, ?, ?, 'pending', NULL, ?, 0) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime = excluded.mtime, fingerprint = excluded.fingerprint, status = 'pending', error = NULL, "
                "queued_at = excluded.queued_at, attempts = 0, priority = 0",
                [str(path), st.st_size, st.st_mtime, fp, now_iso()])
        return "queued"

    def moved(self, src: str | Path, dest: str | Path) -> bool:
        """A rename or move seen by the watcher: the row follows the file. False if src was unknown."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            known = self.get(src)
            if not known:
                return False
            self.db.execute("DELETE FROM tracks WHERE path = ? AND id != ?", [str(dest), known.id])
            self.db.execute("UPDATE tracks SET path = ? WHERE id = ?", [str(dest), known.id])
        return True

    def moved_tree(self, src: str | Path, dest: str | Path) -> int:
        """A folder was renamed or moved: every track under it follows."""
        prefix = str(src).rstrip(os.sep) + os.sep
        with self.db.conn:
            cur = self.db.execute("UPDATE tracks SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
                                  [str(dest).rstrip(os.sep) + os.sep, len(prefix) + 1, len(prefix), prefix])
        return cur.rowcount

    def mark_deleted_tree(self, root: str | Path) -> int:
        prefix = str(root).rstrip(os.sep) + os.sep
        with self.db.conn:
            cur = self.db.execute("UPDATE tracks SET status = 'deleted' WHERE status != 'deleted' "
                                  "AND substr(path, 1, ?) = ?", [len(prefix), prefix])
        return cur.rowcount

    def discover_unreadable(self, path: str | Path, message: str) -> None:
        """Queue a file that exists but cannot be read, so it ends as an error with its reason."""
        with self.db.conn:
            self.db.execute(
                "INSERT INTO tracks (path, size, mtime, status, error, queued_at, attempts) VALUES "
                "(?, 0, 0, 'pending', ?, ?, 0) ON CONFLICT(path) DO UPDATE SET status = 'pending', "
                "error = excluded.error", [str(path), message, now_iso()])

    def mark_deleted(self, path: str | Path) -> bool:
        with self.db.conn:
            cur = self.db.execute("UPDATE tracks SET status = 'deleted' WHERE path = ? AND status != 'deleted'",
                                  [str(path)])
        return cur.rowcount > 0

    def mark_missing_under(self, root: str | Path, seen: set[str]) -> int:
        """Mark deleted every known track under ``root`` not in ``seen`` (after a full scan)."""
        prefix = str(Path(root)) + os.sep
        rows = self.db.execute("SELECT path FROM tracks WHERE status != 'deleted' AND substr(path, 1, ?) = ?",
                               [len(prefix), prefix]).fetchall()
        gone = [p for (p,) in rows if p not in seen and not Path(p).exists()]
        for p in gone:
            self.mark_deleted(p)
        return len(gone)

    def next_pending(self, exclude: set[int] | None = None, below_priority: int | None = None) -> TrackRow | None:
        """The next queued track: higher priority first, then oldest (``below_priority``: only lower ones)."""
        where = "" if below_priority is None else f" AND priority < {int(below_priority)}"
        rows = self.db.execute("SELECT id, path, size, mtime, fingerprint, status, error FROM tracks "
                               f"WHERE status = 'pending'{where} ORDER BY priority DESC, id LIMIT ?",
                               [1 + len(exclude or ())]).fetchall()
        for r in rows:
            if not exclude or r[0] not in exclude:
                return TrackRow(*r)
        return None

    def pending_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM tracks WHERE status = 'pending'").fetchone()[0]

    # -- results -----------------------------------------------------------------------------------

    def record_result(self, track_id: int, result: TrackResult, expected_fingerprint: str | None = None) -> bool:
        """Write a track's genres and mark it tagged, in one transaction.

        Returns False (and writes nothing) when the row changed meanwhile (a file modified or deleted
        while it was being tagged): it will be tagged again from its new state.
        """
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT status, fingerprint FROM tracks WHERE id = ?", [track_id]).fetchone()
            if not row or row[0] != PENDING or (expected_fingerprint and row[1] != expected_fingerprint):
                return False
            self._store_result(track_id, result)
        return True

    def record_file_result(self, path: str | Path, result: TrackResult, size: int, mtime: float,
                           fp: str) -> int:
        """Record a file tagged outside the queue (``tag --write-tags``) as tagged; returns its track id.

        ``size``, ``mtime`` and ``fp`` describe the file as it was read.
        """
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO tracks (path, size, mtime, fingerprint, status, queued_at, attempts) VALUES "
                "(?, ?, ?, ?, 'pending', ?, 0) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                "mtime = excluded.mtime, fingerprint = excluded.fingerprint, status = 'pending', error = NULL",
                [str(path), size, mtime, fp, now_iso()])
            (track_id,) = self.db.execute("SELECT id FROM tracks WHERE path = ?", [str(path)]).fetchone()
            self._store_result(track_id, result)
        return track_id

    def _store_result(self, track_id: int, result: TrackResult) -> None:
        self.db.execute("DELETE FROM genres WHERE track_id = ?", [track_id])
        self.db.execute("DELETE FROM track_views WHERE track_id = ?", [track_id])
        genre_rows, view_rows = [], []
        music = getattr(result, "music", True)
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
            "priority = 0 WHERE id = ?",
            [result.duration_s, result.model, result.model_version, now_iso(), int(music),
             getattr(result, "music_probability", None), track_id])

    def record_error(self, track_id: int, message: str, force: bool = False) -> None:
        """Mark a pending track failed with a one-line reason (``force``: whatever its status)."""
        condition = "" if force else " AND status = 'pending'"
        with self.db.conn:
            self.db.execute("UPDATE tracks SET status = 'error', error = ?, attempts = attempts + 1 "
                            f"WHERE id = ?{condition}", [message.splitlines()[0][:500], track_id])

    def requeue_errors(self) -> int:
        with self.db.conn:
            cur = self.db.execute("UPDATE tracks SET status = 'pending', error = NULL WHERE status = 'error'")
        return cur.rowcount

    # -- genres written into files, and re-tagging -------------------------------------------------

    def start_tag_run(self, command: str) -> int:
        """A new run of tag writes (what ``restore-tags --run`` undoes); returns its id."""
        with self.db.conn:
            cur = self.db.execute("INSERT INTO tag_runs (started_at, command) VALUES (?, ?)", [now_iso(), command])
        return int(cur.lastrowid)

    def record_tag_write(self, run_id: int, track_id: int, path: str | Path, before: dict, after: dict,
                         policy: str, settings: dict, model: str, model_version: str, size: int, mtime: float,
                         fp: str) -> None:
        """Remember a write about to replace ``path`` and the file's new size, mtime and fingerprint, in one
        transaction, so the folder watcher recognises the rewritten file as the tagged one."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO tag_writes (run_id, track_id, path, written_at, before, after, policy, settings, model, "
                "model_version, size, mtime, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, track_id, str(path), now_iso(), json.dumps(before), json.dumps(after), policy,
                 json.dumps(settings), model, model_version, size, mtime, fp])
            self.db.execute("UPDATE tracks SET size = ?, mtime = ?, fingerprint = ? WHERE id = ?",
                            [size, mtime, fp, track_id])

    def file_rewritten(self, track_id: int, size: int, mtime: float, fp: str) -> None:
        """A file genre-tagger rewrote (restore-tags): its new size, mtime and fingerprint."""
        with self.db.conn:
            self.db.execute("UPDATE tracks SET size = ?, mtime = ?, fingerprint = ? WHERE id = ?",
                            [size, mtime, fp, track_id])

    def last_tag_write(self, track_id: int) -> dict | None:
        """The newest write into this track's file that was not undone (its ``after`` is what we wrote)."""
        rows = list(self.db.query("SELECT * FROM tag_writes WHERE track_id = ? AND restored_at IS NULL "
                                  "ORDER BY id DESC LIMIT 1", [track_id]))
        return _decode_write(rows[0]) if rows else None

    def tag_writes(self, run_id: int | None = None, paths: list[str] | None = None) -> list[dict]:
        """Writes not yet undone, oldest first: those of one run, or all; only under ``paths`` if given."""
        sql = "SELECT * FROM tag_writes WHERE restored_at IS NULL"
        args: list = []
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        rows = [_decode_write(r) for r in self.db.query(sql + " ORDER BY id", args)]
        if paths:
            prefixes = [str(Path(p)) for p in paths]
            rows = [r for r in rows if any(r["path"] == p or r["path"].startswith(p.rstrip(os.sep) + os.sep)
                                           for p in prefixes)]
        return rows

    def last_tag_run(self) -> int | None:
        row = self.db.execute("SELECT max(run_id) FROM tag_writes WHERE restored_at IS NULL").fetchone()
        return row[0] if row else None

    def mark_restored(self, write_ids: list[int]) -> None:
        with self.db.conn:
            self.db.conn.executemany("UPDATE tag_writes SET restored_at = ? WHERE id = ?",
                                     [(now_iso(), i) for i in write_ids])

    def queue_outdated(self, model: str, version: str, priority: int = -1) -> int:
        """Queue (behind every other pending file) the tagged tracks another model or version tagged."""
        with self.db.conn:
            cur = self.db.execute("UPDATE tracks SET status = 'pending', priority = ?, attempts = 0, queued_at = ? "
                                  "WHERE status = 'tagged' AND (model IS NOT ? OR model_version IS NOT ?)",
                                  [priority, now_iso(), model, version])
        return cur.rowcount

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
        return {"tracks": {s: counts.get(s, 0) for s in STATUSES}, "top_genres": by_output,
                "music": {"music": music.get(1, 0), "no_music": music.get(0, 0), "unknown": music.get(None, 0)},
                "schema_version": SCHEMA_VERSION, "path": str(self.path)}

    def search(self, label: str | None = None, min_score: float = 0.0, output: str | None = None,
               status: str | None = TAGGED, limit: int | None = None, music: bool | None = None) -> Iterator[dict]:
        """Tracks (best first) with ``label`` at ``min_score`` or more; all tracks when label is None.

        A genre search leaves out tracks that are not music (their genres mean nothing). ``music``:
        only tracks the detector called music (True; rows without an answer count as music) or not (False).
        """
        sql = ["SELECT t.id, t.path, t.status, t.duration_s, t.error, g.output, g.label, g.score, t.music, "
               "t.music_probability FROM tracks t"]
        args: list = []
        if label is not None:
            sql.append("JOIN genres g ON g.track_id = t.id AND lower(g.label) = lower(?) AND g.score >= ?")
            args += [label, min_score]
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
            yield {"id": r[0], "path": r[1], "status": r[2], "duration_s": r[3], "error": r[4], "output": r[5],
                   "label": r[6], "score": r[7], "music": None if r[8] is None else bool(r[8]),
                   "music_probability": r[9]}

    def track(self, path_or_id: str | int) -> dict | None:
        key = "id" if isinstance(path_or_id, int) or str(path_or_id).isdigit() else "path"
        rows = list(self.db.query(f"SELECT * FROM tracks WHERE {key} = ?", [path_or_id]))
        if not rows:
            return None
        track = rows[0]
        track["genres"] = list(self.db.query("SELECT output, label, score, rank, decided FROM genres "
                                             "WHERE track_id = ? ORDER BY output, rank", [track["id"]]))
        track["views"] = [{**v, "scores": json.loads(v["scores"])} for v in self.db.query(
            "SELECT output, view, slices, scores FROM track_views WHERE track_id = ? ORDER BY output, view",
            [track["id"]])]
        return track


def _decode_write(row: dict) -> dict:
    return {**row, "before": json.loads(row["before"]), "after": json.loads(row["after"]),
            "settings": json.loads(row["settings"] or "{}")}


def wait_for_writer(path: str | Path, seconds: float = 5.0) -> None:
    """Block until the library file exists (for readers started beside the daemon)."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
