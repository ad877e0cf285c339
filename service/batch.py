"""``genre-tagger batch SOURCE --out DIR``: tag a catalogue into Parquet shards, resumably.

SOURCE is a folder (searched like ``tag`` does) or a manifest of paths: ``.csv`` (a ``path`` column, else
the first), ``.jsonl`` (objects with ``path``, or strings), ``.parquet`` (a ``path`` column) or ``.txt``
(one per line). A manifest may list URLs FFmpeg opens (``https://…``: an object store's HTTP(S) endpoint or
presigned URLs, ``ftp://…``) beside local paths; a URL that cannot be read (404, refused, timeout) becomes an
error row naming it. Each track becomes one row in a shard ``DIR/part-*.parquet`` (:data:`SCHEMA`): its
result with every label's probability (``result``, the JSON of ``tag --json`` with all labels), the
coverage, the model and its version, or its error (``ok`` false, ``error``). A shard is written whole
(a temporary file renamed), so a run that stops loses at most the rows not yet in a shard, and a new run
skips every path already in one: re-running finishes the work and tags nothing twice.

Without ``--ray``, files are tagged by local processes (:mod:`tagger.parallel`, ``--jobs``). With
``--ray ADDRESS`` (``auto``, ``local`` or ``ray://host:10001``) Ray Data does the work across a cluster
(:mod:`service.batch_ray`). Either way this process is the one writer of the shards.

``genre-tagger library import DIR`` merges the shards into the SQLite library (one writer).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagger.cli import iter_audio_files
from tagger.decode import is_url
from tagger.ensemble import LabelScore, OutputEstimate
from tagger.errors import ConfigError, TaggerError
from tagger.pipeline import TrackResult

SHARD_ROWS = 500  # rows per shard: small enough that a stopped run loses little, large enough to read fast

# Columns of a shard, in order (pyarrow types are named so that this module imports without pyarrow).
SCHEMA = (
    ("path", "string"), ("ok", "bool_"), ("error", "string"), ("coverage", "string"), ("duration_s", "float64"),
    ("analysed_s", "float64"), ("model", "string"), ("model_version", "string"), ("provider", "string"),
    ("music", "bool_"), ("music_probability", "float64"), ("top", "string"), ("confidence", "float64"),
    ("result", "string"), ("size", "int64"), ("mtime", "float64"), ("fingerprint", "string"),
    ("tagged_at", "string"), ("elapsed_s", "float64"), ("host", "string"),
)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("batch needs pyarrow for its Parquet shards: pip install 'genre-tagger[batch]'") from None
    return pyarrow


def arrow_schema():
    pa = _pyarrow()
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in SCHEMA])


# -- the source ----------------------------------------------------------------------------------------

def read_source(source: str | Path) -> list[str]:
    """The paths a folder or a manifest lists, in order, without repeats; absolute (the library keys its
    tracks by absolute path: a relative one would be another track than the daemon's)."""
    source = Path(source).expanduser().absolute()
    if source.is_dir():
        items: Iterable[str] = (str(p) for p in iter_audio_files([str(source)]))
    elif not source.is_file():
        raise ConfigError(f"{source}: no such folder or manifest")
    else:
        suffix = source.suffix.lower()
        if suffix == ".csv":
            items = _csv_paths(source)
        elif suffix in (".jsonl", ".ndjson"):
            items = _jsonl_paths(source)
        elif suffix == ".parquet":
            try:
                table = _pyarrow().parquet.read_table(source)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise ConfigError(f"{source}: not a readable Parquet manifest ({str(exc).splitlines()[0]})") from None
            if "path" not in table.column_names:
                raise ConfigError(f"{source}: a Parquet manifest needs a 'path' column (has {table.column_names})")
            items = (str(p) for p in table.column("path").to_pylist() if p)
        elif suffix == ".txt":
            items = (line.strip() for line in source.read_text().splitlines() if line.strip())
        else:
            raise ConfigError(f"{source}: a manifest is .csv, .jsonl, .parquet or .txt")
        base = source.parent
        # Relative paths are relative to the manifest; URLs stay as they are.
        items = (p if is_url(p) or os.path.isabs(p) else os.path.normpath(base / p) for p in items)
    return list(dict.fromkeys(p if is_url(p) else str(Path(p)) for p in items))


def _csv_paths(source: Path) -> Iterator[str]:
    with source.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        column = header.index("path") if "path" in header else 0
        if "path" not in header and Path(header[0]).suffix.lower() in (".mp3", ".flac", ".ogg", ".opus", ".wav"):
            yield header[0]  # no header line: the first row is a path too
        for row in reader:
            if len(row) > column and row[column].strip():
                yield row[column].strip()


def _jsonl_paths(source: Path) -> Iterator[str]:
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}:{number}: not JSON ({exc.msg})") from None
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str):
            raise ConfigError(f"{source}:{number}: expected a path string or an object with 'path'")
        yield path


