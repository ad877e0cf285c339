"""Subcommands of ``genre-tagger`` that the service adds: ``daemon``, ``listen`` and ``library``."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tagger.chart import bar
from tagger.cli import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    _fraction,
    _positive_int,
    add_coverage_argument,
    add_engine_arguments,
    add_jobs_argument,
    engine_options,
    whole_number,
)
from tagger.ensemble import NO_MUSIC
from tagger.errors import ConfigError, TaggerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.library import Library
    from service.tagwriter import Outcome, TagWriter
    from tagger.pipeline import TrackResult

# The settings bench-coverage compares with full coverage (service.bench_coverage's; here --help needs no numpy).
DEFAULT_COVERAGES = ("excerpts:3x30", "excerpts:3x20", "excerpts:3x10", "excerpts:2x10", "excerpts:1x10")
DEFAULT_LISTEN = "tcp://127.0.0.1:5556"
# What `bench` runs on when no folder is named: the shared data beside a checkout.
DEFAULT_BENCH_FOLDER = "../shared/data/realworld"


def register(sub: argparse._SubParsersAction) -> None:
    daemon = sub.add_parser("daemon", help="run the tagging daemon (watched folders, live input, ZeroMQ, SQLite)",
                            description="Run the long-lived daemon. Settings: TOML file < environment "
                                        "(GENRE_TAGGER_<SECTION>_<KEY>) < these flags; see "
                                        "service/genre-tagger.toml.")
    daemon.add_argument("--config", "-c", help="TOML configuration file")
    daemon.add_argument("--folder", "-f", action="append", dest="folders", metavar="DIR",
                        help="watch this folder (repeatable; adds to the config's roots)")
    daemon.add_argument("--live", nargs="?", const="", default=None, metavar="DEVICE",
                        help="capture live audio from a PortAudio device (name or index; none = the config's "
                             "[live] device, else the default input)")
    daemon.add_argument("--live-file", metavar="PATH|URL",
                        help="play an audio file or an http(s):// stream (Icecast) through the live path in "
                             "real time, as a live source")
    daemon.add_argument("--loop", action="store_true", default=None,
                        help="with --live-file: start the file over when it ends")
    daemon.add_argument("--source", help="live source name used in topics (default 'live')")
    daemon.add_argument("--horizon", type=float, help="live ensemble horizon in seconds (0 = whole stream)")
    daemon.add_argument("--library", help="SQLite library file (default <state dir>/library.db)")
    daemon.add_argument("--state-dir", help="state directory (default ~/.local/state/genre-tagger)")
    daemon.add_argument("--model", "-m", help="model name or .onnx path (default: the shipped default model)")
    daemon.add_argument("--device", choices=("auto", "cuda", "cpu"), help="inference device (default auto)")
    daemon.add_argument("--settle", type=float, help="seconds a file must stay unchanged before it is read")
    daemon.add_argument("--jobs", "-j", type=int, help="files tagged at once (default: the config's, 0 = one per core)")
    daemon.add_argument("--coverage", metavar="full|excerpts:KxS",
                        help="how much of each file to analyse (default: the config's, full)")
    daemon.add_argument("--print-config", action="store_true",
                        help="print the commented example configuration (every key and its default) and exit")
    from service.sinks import sink_classes

    for sink in sink_classes().values():  # each sink's own flags (--endpoint for ZeroMQ...)
        sink.add_arguments(daemon)
    daemon.set_defaults(func=cmd_daemon)

    listen = sub.add_parser("listen", help="show the daemon's live genre updates (bars), or JSON lines")
    listen.add_argument("endpoint", nargs="?", default=None,
                        help=f"where to connect (default: $GENRE_TAGGER_PUBLISH_ENDPOINT, the daemon's, else "
                             f"{DEFAULT_LISTEN})")
    listen.add_argument("--topic", "-t", action="append", default=None,
                        help="topic prefix to subscribe to (repeatable; default: everything)")
    listen.add_argument("--json", action="store_true", help="one JSON object per message, with its topic")
    listen.add_argument("--count", type=_non_negative_int, default=0,
                        help="exit after this many messages (default 0: never)")
    listen.add_argument("--timeout", type=_seconds, default=0.0, help="exit after this many seconds (default 0: never)")
    listen.add_argument("--server-key", metavar="KEY|FILE",
                        help="the daemon's CURVE public key (Z85, or its .key file), when it uses CURVE")
    listen.add_argument("--client-key", metavar="FILE",
                        help="this client's CURVE secret certificate (.key_secret; its public key is in the "
                             "daemon's curve_clients)")
    listen.set_defaults(func=cmd_listen)

    keys = sub.add_parser("keys", help="make a CURVE key pair for the daemon or a client (ZeroMQ security)",
                          description="Writes DIR/NAME.key (public: give it to the other side) and "
                                      "DIR/NAME.key_secret (keep it private).")
    keys.add_argument("folder", metavar="DIR", help="folder to write the two certificate files to")
    keys.add_argument("--name", default="genre-tagger", help="file name of the pair (default genre-tagger)")
    keys.set_defaults(func=cmd_keys)

    library = sub.add_parser("library", help="the tag library: query and export it, undo tag writes (restore-tags), "
                                             "make owed ones now (retry-owed), import batch shards, re-tag after "
                                             "a model update")
    library.add_argument("--library", help="SQLite library file (default: the daemon's)")
    library.add_argument("--config", "-c", help="TOML configuration file (to find the library)")
    lsub = library.add_subparsers(dest="library_command", required=True)
    stats = lsub.add_parser("stats", help="track counts by status, and tracks per top genre")
    stats.add_argument("--json", action="store_true", help="the counts as one JSON object")
    ls = lsub.add_parser("list", help="tracks, or those with a genre at a minimum confidence")
    ls.add_argument("--genre", "-g", help="label to search (case-insensitive)")
    ls.add_argument("--min-score", type=_fraction, default=None,
                    help="minimum probability of that label, 0..1 or a percentage (default: the tracks where it was "
                         "decided, at or above the threshold they were tagged with; 0 lists every stored score)")
    ls.add_argument("--output", help="model output to search (default: all)")
    ls.add_argument("--status", default="tagged", choices=("tagged", "pending", "error", "deleted", "any"),
                    help="tracks with this status, or any (default tagged)")
    ls.add_argument("--no-music", action="store_true",
                    help="only the tracks the model's music detector called no music (talk, silence, noise)")
    ls.add_argument("--limit", type=_non_negative_int, default=0, help="at most this many rows (default 0: all)")
    ls.add_argument("--json", action="store_true", help="one JSON object per row")
    show = lsub.add_parser("show", help="one track with all its genres and per-view results")
    show.add_argument("track", help="path or id")
    m3u = lsub.add_parser("export-m3u", help="write an extended M3U playlist of the tracks with a genre")
    m3u.add_argument("genre", help="the label whose tracks to list (case-insensitive)")
    m3u.add_argument("out", help="playlist file to write")
    m3u.add_argument("--min-score", type=_fraction, default=0.6,
                     help="minimum probability, 0..1 or a percentage (default 0.6)")
    m3u.add_argument("--output", help="model output (default: any)")
    export_csv = lsub.add_parser("export-csv", help="write every tagged track's genres as CSV")
    export_csv.add_argument("out", help="CSV file to write ('-' for stdout)")
    restore = lsub.add_parser("restore-tags", help="put back the genre tags files had before genre-tagger wrote them "
                                                   "(and drop the writes the daemon still owes for those files)")
    restore.add_argument("paths", nargs="*", metavar="PATH", help="only files at or under these paths (default: all)")
    restore.add_argument("--run", metavar="ID|last",
                         help="undo this run of tag writes and the later ones (default: every run)")
    restore.add_argument("--dry-run", action="store_true", help="print before → after, write nothing")
    restore.add_argument("--force", action="store_true",
                         help="also restore files whose genres someone changed after genre-tagger wrote them")
    retry = lsub.add_parser("retry-owed", help="make now the genre writes into files the daemon owes (after you "
                                               "freed the disk or closed the program that held a file), under the "
                                               "daemon's [tags] settings")
    retry.add_argument("paths", nargs="*", metavar="PATH", help="only files at or under these paths (default: all)")
    retry.add_argument("--failed", action="store_true",
                       help="also the writes that failed for good (a read-only file you made writable)")
    retry.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: on on a terminal)")
    imp = lsub.add_parser("import", help="merge the Parquet shards of `genre-tagger batch` into the library")
    imp.add_argument("shards", metavar="DIR", help="the folder `batch --out` wrote")
    retag = lsub.add_parser("retag", help="tag again the tracks an older model (or another one) tagged, and "
                                          "rewrite the genres genre-tagger wrote into their files")
    retag.add_argument("--outdated", action="store_true", required=True,
                       help="the tracks whose model or model version is not the current model's")
    retag.add_argument("--model", "-m", help="the current model (default: the daemon's)")
    retag.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                       help="where to run the model (default: auto = CUDA when it works, else CPU)")
    retag.add_argument("--write-tags", action="store_true",
                       help="also write genres into files genre-tagger has not written before (under --policy)")
    retag.add_argument("--policy", choices=("if-empty", "merge", "replace"), default=None,
                       help="with --write-tags, for files never written before (default if-empty); files written "
                            "before keep the policy they were written with")
    retag.add_argument("--limit", type=_non_negative_int, default=0,
                       help="stop after this many tracks (default 0: all)")
    retag.add_argument("--dry-run", action="store_true", help="list the outdated tracks, change nothing")
    retag.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: on on a terminal)")
    library.set_defaults(func=cmd_library)

    bench = sub.add_parser("bench", help="benchmark decode, front end, tagging (fast and naive), live and daemon")
    bench.add_argument("folders", nargs="*", default=[DEFAULT_BENCH_FOLDER], metavar="FOLDER",
                       help=f"audio to run on, one folder or several (default {DEFAULT_BENCH_FOLDER}, from the "
                            "repository)")
    bench.add_argument("--model", "-m", help="model name or .onnx path (default: the shipped default model)")
    bench.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                       help="where to run the model (default: auto = CUDA when it works, else CPU)")
    bench.add_argument("--live-seconds", type=_seconds, default=30.0,
                       help="seconds of audio played in real time for the live row (0 skips it)")
    bench.add_argument("--page-clients", type=_non_negative_int, default=50,
                       help="page clients of the HTTP display in the live + display row (default 50; 0 skips it)")
    bench.add_argument("--no-daemon", action="store_true", help="skip the daemon end-to-end row")
    bench.add_argument("--repeat", type=_positive_int, default=3,
                       help="runs of each file row, interleaved file by file; each file's fastest counts (default 3)")
    bench.add_argument("--jobs", default="1,2,N", metavar="LIST",
                       help="job counts for the `tag --jobs` rows, N = the default (one per core); '' skips them "
                            "(default 1,2,N)")
    bench.add_argument("--only", choices=("jobs", "daemon"),
                       help="only the `tag --jobs` rows (jobs), or only the daemon rows per job count, live "
                            "latency while its slots tag files included (daemon)")
    bench.add_argument("--out", default="bench-results/bench.json",
                       help="JSON report (default bench-results/bench.json)")
    bench.set_defaults(func=cmd_bench)

    batch = sub.add_parser("batch", help="tag a catalogue (folder or manifest) into Parquet shards, resumably; "
                                         "local processes, or a Ray cluster with --ray",
                           description="Tag every path of SOURCE (a folder, or a .csv/.jsonl/.parquet/.txt manifest "
                                       "of paths) into Parquet shards in --out; a re-run skips what is done. "
                                       "`genre-tagger library import DIR` merges them into the library.")
    batch.add_argument("source", metavar="SOURCE", help="a folder, or a manifest of paths")
    batch.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the Parquet shards")
    batch.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run on Ray: 'auto' (the cluster this machine belongs to), 'local' (start one here) "
                            "or ray://HOST:PORT; needs the cluster extra")
    batch.add_argument("--actors", type=_non_negative_int, default=0,
                       help="with --ray: model actors (default: one per GPU, else one per 4 CPUs, at least 1)")
    batch.add_argument("--shard-rows", type=_positive_int, default=500, help="tracks per Parquet shard (default 500)")
    add_engine_arguments(batch)
    add_jobs_argument(batch)
    add_coverage_argument(batch)
    batch.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: on a terminal)")
    batch.set_defaults(func=cmd_batch)

    coverage = sub.add_parser("bench-coverage", help="excerpts against full coverage: agreement, max |Δp|, speed")
    coverage.add_argument("folders", nargs="+", metavar="DIR", help="audio folders (a labels.csv is used if present)")
    coverage.add_argument("--coverages", default=",".join(DEFAULT_COVERAGES), metavar="LIST",
                          help=f"excerpt settings compared with full coverage (default {','.join(DEFAULT_COVERAGES)})")
    coverage.add_argument("--model", "-m", help="model name or .onnx path (default: the shipped default model)")
    coverage.add_argument("--out", default="bench-results/coverage.json",
                          help="JSON report (default bench-results/coverage.json)")
    coverage.set_defaults(func=cmd_bench_coverage)


def _non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def _seconds(text: str) -> float:
    """A duration in seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a number of seconds") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more seconds")
    return value


