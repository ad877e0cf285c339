"""The ``genre-tagger`` command line.

Exit codes (every subcommand):
    0  success;
    1  some inputs failed (each has its own error line) but the rest were done;
    2  bad usage, or the model could not be loaded: nothing was done;
    130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from tagger import __version__
from tagger.chart import render_track
from tagger.engine import EngineOptions
from tagger.ensemble import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from tagger.errors import TaggerError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

AUDIO_EXTENSIONS = frozenset((
    ".mp3", ".mp2", ".flac", ".wav", ".wave", ".ogg", ".oga", ".opus", ".m4a", ".m4b", ".mp4", ".aac", ".aif",
    ".aiff", ".aifc", ".wma", ".mka", ".webm", ".wv", ".ape", ".mpc", ".alac", ".caf", ".ac3", ".dts", ".au", ".snd",
))


def iter_audio_files(inputs: Sequence[str]) -> Iterator[Path]:
    """Files named directly (whatever their extension), and audio files found under directories. A URL
    (``https://…``, :func:`tagger.decode.is_url`) is yielded as the string it is. A symlink named like an
    audio file that leads nowhere (dangling, a loop) is yielded too, so that it is an error line naming it
    rather than a file silently left out."""
    from tagger.decode import is_url

    for item in inputs:
        if is_url(item):
            yield item  # type: ignore[misc]  # FFmpeg opens it; a Path would fold its '//'
            continue
        path = Path(item)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if (found.suffix.lower() in AUDIO_EXTENSIONS and (found.is_file() or _broken_link(found))
                        and not any(part.startswith(".") for part in found.relative_to(path).parts)):
                    yield found
        else:
            yield path


def _broken_link(path: Path) -> bool:
    """A symlink whose target does not exist or loops (``is_file`` is False for it, as for a folder)."""
    return path.is_symlink() and not path.exists()


def _parse_aliases(items: Sequence[str]) -> dict[str, str]:
    aliases = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"alias {item!r} is not LABEL=NAME")
        label, name = item.split("=", 1)
        aliases[label.strip()] = name.strip()
    return aliases


def _load_alias_file(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TaggerError(f"{path}: cannot read alias file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise TaggerError(f"{path}: alias file must be a JSON object of label → name strings")
    return data


def _fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a number (give 0..1, or a percentage like 70%)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: not within 0..1 (or 0%..100%)")
    return value


def _hop(text: str) -> float:
    """A slice hop as a fraction of the window: above 0 (a hop of 0 never moves), at most 1."""
    value = _fraction(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0 (a fraction of the window, such as 0.5)")
    return value


def whole_number(text: str, minimum: int = 0) -> int:
    """An argparse type: a whole number, at least ``minimum`` (default 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text}: must be {'0 or more' if minimum == 0 else f'at least {minimum}'}")
    return value


def _positive_int(text: str) -> int:
    return whole_number(text, 1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line every other error is: the option and the words typed.

    A command group called without its command (``genre-tagger library``) shows its commands instead.
    """

    def error(self, message: str) -> NoReturn:
        missing = re.match(r"the following arguments are required: (\w+)_?command\b", message)
        if missing or message.startswith("the following arguments are required: command"):
            self.print_help(sys.stderr)
            self.exit(EXIT_USAGE)
        # argparse says "argument --threshold: invalid _fraction value: 'abc'" when a type function raises
        # ValueError: our type functions raise ArgumentTypeError with the words typed instead.
        self.exit(EXIT_USAGE, f"genre-tagger: error: {message} (see {self.prog} --help)\n")


def check_aliases(aliases: dict[str, str], labels: Sequence[str], given: dict[str, str]) -> None:
    """Every aliased label must be one the model has: a typo would otherwise be ignored silently.

    ``given`` maps each label to how the user gave it (``--alias hiphop=Hip-Hop`` or the alias file).
    """
    for label in aliases:
        if label not in labels:
            raise TaggerError(f"{given.get(label, label)}: the model has no label {label!r} "
                              f"(its labels: {', '.join(labels)})")


def _threads(text: str) -> int:
    # A typo like 100000 would hang creating threads; more than a few per core never helps.
    import os

    limit = max(64, 4 * (os.cpu_count() or 1))
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None
    if not 0 <= value <= limit:
        raise argparse.ArgumentTypeError(f"{text}: must be within 0..{limit} (0 = one per usable core; "
                                         f"this machine has {os.cpu_count()})")
    return value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="model name or .onnx path (default: the shipped default model)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where to run the model (default: auto = CUDA when it works, else CPU)")
    parser.add_argument("--threads", type=_threads, default=0,
                        help="ONNX Runtime intra-op threads (default: 0 = one per usable core)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="slices per inference call (default 32)")


def add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", "-j", type=_positive_int, default=None,
                        help="files tagged at once: this process and worker processes (default: one per core)")


def add_coverage_argument(parser: argparse.ArgumentParser, default: str | None = "full") -> None:
    parser.add_argument("--coverage", type=_coverage, default=default, metavar="full|excerpts:KxS",
                        help="how much of each track to analyse: all of it, or K excerpts of S seconds spread "
                             "over it, read by seeking (e.g. excerpts:3x30; shorter tracks in full)"
                             + (f" (default {default})" if default else ""))


def _coverage(text: str) -> str:
    from tagger.coverage import Coverage

    try:
        return str(Coverage.parse(text))
    except TaggerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(device=args.device, intra_op_threads=args.threads, batch_size=args.batch_size)


def cmd_tag(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tagger.parallel import default_jobs, engine_options_for_jobs, tag_files
    from tagger.pipeline import Tagger

    aliases = _load_alias_file(args.alias_file) if args.alias_file else {}
    given = {label: f"--alias-file {args.alias_file}" for label in aliases}
    command_line = _parse_aliases(args.alias)
    given.update({label: f"--alias {item}" for item in args.alias for label in command_line
                  if item.split("=", 1)[0].strip() == label})
    aliases.update(command_line)
    if aliases:
        from tagger.model import read_manifest
        from tagger.registry import resolve_model

        manifest = read_manifest(resolve_model(args.model))
        check_aliases(aliases, list(dict.fromkeys(label for out in manifest.outputs for label in out.labels)), given)
    if not (args.write_tags or args.dry_run):
        # Options of --write-tags given alone would be ignored: the user would believe genres were written.
        for given, option in ((args.policy, f"--policy {args.policy}"), (args.library, f"--library {args.library}"),
                              (args.tag_output, " ".join(f"--tag-output {o}" for o in args.tag_output))):
            if given:
                raise TaggerError(f"{option}: only applies with --write-tags or --dry-run")
    files = list(iter_audio_files(args.inputs))
    if not files:
        print(f"genre-tagger: error: {' '.join(args.inputs)}: no audio files there (found by their extension: "
              ".mp3, .flac, .ogg, .opus, .wav, .m4a and the like; a file named directly is read whatever its name)",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    if args.write_tags or args.dry_run:
        from service.cli import tag_and_write

        return tag_and_write(args, files, aliases)
    jobs = min(args.jobs or default_jobs(), len(files))
    tagger = Tagger(args.model, threshold=args.threshold, top_k=args.top_k, aliases=aliases,
                    hop_fraction=args.hop, engine_options=engine_options_for_jobs(engine_options(args), jobs),
                    coverage=args.coverage)
    if args.verbose:
        note = f" ({tagger.engine.fallback_reason})" if tagger.engine.fallback_reason else ""
        print(f"model {tagger.manifest.name} {tagger.manifest.version} on {tagger.provider}{note}, "
              f"{jobs} job{'s' if jobs > 1 else ''}", file=sys.stderr)
    show_progress = args.progress if args.progress is not None else (len(files) > 1 and sys.stderr.isatty())
    failed = 0
    # Results come out in the order of the inputs, whichever job finishes first.
    with tqdm(total=len(files), unit="file", disable=not show_progress, file=sys.stderr,
              dynamic_ncols=True) as progress:
        for outcome in tag_files(tagger, files, jobs):
            progress.set_postfix_str(str(outcome.path).rsplit("/", 1)[-1][-30:], refresh=False)
            if outcome.result is None:
                failed += 1
                progress.write(f"genre-tagger: error: {outcome.error}", file=sys.stderr)
                if args.json:
                    print(json.dumps({"path": str(outcome.path), "ok": False, "error": outcome.error}), flush=True)
            elif args.json:
                print(json.dumps(outcome.result.as_dict(args.top_k)), flush=True)
            else:
                result = outcome.result
                progress.write(render_track(str(outcome.path), result.duration_s, result.outputs, args.top_k,
                                            music=result.music, music_probability=result.music_probability,
                                            coverage=result.coverage, analysed_s=result.analysed_s,
                                            level_dbfs=result.level_dbfs, gain_db=result.gain_db)
                               + "\n")
            progress.update(1)
    if failed and (show_progress or len(files) > 1):
        print(f"genre-tagger: {failed} of {len(files)} files failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from tagger.model import read_manifest
    from tagger.registry import DEFAULT_CPU_MODEL, DEFAULT_MODEL, list_models, resolve_model

    if args.name:
        manifest = read_manifest(resolve_model(args.name))
        if args.json:
            print(manifest.to_json())
            return EXIT_OK
        print(f"{manifest.name} {manifest.version}  ({resolve_model(args.name)})")
        for key in ("description", "licence", "training_data", "provenance"):
            value = getattr(manifest, key)
            if value:
                print(f"  {key.replace('_', ' ')}: {value}")
        for name, fe in manifest.front_ends.items():
            print(f"  front end {name}: {fe.sample_rate} Hz, n_fft {fe.n_fft}, hop {fe.hop_length} "
                  f"({1000 * fe.frame_seconds:.1f} ms), {fe.n_mels} mels {fe.fmin:g}-{fe.fmax:g} Hz "
                  f"({fe.mel_scale}), log {fe.log}")
        for view in manifest.views:
            window_s, hop_s = manifest.view_seconds(view)
            print(f"  view {view.name}: {view.window_frames} frames ({window_s:.2f} s), "
                  f"hop {view.hop_frames} ({hop_s:.2f} s)")
        for out in manifest.outputs:
            print(f"  output {out.name} ({out.kind}, {len(out.labels)} labels): {', '.join(out.labels)}")
        if manifest.level_floor_dbfs is not None:
            print(f"  level floor: {manifest.level_floor_dbfs:g} dBFS (quieter files are analysed raised to it, by "
                  f"at most {manifest.level_max_gain_db:g} dB)")
        if manifest.metrics:
            print("  metrics:")
            for line in metric_lines(manifest.metrics, "    "):
                print(line)
        return EXIT_OK
    failed = 0
    for entry in list_models():
        try:
            manifest = read_manifest(entry.path)
        except TaggerError as exc:
            failed += 1
            print(f"genre-tagger: error: {exc}", file=sys.stderr)
            continue
        default = {DEFAULT_MODEL: " (default)", DEFAULT_CPU_MODEL: " (default on the CPU)"}.get(entry.name, "")
        outputs = "; ".join(f"{o.name}: {len(o.labels)} {o.kind}" for o in manifest.outputs)
        print(f"{entry.name}{default}  v{manifest.version}  [{outputs}]  {entry.path}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def metric_lines(metrics: dict, indent: str) -> Iterator[str]:
    """A model's metrics as indented text: a group of plain numbers on one line, nested groups below."""
    for key, value in metrics.items():
        name = str(key).replace("_", " ")
        if isinstance(value, dict) and all(not isinstance(v, dict | list) for v in value.values()):
            yield f"{indent}{name}: " + ", ".join(f"{str(k).replace('_', ' ')} {_number(v)}" for k, v in value.items())
        elif isinstance(value, dict):
            yield f"{indent}{name}:"
            yield from metric_lines(value, indent + "  ")
        elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            yield f"{indent}{name}: " + ", ".join(_number(v) for v in value)
        elif isinstance(value, list):
            yield f"{indent}{name}: {len(value)} entries (genre-tagger models NAME --json has them)"
        else:
            yield f"{indent}{name}: {_number(value)}"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="genre-tagger", description="Streaming music genre tagger.")
    parser.add_argument("--version", action="version", version=f"genre-tagger {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="say more on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    tag = sub.add_parser("tag", help="tag audio files and folders, printing a confidence chart per file")
    tag.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="audio files, or folders to search")
    add_engine_arguments(tag)
    add_jobs_argument(tag)
    add_coverage_argument(tag)
    tag.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    tag.add_argument("--top-k", type=_positive_int, default=DEFAULT_TOP_K,
                     help=f"labels to show per output (default {DEFAULT_TOP_K})")
    tag.add_argument("--threshold", type=_fraction, default=DEFAULT_THRESHOLD,
                     help=f"confidence a label needs, 0..1 or a percentage (default {DEFAULT_THRESHOLD})")
    tag.add_argument("--hop", type=_hop, default=None,
                     help="slice hop as a fraction of each window (default: the model's, half a window)")
    tag.add_argument("--alias", action="append", default=[], metavar="LABEL=NAME",
                     help="show a model label under your own name (repeatable)")
    tag.add_argument("--alias-file", help="JSON object mapping model labels to your names")
    tag.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: on for several files on a terminal)")
    tag.add_argument("--write-tags", action="store_true",
                     help="write the decided genres into the files' own genre tags (and remember the old ones "
                          "in the library, for `library restore-tags`)")
    tag.add_argument("--dry-run", action="store_true",
                     help="with --write-tags: print each file's genres before → after, write nothing")
    tag.add_argument("--policy", choices=("if-empty", "merge", "replace"), default=None,
                     help="files that already have genres: if-empty (default) writes only where there are none "
                          "(or only ours), merge adds ours after theirs, replace writes ours alone")
    tag.add_argument("--tag-output", action="append", default=[], metavar="OUTPUT",
                     help="model output whose decided labels are written (repeatable; default: the first)")
    tag.add_argument("--library", help="SQLite library that keeps the old tags (default: the daemon's)")
    tag.set_defaults(func=cmd_tag)

    models = sub.add_parser("models", help="list the installed models, or inspect one")
    models.add_argument("name", nargs="?", help="a model name or path to inspect")
    models.add_argument("--json", action="store_true", help="print the model's manifest as JSON")
    models.set_defaults(func=cmd_models)
    _register_plugins(sub)
    return parser


def _register_plugins(sub: argparse._SubParsersAction) -> None:
    """Subcommands from the packages built on the core (the daemon's), each with a ``register(sub)``."""
    import importlib

    for module in ("service.cli", "training.cli"):
        try:
            plugin = importlib.import_module(module)
        except ImportError:  # a core-only installation
            continue
        plugin.register(sub)


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``args`` ran: ``genre-tagger library list``'s for ``library list``."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        chosen = getattr(args, action.dest, None) if isinstance(action, argparse._SubParsersAction) else None
        if chosen in action.choices:
            return _command_parser(action.choices[chosen], args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # File names need not be UTF-8: print their undecodable bytes as \xNN rather than fail on them.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, so that its --help is the one named
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="genre-tagger: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except TaggerError as exc:
        print(f"genre-tagger: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except argparse.ArgumentTypeError as exc:
        print(f"genre-tagger: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("genre-tagger: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