# -- rows and shards -----------------------------------------------------------------------------------

def file_identity(path: str) -> dict[str, Any]:
    """size, mtime and fingerprint of a local file as it is before tagging (None for what cannot be read)."""
    from service.library import fingerprint

    try:
        st = os.stat(path)
        return {"size": st.st_size, "mtime": st.st_mtime, "fingerprint": fingerprint(path, st.st_size)}
    except OSError:
        return {"size": None, "mtime": None, "fingerprint": None}


def result_row(path: str, result: TrackResult | None, error: str | None, identity: dict[str, Any]) -> dict:
    """One shard row for a track: its result or its error."""
    from service.library import now_iso

    row = dict.fromkeys(name for name, _ in SCHEMA)
    row.update(identity, path=path, ok=result is not None, error=error, tagged_at=now_iso(), host=socket.gethostname())
    if result is not None:
        first = next(iter(result.outputs.values()))
        row.update(coverage=result.coverage, duration_s=result.duration_s,
                   analysed_s=result.analysed_s if result.analysed_s is not None else result.duration_s,
                   model=result.model, model_version=result.model_version, provider=result.provider,
                   music=result.music, music_probability=result.music_probability, top=first.top,
                   confidence=first.confidence, result=json.dumps(result.as_dict()), elapsed_s=result.elapsed_s)
    return row


def level_known(row: dict) -> bool:
    """Whether a shard row's result says at what level its file was analysed (``level_dbfs``, ``gain_db``): shards
    written before the level floor (708eadb) do not, and their files' level is unknown, not silence."""
    return "gain_db" in json.loads(row["result"])


def result_from_row(row: dict) -> TrackResult:
    """The :class:`TrackResult` a shard row holds (every label's probability, per view too)."""
    data = json.loads(row["result"])

    def scores(mapping: dict[str, float]) -> list[LabelScore]:
        return [LabelScore(label, float(score)) for label, score in mapping.items()]

    outputs = {name: OutputEstimate(
        output=name, title=d["title"], multi_label=d["multi_label"], scores=scores(d["scores"]), top=d["top"],
        confidence=d["confidence"], margin=d["margin"], decided=list(d["decided"]), uncertain=d["uncertain"],
        candidates=list(d["candidates"]), threshold=d["threshold"],
        per_view={v: scores(s) for v, s in d["views"].items()}, slices=dict(d["slices"]))
        for name, d in data["outputs"].items()}
    return TrackResult(row["path"], data["duration_s"], outputs, data["model"], data["model_version"],
                       data["provider"], data["elapsed_s"], music=data.get("music", True),
                       music_probability=data.get("music_probability"), coverage=data.get("coverage", "full"),
                       analysed_s=data.get("analysed_s"), level_dbfs=data.get("level_dbfs"),
                       gain_db=data.get("gain_db", 0.0))


def shard_files(out: Path) -> list[Path]:
    return sorted(Path(out).glob("part-*.parquet"))


def done_paths(out: Path) -> set[str]:
    """Every path already in a shard of ``out`` (tagged or failed)."""
    pq = _pyarrow().parquet
    done: set[str] = set()
    for shard in shard_files(out):
        done.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
    return done


def read_rows(out: Path) -> Iterator[dict]:
    """Every row of every shard in ``out``, shard by shard."""
    pq = _pyarrow().parquet
    for shard in shard_files(out):
        yield from pq.read_table(shard).to_pylist()


class ShardWriter:
    """Collects rows and writes them ``shard_rows`` at a time as ``part-<run>-<n>.parquet`` (atomically: a
    temporary file renamed). Paths already written are dropped, so a path is in the output once."""

    def __init__(self, out: Path, shard_rows: int = SHARD_ROWS, written: set[str] | None = None) -> None:
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where the folder belongs, no permission: the user's --out, in one line
            reason = "not a folder" if isinstance(exc, FileExistsError) else exc.strerror
            raise TaggerError(f"--out {out}: cannot make the shard folder ({reason})") from None
        self.shard_rows = shard_rows
        self.written = set(written or ())
        self.rows: list[dict] = []
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.shards = 0
        self.counts = {"ok": 0, "error": 0}

    def add(self, row: dict) -> bool:
        if row["path"] in self.written:
            return False
        self.written.add(row["path"])
        self.rows.append(row)
        self.counts["ok" if row["ok"] else "error"] += 1
        if len(self.rows) >= self.shard_rows:
            self.flush()
        return True

    def flush(self) -> None:
        if not self.rows:
            return
        pa = _pyarrow()
        table = pa.Table.from_pylist(self.rows, schema=arrow_schema())
        final = self.out / f"part-{self.run}-{self.shards:05d}.parquet"
        temporary = final.with_name(f".{final.name}.tmp")
        pa.parquet.write_table(table, temporary)
        os.replace(temporary, final)
        self.shards += 1
        self.rows = []