def _exit_cleanly(signum: int, frame) -> None:
    raise SystemExit(0)


def example_config() -> str:
    """The commented example configuration shipped with the package (``service/genre-tagger.toml``)."""
    from importlib import resources

    return resources.files("service").joinpath("genre-tagger.toml").read_text(encoding="utf-8")


# The daemon's own flags, by the setting each overrides: a bad value's error names the flag typed.
DAEMON_FLAGS = {"daemon.jobs": "--jobs", "daemon.model": "--model", "daemon.device": "--device",
                "daemon.library": "--library", "daemon.state_dir": "--state-dir", "folders.settle_seconds": "--settle",
                "tagging.coverage": "--coverage", "live.source": "--source", "live.horizon_seconds": "--horizon",
                "live.file": "--live-file"}


def daemon_config(args: argparse.Namespace):
    """The daemon's settings: the config file, the environment, then the flags in ``args``."""
    from service.config import load_config
    from service.sinks import sink_classes

    overrides = {
        "daemon": {"jobs": args.jobs,
                   "model": args.model, "device": args.device, "library": args.library, "state_dir": args.state_dir},
        "folders": {"settle_seconds": args.settle},
        "tagging": {"coverage": args.coverage},
        "live": {"source": args.source, "horizon_seconds": args.horizon, "file": args.live_file,
                 "file_loop": args.loop},
        **{name: sink.overrides(args) for name, sink in sink_classes().items()},
    }
    if args.live is not None:
        # A bare --live keeps the config's [live] device (the live unit sets "pulse" there): only a named
        # one overrides it.
        overrides["live"].update(enabled=True, device=args.live or None)
    config = load_config(args.config, overrides=overrides, extra_roots=args.folders or [], flags=DAEMON_FLAGS)
    # Flags that only qualify another setting would be ignored silently without it.
    if args.tag_policy and not config.section("tags").write:
        raise ConfigError(f"--tag-policy {args.tag_policy}: only applies with --write-tags (or [tags] write = true)")
    if args.loop and not config.live.file:
        raise ConfigError("--loop: only applies with --live-file (or [live] file)")
    return config


def cmd_daemon(args: argparse.Namespace) -> int:
    import signal

    if args.print_config:
        sys.stdout.write(example_config())
        return EXIT_OK
    # A stop request while the model loads ends the process cleanly too; Daemon.run takes over after.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    from service.daemon import Daemon

    config = daemon_config(args)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return Daemon(config).run()


def cmd_bench(args: argparse.Namespace) -> int:
    from service.bench import print_report, run_bench

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print_report(run_bench(args.folders, args.model, args.device, args.live_seconds, out, args.no_daemon,
                           args.repeat, _job_counts(args.jobs), args.page_clients, args.only))
    print(f"report: {out}")
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    from service.batch import run_batch
    from tagger.parallel import default_jobs

    arguments = {"model": args.model, "engine_options": engine_options(args), "coverage": args.coverage}
    summary = run_batch(args.source, args.out, arguments, args.jobs or default_jobs(), args.ray,
                        max(1, args.shard_rows),
                        args.progress if args.progress is not None else sys.stderr.isatty(),
                        {"actors": args.actors} if args.ray else None)
    print(f"{summary.tagged} tagged, {summary.errors} failed, {summary.skipped} already done of {summary.total} "
          f"in {summary.seconds:.1f} s; {summary.shards} new shard{'s' if summary.shards != 1 else ''} in {args.out}",
          file=sys.stderr)
    return EXIT_SOME_FAILED if summary.errors else EXIT_OK


def cmd_bench_coverage(args: argparse.Namespace) -> int:
    from service.bench_coverage import main

    return main(args.folders, [c for c in args.coverages.split(",") if c.strip()], Path(args.out), args.model)


def _job_counts(text: str) -> list[int]:
    """'1,2,N' → [1, 2, default jobs], in order, without repeats."""
    from tagger.parallel import default_jobs

    counts: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            n = default_jobs() if item.upper() == "N" else int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--jobs {text!r}: {item!r} is not a number or N") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"--jobs {text!r}: {item} must be at least 1")
        if n not in counts:
            counts.append(n)
    return counts


def _library_path(args: argparse.Namespace) -> Path:
    if args.library:
        return Path(args.library).expanduser()
    from service.config import load_config

    return load_config(args.config, validate=False).library_path