@dataclass
class BatchSummary:
    total: int
    skipped: int
    tagged: int
    errors: int
    shards: int
    seconds: float


def run_batch(source: str | Path, out: str | Path, tagger_arguments: dict[str, Any], jobs: int,
              ray_address: str | None = None, shard_rows: int = SHARD_ROWS, progress: bool = False,
              ray_options: dict[str, Any] | None = None) -> BatchSummary:
    """Tag every path of ``source`` not yet in ``out``'s shards; see the module docstring."""
    started = time.monotonic()
    out = Path(out)
    _pyarrow()
    paths = read_source(source)
    done = done_paths(out) if out.is_dir() else set()
    todo = [p for p in paths if p not in done]
    writer = ShardWriter(out, shard_rows, done)
    from tqdm import tqdm

    with tqdm(total=len(todo), unit="file", disable=not progress, dynamic_ncols=True) as bar:
        try:
            if ray_address:
                from service.batch_ray import ray_rows

                rows: Iterable[dict] = ray_rows(todo, tagger_arguments, ray_address, **(ray_options or {}))
            else:
                rows = _local_rows(todo, tagger_arguments, jobs)
            for row in rows:
                if writer.add(row):
                    bar.update(1)
                    if not row["ok"]:  # which file, and why: the count alone says neither
                        bar.write(f"genre-tagger: error: {row['error']}", file=sys.stderr)
        finally:
            writer.flush()  # what is done is kept, also on Ctrl-C or an error
    return BatchSummary(len(paths), len(paths) - len(todo), writer.counts["ok"], writer.counts["error"],
                        writer.shards, time.monotonic() - started)


def _local_rows(todo: list[str], tagger_arguments: dict[str, Any], jobs: int) -> Iterator[dict]:
    from tagger.parallel import engine_options_for_jobs, tag_files
    from tagger.pipeline import Tagger

    if not todo:
        return
    jobs = max(1, min(jobs, len(todo)))
    arguments = dict(tagger_arguments)
    arguments["engine_options"] = engine_options_for_jobs(arguments["engine_options"], jobs)
    try:
        tagger = Tagger(**arguments)
    except TaggerError:
        raise
    identities = {}
    for outcome in tag_files(tagger, _identified(todo, identities), jobs):
        path = str(outcome.path)
        yield result_row(path, outcome.result, outcome.error, identities.pop(path))


def _identified(todo: list[str], identities: dict[str, dict]) -> Iterator[str]:
    # Each file's size, mtime and fingerprint as it is when it is queued for the jobs (at most two windows of
    # tagger.parallel.DISPATCH_WINDOW files before it is tagged).
    for path in todo:
        identities[path] = file_identity(path)
        yield path


def import_shards(library, out: Path) -> dict[str, int]:
    """Merge every shard of ``out`` into ``library`` (this process is its one writer). A tagged row becomes
    a tagged track with its genres (as the file was when tagged: size, mtime, fingerprint); a failed row a
    track in error with its reason. A track the library already holds with the same fingerprint, model and
    version, tagged, is left as it is, so importing twice changes nothing."""
    if not shard_files(out):
        raise ConfigError(f"{out}: no batch shards (part-*.parquet) there")
    counts = {"tagged": 0, "error": 0, "unchanged": 0}
    for row in read_rows(out):
        known = library.track(row["path"])
        # A URL's row has no fingerprint (None), which the library keeps as ''.
        if known is not None and known["status"] == "tagged" and row["ok"] and \
                (known["fingerprint"] or "", known["model"], known["model_version"]) == \
                (row["fingerprint"] or "", row["model"], row["model_version"]):
            counts["unchanged"] += 1
            continue
        if known is not None and known["status"] == "error" and not row["ok"] and known["error"] == row["error"]:
            counts["unchanged"] += 1  # the same failure imported again: nothing to change
            continue
        if row["ok"]:
            library.record_file_result(row["path"], result_from_row(row), row["size"] or 0, row["mtime"] or 0.0,
                                       row["fingerprint"] or "", level_known=level_known(row))
            counts["tagged"] += 1
        else:
            library.discover_unreadable(row["path"], row["error"] or "failed")
            track = library.get(row["path"])
            if track is not None:
                library.record_error(track.id, row["error"] or "failed")
            counts["error"] += 1
    return counts