def cmd_library(args: argparse.Namespace) -> int:
    from service.library import Library

    if args.library_command == "retag" and args.policy and not args.write_tags:
        # Ignored, the user would believe files were written under it.
        print(f"genre-tagger: error: --policy {args.policy}: only applies with --write-tags", file=sys.stderr)
        return EXIT_USAGE
    path = _library_path(args)
    if not path.is_file() and args.library_command != "import":
        reason = "a folder, not a library file" if path.is_dir() else "no library (has the daemon run?)"
        print(f"genre-tagger: error: {path}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    # Queries never write, so a read-only file or folder is fine for them; restore-tags and retag write.
    library = Library(path, readonly=args.library_command not in _WRITING_COMMANDS)
    try:
        return _LIBRARY_COMMANDS[args.library_command](library, args)
    finally:
        library.close()


def _stats(library, args) -> int:
    from service.library import SCHEMA_VERSION

    stats = library.stats()
    if args.json:
        print(json.dumps(stats, indent=1))
        return EXIT_OK
    print(f"library {stats['path']} (schema {stats['schema_version']}"
          + (f"; upgraded to {SCHEMA_VERSION} when the daemon or a writing command opens it"
             if stats["schema_version"] < SCHEMA_VERSION else "") + ")")
    print("  " + ", ".join(f"{n} {status}" for status, n in stats["tracks"].items()))
    music = stats["music"]
    print(f"  tagged: {music['music']} music, {music['no_music']} no music"
          + (f", {music['unknown']} without a music detector" if music["unknown"] else ""))
    level = stats["level"]
    if level["raised"]:
        one = level["raised"] == 1
        print(f"  {level['raised']} file{'' if one else 's'} quieter than {'its' if one else 'their'} model's level "
              "floor: analysed raised to it")
    if level["unknown"]:
        print(f"  {level['unknown']} file{'' if level['unknown'] == 1 else 's'} tagged before levels were kept: "
              "level unknown")
    writes = stats["tag_writes"]
    if writes["files"]:
        print(f"  genres written into {writes['files']} files' tags by {writes['runs']} runs "
              "(`library restore-tags` undoes them)")
    if writes["owed"]:
        print(f"  {writes['owed']} genre writes into files owed (the daemon makes them while [tags] write is on; "
              "`library retry-owed` makes them now)")
    if writes["failed"]:
        print(f"  {writes['failed']} genre writes into files failed for good (`library show PATH` says why; "
              "the daemon's [tagging] retry_errors tries them again, `library retry-owed --failed` now)")
    for output, labels in stats["top_genres"].items():
        total = sum(labels.values())
        print(f"  {output}: top genre of {total} tracks")
        for label, n in labels.items():
            print(f"    {label:20s} {bar(n / total, 30)} {n}")
    return EXIT_OK


def _list(library, args) -> int:
    from service.library import printable

    status = None if args.status == "any" else args.status
    printed = False
    rows = library.search(args.genre, args.min_score or 0.0, args.output, status, args.limit or None,
                          music=False if args.no_music else None, decided=_decided_only(args))
    shown: set[int] = set()
    for r in rows:
        if args.json:
            print(json.dumps(r))
        elif r["status"] == "error":
            print(f"{printable(r['path'])}\terror: {r['error']}")
        elif r["music"] is False:
            if r["id"] in shown:  # one line per track, not per output
                continue
            shown.add(r["id"])
            sure = "" if r["music_probability"] is None else f" {100 * (1 - r['music_probability']):.0f} %"
            print(f"{printable(r['path'])}\t\t{NO_MUSIC}{sure}")
        else:
            score = f"{r['label']} {100 * r['score']:.0f} %" if r["label"] else r["status"]
            print(f"{printable(r['path'])}\t{r['output'] or ''}\t{score}")
        printed = True
    if not printed:
        print(f"genre-tagger: {_no_match(library, args)}", file=sys.stderr)
    return EXIT_OK


def _decided_only(args) -> bool:
    """``list --genre X`` without ``--min-score``: the tracks where X was decided, not every stored score
    (a track at 1 % jazz is not a jazz track)."""
    return args.genre is not None and args.min_score is None


def _no_match(library, args) -> str:
    """Why ``library list`` found nothing, in the words of the options given."""
    where = "" if args.status == "any" else f" ({args.status} tracks)"
    if args.genre:
        labels = [row[0] for row in library.db.execute("SELECT DISTINCT label FROM genres ORDER BY label")]
        if args.genre.lower() not in {label.lower() for label in labels}:
            known = ", ".join(labels) if labels else "none yet"
            return f"no track has the genre {args.genre!r}{where} (genres in the library: {known})"
        if _decided_only(args):
            return f"no track has {args.genre} decided{where} (--min-score 0 lists every stored score)"
        floor = f" at {100 * args.min_score:.0f} % or more" if args.min_score else ""
        return f"no track has {args.genre}{floor}{where}"
    if args.no_music:
        return f"no track was found to be without music{where}"
    return f"no tracks{where}"


def _show(library, args) -> int:
    # Paths are stored absolute: a relative or ~ path names the same file from here.
    typed = os.path.expanduser(args.track)
    for candidate in dict.fromkeys((args.track, os.path.abspath(typed), os.path.realpath(typed))):
        track = library.track(candidate)
        if track is not None:
            break
    if track is None:
        print(f"genre-tagger: error: no track {args.track!r} in the library", file=sys.stderr)
        return EXIT_SOME_FAILED
    print(json.dumps(track, indent=1))
    return EXIT_OK


def _open_output(path: str, **options) -> TextIO:
    """``path`` opened for writing, or a one-line error naming it (a missing folder, a folder, no permission)."""
    try:
        return open(path, "w", **options)  # the caller closes it
    except OSError as exc:
        raise TaggerError(f"{path}: cannot write ({exc.strerror})") from None


def _export_m3u(library, args) -> int:
    rows = list(library.search(args.genre, args.min_score, args.output))
    if not rows and not library.db.execute("SELECT 1 FROM genres WHERE lower(label) = lower(?) LIMIT 1",
                                           [args.genre]).fetchone():
        labels = [row[0] for row in library.db.execute("SELECT DISTINCT label FROM genres ORDER BY label")]
        raise TaggerError(f"{args.genre}: no track has this genre (genres in the library: "
                          f"{', '.join(labels) if labels else 'none yet'})")
    seen: set[str] = set()
    with _open_output(args.out, encoding="utf-8", errors="surrogateescape") as f:  # paths byte for byte
        f.write("#EXTM3U\n")
        for r in rows:
            if r["path"] in seen:
                continue
            seen.add(r["path"])
            f.write(f"#EXTINF:{round(r['duration_s'] or -1)},{Path(r['path']).stem} [{r['label']} "
                    f"{100 * r['score']:.0f} %]\n{r['path']}\n")
    print(f"wrote {len(seen)} tracks to {args.out}", file=sys.stderr)
    return EXIT_OK


def _export_csv(library, args) -> int:
    from service.library import fs_path

    out = sys.stdout if args.out == "-" else _open_output(args.out, newline="", encoding="utf-8",
                                                          errors="surrogateescape")
    try:
        writer = csv.writer(out)
        writer.writerow(["path", "duration_s", "model", "model_version", "tagged_at", "output", "rank", "label",
                         "score", "decided"])
        for row in library.db.execute(
                "SELECT t.path, t.duration_s, t.model, t.model_version, t.tagged_at, g.output, g.rank, g.label, "
                "g.score, g.decided FROM tracks t JOIN genres g ON g.track_id = t.id WHERE t.status = 'tagged' "
                "ORDER BY t.path, g.output, g.rank"):
            writer.writerow((fs_path(row[0]), *row[1:]))
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def _library_paths(typed: list[str]) -> list[str] | None:
    """PATH arguments as the library may hold them: absolute, and by their real path too (the daemon keeps its
    folders' real paths: ~/Music, a symlink to /mnt/music, names the files it knows as /mnt/music/...). None, after
    a one-line error naming it, for a PATH that does not exist (a typo would otherwise match nothing, quietly)."""
    paths: list[str] = []
    for p in typed:
        path = Path(p).expanduser()
        if not path.exists():
            print(f"genre-tagger: error: {p}: no such file or folder", file=sys.stderr)
            return None
        paths += [str(path.absolute()), os.path.realpath(path)]
    return list(dict.fromkeys(paths))


def _restore_tags(library, args) -> int:
    from service import tagwriter
    from service.tagwriter import BUSY, FAILED, SKIPPED, restore_tags, waiting_line

    run_id = None
    if args.run == "last":
        run_id = library.last_tag_run()
        if run_id is None:
            print("genre-tagger: no tag writes to undo", file=sys.stderr)
            return EXIT_OK
    elif args.run is not None:
        if not args.run.isdigit():
            print(f"genre-tagger: error: --run {args.run}: not a run id or 'last'", file=sys.stderr)
            return EXIT_USAGE
        run_id = int(args.run)
        first, last = library.db.execute("SELECT min(id), max(id) FROM tag_runs").fetchone()
        if library.db.execute("SELECT 1 FROM tag_runs WHERE id = ?", [run_id]).fetchone() is None:
            known = f"runs {first}..{last}" if first is not None else "no tag writes yet"
            print(f"genre-tagger: error: --run {args.run}: no such run of tag writes ({known})", file=sys.stderr)
            return EXIT_USAGE
    paths = _library_paths(args.paths)
    if paths is None:
        return EXIT_USAGE
    outcomes = restore_tags(library, run_id, paths, args.dry_run, args.force, tagwriter.CLAIM_WAIT_S,
                            lambda path, pid: print(waiting_line(path, pid), file=sys.stderr, flush=True))
    if not outcomes:
        print("genre-tagger: no tag writes to undo" + (f" under {', '.join(args.paths)}" if paths else ""),
              file=sys.stderr)
        return EXIT_OK
    for o in outcomes:
        print(o.line(), file=sys.stderr if o.action in (FAILED, SKIPPED, BUSY) else sys.stdout)
    failed = sum(o.action in (FAILED, SKIPPED, BUSY) for o in outcomes)
    dropped = sum(o.owed_dropped for o in outcomes)
    print(f"genre-tagger: {len(outcomes) - failed} of {len(outcomes)} files restored or already so"
          + (" (dry run)" if args.dry_run else "")
          + (f"; {dropped} genre writes the daemon still owed for them dropped (they would have written "
             "genre-tagger's genres back)" if dropped else ""), file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _low_priority() -> None:
    """Background work: the lowest CPU priority, and the idle I/O class where ionice exists."""
    import contextlib
    import os
    import shutil
    import subprocess

    with contextlib.suppress(OSError):
        os.nice(19)
    if shutil.which("ionice"):
        subprocess.run(["ionice", "-c", "3", "-p", str(os.getpid())], capture_output=True, check=False)


def _retag(library, args) -> int:
    import dataclasses

    from tqdm import tqdm

    from service import tagwriter
    from service.config import load_config
    from service.library import OWED_ATTEMPTS, fingerprint
    from service.sinks.tags import retry_delay
    from service.tagwriter import (
        BUSY,
        FAILED,
        QUEUED,
        SKIPPED,
        WRITTEN,
        TagWriter,
        WriteSettings,
        waiting_line,
        write_owed,
    )
    from tagger.engine import EngineOptions
    from tagger.errors import TaggerError
    from tagger.filetags import TagWriteError
    from tagger.pipeline import Tagger

    config = load_config(args.config, validate=False)
    tagger = Tagger(args.model or config.daemon.model or None, threshold=config.tagging.threshold,
                    top_k=config.tagging.top_k, hop_fraction=config.tagging.hop or None,
                    engine_options=EngineOptions(device=args.device), coverage=config.tagging.coverage)
    name, version = tagger.manifest.name, tagger.manifest.version
    if args.dry_run:
        rows = library.outdated(name, version)
        for path, model, model_version in rows:
            print(f"{path}\t{model} {model_version} → {name} {version}")
        print(f"genre-tagger: {len(rows)} tracks are outdated (dry run)", file=sys.stderr)
        return EXIT_OK
    queued = library.queue_outdated(name, version)
    remaining = library.queued_below(0)
    total = min(remaining, args.limit) if args.limit else remaining
    print(f"genre-tagger: {queued} tracks newly queued, {total} to re-tag with {name} {version}", file=sys.stderr)
    _low_priority()
    writer = TagWriter(library, WriteSettings(args.policy or "if-empty", threshold=config.tagging.threshold),
                       "library retag",
                       [o.name for o in tagger.manifest.outputs])
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    done = failed = written = 0
    skip: set[int] = set()

    def file_settings(track_id: int) -> WriteSettings | None:
        """A file's write settings: its last write's, never below this run's threshold (a lower one would write
        genres the library calls uncertain); this run's with --write-tags for a file never written; None: not
        to be written."""
        last = library.last_tag_write(track_id)
        if last is None:
            return writer.settings if args.write_tags else None
        settings = WriteSettings.from_dict(last["settings"])
        return dataclasses.replace(settings, threshold=max(settings.threshold, writer.settings.threshold))

    def report(outcome) -> None:
        stream = sys.stderr if outcome.action in (FAILED, SKIPPED, QUEUED, BUSY) else sys.stdout
        print(outcome.line(), file=stream, flush=True)

    attempts = getattr(config.section("tags"), "write_attempts", None) or OWED_ATTEMPTS
    retry_seconds = getattr(config.section("tags"), "retry_seconds", None) or 60.0

    def make_owed(owed, settings):
        """An owed write, after the daemon's if it is writing this file now (the two share the library's claims)."""
        def waiting(pid: int) -> None:
            print(waiting_line(owed.path, pid), file=sys.stderr, flush=True)

        # A failure is tried again when the daemon would have (the time kept in the library, for it to keep to).
        return write_owed(library, writer, owed, settings, attempts, tagwriter.CLAIM_WAIT_S, waiting,
                          lambda failures: retry_delay(retry_seconds, failures))

    # Writes an earlier run owed and did not make (Ctrl-C or a crash between a result and its write): made
    # first, from the stored results, so resuming loses none (daemon-owed writes of files never written
    # before are left to the daemon unless --write-tags).
    after = 0
    while owed_batch := library.owed_writes(after, None, 100):
        for owed in owed_batch:
            after = owed.id
            settings = file_settings(owed.track_id)
            if settings is None:
                continue
            outcome, _ = make_owed(owed, settings)
            if outcome is not None:
                written += outcome.action == WRITTEN
                report(outcome)
    with tqdm(total=total, unit="track", disable=not show_progress, file=sys.stderr, dynamic_ncols=True) as bar:
        while not args.limit or done + failed < args.limit:
            row = library.next_pending(skip, below_priority=0)
            if row is None:
                break
            path = Path(row.path)
            try:
                result = tagger.tag_file(path)
                current = fingerprint(path)
            except (TaggerError, OSError) as exc:
                failed += 1
                library.record_error(row.id, str(exc))
                bar.write(f"genre-tagger: error: {exc}", file=sys.stderr)
                bar.update(1)
                continue
            # Each file under its last write's settings (file_settings); a write owed is stored with the result.
            settings = file_settings(row.id)
            try:
                owe = settings is not None and bool(writer.genres(result.outputs, result.music, settings))
            except TagWriteError:
                owe = False
            if current != row.fingerprint or not library.record_result(row.id, result, current, owe_tags=owe):
                skip.add(row.id)  # changed meanwhile: the daemon (or the next run) tags its new content
                bar.update(1)
                continue
            done += 1
            if settings is not None:
                owed = library.owed_write(row.id) if owe else None
                if owed is not None:
                    outcome, _ = make_owed(owed, settings)
                else:  # nothing to write (uncertain, not music): said so
                    outcome = writer.write(row.id, path, result.outputs, name, version, current, result.music,
                                           settings)
                if outcome is not None:
                    written += outcome.action == WRITTEN
                    bar.write(outcome.line(), file=sys.stderr if outcome.action in (FAILED, SKIPPED, QUEUED, BUSY)
                              else sys.stdout)
            bar.update(1)
    left = library.queued_below(0)
    print(f"genre-tagger: {done} re-tagged, {written} files' tags rewritten, {failed} failed, {left} left "
          "(run again to resume)" if left else
          f"genre-tagger: {done} re-tagged, {written} files' tags rewritten, {failed} failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# retry-owed's count of writes whose stored result could not be written from (the [tags] outputs name one it lacks,
# or it cannot be read): the file is tagged again and the new result written; said only when it happened.
REQUEUED = "queued to be tagged again (the daemon writes its new result)"


def _retry_owed(library, args) -> int:
    """``library retry-owed``: every owed write (under PATHs) tried now, each under its file's claim."""
    from tqdm import tqdm

    from service import tagwriter
    from service.config import load_config
    from service.library import under
    from service.sinks.tags import TagsSection
    from service.tagwriter import BUSY, FAILED, QUEUED, SKIPPED, WRITTEN, TagWriter, waiting_line, write_owed

    config = load_config(args.config, validate=False)
    section = config.section("tags") or TagsSection()
    try:  # the daemon's [tags] settings, checked as the daemon checks them
        section.validate("tags")
        section.validate_with("tags", config)
    except ConfigError as exc:
        raise TaggerError(config.error_line([str(exc).removeprefix("config ")])) from None
    writer = TagWriter(library, section.write_settings(config.tagging.threshold), "library retry-owed")
    paths = _library_paths(args.paths)
    if paths is None:
        return EXIT_USAGE
    todo = [(i, path) for i, path in library.owed_paths(failed=args.failed) if not paths or under(path, paths)]
    left_failed = 0 if args.failed else len([1 for _, path in library.owed_paths(failed=True)
                                             if not paths or under(path, paths)]) - len(todo)
    if not todo:
        print("genre-tagger: no genre writes owed" + (f" under {', '.join(args.paths)}" if paths else "")
              + (f" ({left_failed} failed for good: --failed tries them too)" if left_failed else ""),
              file=sys.stderr)
        return EXIT_OK
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    counts = {"written": 0, "nothing to write": 0, "failed": 0, "busy": 0}
    with tqdm(total=len(todo), unit="file", disable=not show_progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for owed_id, path in todo:
            found = library.owed_writes(owed_id - 1, owed_id, 1, failed=True)
            outcome = None
            if found:
                def waiting(pid: int, p: str | None = path) -> None:
                    bar.write(waiting_line(p, pid), file=sys.stderr)

                outcome, _ = write_owed(library, writer, found[0], None, section.write_attempts,
                                        tagwriter.CLAIM_WAIT_S, waiting, asked=True)
            if outcome is None or outcome.action not in (WRITTEN, FAILED, SKIPPED, BUSY, QUEUED):
                key = "nothing to write"  # made meanwhile, the file changed, or already so
            else:
                key = {WRITTEN: "written", BUSY: "busy", QUEUED: REQUEUED}.get(outcome.action, "failed")
            counts[key] = counts.get(key, 0) + 1
            if outcome is not None:
                bar.write(outcome.line(), file=sys.stderr if outcome.action in (FAILED, SKIPPED, QUEUED, BUSY)
                          else sys.stdout)
            bar.update(1)
    print(f"genre-tagger: {len(todo)} owed genre writes tried: " + ", ".join(f"{n} {k}" for k, n in counts.items())
          + (f"; {left_failed} failed for good not tried (--failed tries them too)" if left_failed else ""),
          file=sys.stderr)
    return EXIT_SOME_FAILED if counts["failed"] or counts["busy"] else EXIT_OK


_WRITING_COMMANDS = frozenset(("restore-tags", "retag", "import", "retry-owed"))


def _import(library, args) -> int:
    from service.batch import import_shards

    shards = Path(args.shards).expanduser()
    counts = import_shards(library, shards)
    print(f"imported {counts['tagged']} tagged and {counts['error']} failed tracks from {shards} "
          f"({counts['unchanged']} already in the library)", file=sys.stderr)
    return EXIT_OK


_LIBRARY_COMMANDS = {"stats": _stats, "list": _list, "show": _show, "export-m3u": _export_m3u,
                     "export-csv": _export_csv, "restore-tags": _restore_tags, "retag": _retag, "import": _import,
                     "retry-owed": _retry_owed}


def tag_and_write(args: argparse.Namespace, files: list[Path], aliases: dict[str, str]) -> int:
    """``genre-tagger tag --write-tags``: tag the files (``--jobs`` at once), record each in the library,
    write its genres. A file whose content changes between the start and its write is left alone."""
    from tqdm import tqdm

    from service.config import load_config
    from service.library import Library, fingerprint
    from service.tagwriter import BUSY, FAILED, SKIPPED, TagWriter, WriteSettings
    from tagger.cli import engine_options
    from tagger.parallel import default_jobs, engine_options_for_jobs, tag_files
    from tagger.pipeline import Tagger

    jobs = min(args.jobs or default_jobs(), len(files))
    # The library keeps the model's own labels (as the daemon's does); aliases apply to what is written.
    tagger = Tagger(args.model, threshold=args.threshold, top_k=args.top_k, hop_fraction=args.hop,
                    engine_options=engine_options_for_jobs(engine_options(args), jobs), coverage=args.coverage)
    path = Path(args.library).expanduser() if args.library else load_config(validate=False).library_path
    # A dry run changes nothing, not even a library that does not exist yet.
    library = None if args.dry_run and not path.is_file() else Library(path)
    failed = 0
    try:
        settings = WriteSettings(args.policy or "if-empty", tuple(args.tag_output), args.threshold, aliases,
                                 dry_run=args.dry_run)
        command = "tag --write-tags " + " ".join(str(f) for f in args.inputs)
        writer = TagWriter(library, settings, command, [o.name for o in tagger.manifest.outputs])
        show_progress = args.progress if args.progress is not None else (len(files) > 1 and sys.stderr.isatty())
        readable: dict[Path, tuple[os.stat_result, str]] = {}
        with tqdm(total=len(files), unit="file", disable=not show_progress, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for file in files:
                if isinstance(file, str):  # a URL (tagger.cli.iter_audio_files): nothing to write tags into
                    failed += 1
                    bar.write(f"genre-tagger: error: {file}: tags are written to local files only, not to a URL",
                              file=sys.stderr)
                    bar.update(1)
                    continue
                file = file.expanduser().absolute()
                try:  # what each file is before it is tagged: its write must find it so
                    st = file.stat()
                    readable[file] = (st, fingerprint(file, st.st_size))
                except OSError as exc:
                    failed += 1
                    bar.write(f"genre-tagger: error: {file}: {exc.strerror or exc}", file=sys.stderr)
                    bar.update(1)
            for outcome in tag_files(tagger, list(readable), jobs):
                file, result = outcome.path, outcome.result
                bar.set_postfix_str(file.name[-30:], refresh=False)
                if result is None:
                    failed += 1
                    bar.write(f"genre-tagger: error: {outcome.error}", file=sys.stderr)
                    bar.update(1)
                    continue
                st, before_fp = readable[file]
                if library is not None:
                    # The library's own name for the file (the daemon's, by its folder's real path, where FILE came
                    # through a symlink): its row is the one the daemon claims, and no second row is made for it.
                    try:
                        known = library.rows_of_file(file, before_fp)
                    except OSError:  # gone since it was read: the write says so
                        known = []
                    file = Path(known[0].path) if known else file
                if library is None:
                    track_id = None
                elif args.dry_run:
                    track_id = known[0].id if known else None
                else:
                    track_id = library.record_file_result(file, result, st.st_size, st.st_mtime, before_fp)
                if library is None or track_id is None or args.dry_run:  # nothing written: nothing to coordinate
                    written = writer.write(track_id, file, result.outputs, result.model, result.model_version,
                                           before_fp, result.music)
                else:
                    written = _write_claimed(library, writer, track_id, file, result, before_fp,
                                             lambda line: bar.write(line, file=sys.stderr))
                if written.action in (FAILED, SKIPPED, BUSY):
                    failed += 1
                if args.json:
                    print(json.dumps({**result.as_dict(args.top_k), "tags": written.as_dict()}), flush=True)
                else:
                    bar.write(written.line(),
                              file=sys.stderr if written.action in (FAILED, SKIPPED, BUSY) else sys.stdout)
                bar.update(1)
    finally:
        if library is not None:
            library.close()
    if failed and len(files) > 1:
        print(f"genre-tagger: {failed} of {len(files)} files failed or were skipped", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _write_claimed(library: Library, writer: TagWriter, track_id: int, file: Path, result: TrackResult, before_fp: str,
                   say: Callable[[str], None]) -> Outcome:
    """``tag --write-tags``'s write of one file, under its claim in the library: the daemon (or a `library`
    command) writing this file now is waited for, up to ``tagwriter.CLAIM_WAIT_S`` (``say`` prints the one line
    that says so), never raced."""
    from service import tagwriter
    from service.tagwriter import under_claim, waiting_line

    return under_claim(library, track_id, file, tagwriter.CLAIM_WAIT_S, lambda pid: say(waiting_line(file, pid)),
                       "not written (run the command again)",
                       lambda: writer.write(track_id, file, result.outputs, result.model, result.model_version,
                                            before_fp, result.music))


NO_DAEMON_SECONDS = 3.0


def cmd_keys(args: argparse.Namespace) -> int:
    import zmq.auth

    folder = Path(args.folder).expanduser()
    for suffix in (".key", ".key_secret"):
        if (folder / f"{args.name}{suffix}").exists():
            print(f"genre-tagger: error: {folder / (args.name + suffix)}: already exists (not overwritten)",
                  file=sys.stderr)
            return EXIT_USAGE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Created unreadable by others from the start: chmod after the write leaves the secret readable until then.
        umask = os.umask(0o077)
        try:
            public, secret = zmq.auth.create_certificates(folder, args.name)
        finally:
            os.umask(umask)
        Path(secret).chmod(0o600)
        Path(public).chmod(0o644)  # the public key is meant to be copied to subscribers
    except OSError as exc:
        # mkdir's "File exists" for a file where the folder belongs (or in its path) says too little.
        reason = "not a folder" if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror or exc
        print(f"genre-tagger: error: {args.folder}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    print(f"public key  {public}  ({zmq.auth.load_certificate(public)[0].decode()})")
    print(f"secret key  {secret}  (keep it private)")
    return EXIT_OK


def listen_endpoint(given: str | None) -> str:
    """Where ``listen`` connects: as given, else where the daemon's environment says it publishes."""
    if given:
        return given
    endpoint = os.environ.get("GENRE_TAGGER_PUBLISH_ENDPOINT") or DEFAULT_LISTEN
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme == "tcp" and host in ("*", "0.0.0.0", "[::]"):  # bound on every address: connect to this machine
        return f"tcp://127.0.0.1:{port}"
    return endpoint


def _listen_socket(args: argparse.Namespace):
    import zmq

    from service.publish import check_endpoint, read_key

    args.endpoint = listen_endpoint(args.endpoint)
    try:
        check_endpoint(args.endpoint, "listen")
    except ConfigError as exc:
        raise TaggerError(str(exc)) from None
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if args.server_key or args.client_key:
        if not (args.server_key and args.client_key):
            raise TaggerError("--server-key and --client-key go together (the daemon's public key, and yours)")
        try:
            sock.curve_serverkey = read_key(args.server_key)
            sock.curve_secretkey = read_key(args.client_key, secret=True)
            sock.curve_publickey = read_key(args.client_key)
        except ConfigError as exc:
            raise TaggerError(f"--server-key/--client-key: {exc}") from None
    sock.connect(args.endpoint)
    return sock


def cmd_listen(args: argparse.Namespace) -> int:
    from service.publish import SCHEMA_ID

    sock = _listen_socket(args)
    topics = args.topic or [""]
    for topic in topics:
        sock.subscribe(topic.encode())
    # The daemon replays its latest status to a new subscriber at once: that is how we know it is there,
    # even when the topics asked for are quiet.
    wants_status = any("status".startswith(t) for t in topics)
    if not wants_status:
        sock.subscribe(b"status")
    started = time.monotonic()
    deadline = started + args.timeout if args.timeout else None
    received = 0
    heard = False
    warned = False
    last_seq: int | None = None
    shown: dict[str, float] = {}  # per topic, the ts of the newest message shown (replays may repeat it)
    gaps = 0
    interactive = sys.stdout.isatty() and not args.json
    try:
        while not args.count or received < args.count:
            wait_ms = 200 if deadline is None else max(0, int(1000 * (deadline - time.monotonic())))
            if deadline is not None and wait_ms == 0:
                break
            if not heard and not warned and time.monotonic() - started > NO_DAEMON_SECONDS:
                warned = True
                print(f"genre-tagger: no daemon answers at {args.endpoint} (nothing in {NO_DAEMON_SECONDS:.0f} s); "
                      "is `genre-tagger daemon` running and publishing there? Still waiting (Ctrl-C stops)",
                      file=sys.stderr, flush=True)
            if not sock.poll(min(wait_ms, 200)):
                continue
            topic_bytes, body = sock.recv_multipart()
            topic = topic_bytes.decode(errors="replace")
            message = json.loads(body)
            if not heard and warned:
                print(f"genre-tagger: connected to the daemon at {args.endpoint}", file=sys.stderr, flush=True)
            heard = True
            if message.get("schema") != SCHEMA_ID:
                print(f"genre-tagger: warning: unknown message schema {message.get('schema')!r}", file=sys.stderr)
            if message.get("replay"):
                if message.get("ts", 0) <= shown.get(topic, -1):
                    continue  # already shown when it was new
            else:
                seq = message.get("seq")
                if isinstance(seq, int) and last_seq is not None and seq > last_seq + 1 and not args.topic:
                    gaps += seq - last_seq - 1
                last_seq = seq if isinstance(seq, int) else last_seq
            shown[topic] = max(shown.get(topic, -1), message.get("ts", 0))
            if topic == "status" and not wants_status:
                continue
            received += 1
            if args.json:
                print(json.dumps({"topic": topic, **message}), flush=True)
            else:
                print(render_message(topic, message, interactive), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if gaps:
        print(f"genre-tagger: {gaps} messages were dropped before reaching this listener", file=sys.stderr)
    if not heard and deadline is not None:
        print(f"genre-tagger: no daemon answered at {args.endpoint} in {args.timeout:g} s", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _estimate_text(estimate: dict, music: bool = True) -> str:
    """'jazz (72 %)', 'uncertain: jazz / blues (56 %)' below the threshold, or 'no music (90 %)'."""
    confidence = f"({100 * estimate['confidence']:.0f} %)"
    if not music:
        return f"{NO_MUSIC} {confidence}"
    if estimate.get("uncertain"):
        candidates = estimate.get("candidates") or [estimate["top"]]
        return f"uncertain: {' / '.join(candidates)} {confidence}"
    return f"{estimate['top']} {confidence}"


def render_message(topic: str, message: dict, clear: bool = False) -> str:
    kind = message.get("type")
    music = message.get("music", True)
    if kind == "live":
        first = next(iter(message["ensemble"].values()), None)
        if first is None or not music:
            headline = f"{NO_MUSIC} ({100 * message['confidence']:.0f} %)" if not music else message["top"]
        else:
            headline = _estimate_text(first)
        lines = [f"{topic}  {message['stream_s']:.1f} s  → {headline}"
                 + (f"  latency {message['latency_ms']:.0f} ms" if "latency_ms" in message else "")]
        for est in message["ensemble"].values():
            lines.append(f"  {est['title']}")
            width = max(len(label) for label in est["scores"])
            for label, score in est["scores"].items():
                mark = "✔" if label in est.get("decided", ()) else " "
                lines.append(f"  {mark} {label.ljust(width)} {bar(score, 40)} {100 * score:5.1f} %")
        text = "\n".join(lines)
        return ("\x1b[H\x1b[2J" + text) if clear else text
    if kind == "genre_changed":
        current = message["current"] + (" (uncertain)" if message.get("uncertain") else "")
        previous = f"{message['previous']}" + (" (uncertain)" if message.get("previous_uncertain") else "")
        return f"{topic}  genre changed at {message['stream_s']:.1f} s: {previous} → {current}"
    if kind == "track":
        if not message["ok"]:
            return f"track  {message['path']}: error: {message['error']}"
        first = next(iter(message["outputs"].values()))
        return f"track  {message['path']}: {_estimate_text(first, music)}"
    if kind == "status":
        text = (f"status  up {message['uptime_s']:.0f} s, {message['queue_depth']} queued, {message['tagged']} tagged, "
                f"{message['errors']} errors, {message['provider']}, {message['dropped_messages']} dropped")
        for source, live in (message.get("live") or {}).items():
            if live.get("stalled_s") is not None:  # its device delivers no audio (the error says the same)
                text += f"; live {source} stalled (no audio for {live['stalled_s']:.0f} s)"
            else:
                state = "running" if live.get("running") else "stopped"
                text += f"; live {source} {state}" + (f" ({live['error']})" if live.get("error") else "")
            if live.get("hung_closes"):
                text += f", {live['hung_closes']} hung stream closes"
            # Quieter than the model's level floor: raised by the running floor (under 0.05 dB would read "0.0").
            if (live.get("gain_db") or 0.0) >= 0.05:
                text += f", raised {live['gain_db']:.1f} dB"
        if message.get("library"):  # the library cannot be written: locked by another process, disk full...
            text += f"; {message['library']}"
        return text
    return f"{topic}  {json.dumps(message)}"
