"""Daemon configuration: a TOML file, overridden by environment variables, overridden by CLI flags.

Every key, its default and its unit are in :class:`Config` and in ``service/genre-tagger.toml``
(a commented example). Environment variables are ``GENRE_TAGGER_<SECTION>_<KEY>`` (for example
``GENRE_TAGGER_PUBLISH_ENDPOINT=ipc:///run/genre-tagger/pub``); lists are comma-separated.
Validation happens once at start and names the offending key and what set it (the TOML file, the variable or the flag).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from service.live import ChangeSettings
from service.sinks import SinkSettings, sink_classes
from service.sinks.zmq import PublishSection
from tagger.errors import ConfigError, TaggerError

CORE_SECTIONS = ("daemon", "tagging", "folders", "live")
_CHANGES = ChangeSettings()


def default_sink_settings() -> dict[str, SinkSettings]:
    """Every sink's section with its defaults."""
    return {name: cls.Settings() for name, cls in sink_classes().items()}


@dataclass
class DaemonSection:
    """state_dir: where the library and runtime files live (systemd sets $STATE_DIRECTORY).
    library: the SQLite file (default: <state_dir>/library.db). jobs: files tagged at once (0: one per core)."""

    state_dir: str = "~/.local/state/genre-tagger"
    library: str = ""
    model: str = ""
    device: str = "auto"
    threads: int = 0
    batch_size: int = 32
    chunk_frames: int = 512
    memory_arena: bool = True
    jobs: int = 0


@dataclass
class TaggingSection:
    """threshold: probability a label needs (0..1). top_k: labels per output in messages.
    store_top_k: labels per output kept in the library. hop: slice hop as a fraction of the window
    (0 = the model's). retry_errors: re-try files that failed, at start (and file-tag writes that failed
    for good). coverage: how much of each file to analyse, ``full`` or ``excerpts:KxS`` (:mod:`tagger.coverage`)."""

    threshold: float = 0.6
    top_k: int = 5
    store_top_k: int = 10
    hop: float = 0.0
    retry_errors: bool = False
    coverage: str = "full"


@dataclass
class FoldersSection:
    """roots: folders to watch. settle_seconds: a file must keep its size and mtime this long before
    it is read (unless the writer closed it). scan_on_start: full scan of each root at start."""

    roots: list[str] = field(default_factory=list)
    settle_seconds: float = 2.0
    scan_on_start: bool = True


@dataclass
class LiveSection:
    """enabled: capture live audio. device: PortAudio device name or index ("" = the default input).
    source: the name in topics (live.<source>). horizon_seconds: the running ensemble's span (0 = whole
    stream). hysteresis, evidence_nats, drift_nats, cap_nats, evidence_views, music_evidence_nats,
    music_drift_nats, withdraw_nats, quiet_dbfs: how a genre_changed is decided (service.live.ChangeSettings says each;
    the evidence is in nats, natural-log units of a probability ratio).
    block_seconds: PortAudio block length. buffer_seconds: the capture ring buffer.
    file: an audio file or http(s):// stream played through the live path in real time, as a source of
    its own beside any capture. file_loop: start the file over when it ends. file_source: its name in
    topics ("" = ``source`` when there is no capture, else "file"). level_floor: raise every live source
    quieter than the model's level floor towards it, causally (:class:`tagger.level.RunningFloor`; the gain
    is the status message's ``live.<source>.gain_db``); false analyses live input at the level it comes in."""

    enabled: bool = False
    device: str = ""
    source: str = "live"
    # Chosen by measurement (python -m training.live_eval: switch streams between shared clips, talk
    # streams, single-genre streams; artists split in halves, chosen on one, checked on the other; numbers
    # in the README and models/msd-musicnn-gtzan.live.json). Only decided genres are announced.
    # The values themselves are the change detector's defaults (service.live.ChangeSettings): one place.
    horizon_seconds: float = _CHANGES.horizon_seconds or 0.0
    hysteresis: int = _CHANGES.hysteresis
    evidence_nats: float = _CHANGES.evidence_nats
    drift_nats: float = _CHANGES.drift_nats
    cap_nats: float = _CHANGES.cap_nats
    evidence_views: str = _CHANGES.evidence_views
    music_evidence_nats: float = _CHANGES.music_evidence_nats
    music_drift_nats: float = _CHANGES.music_drift_nats
    withdraw_nats: float = _CHANGES.withdraw_nats
    quiet_dbfs: float = _CHANGES.quiet_dbfs
    block_seconds: float = 0.05
    buffer_seconds: float = 30.0
    sample_rate: int = 0
    channels: int = 0
    file: str = ""
    file_loop: bool = False
    file_source: str = ""
    level_floor: bool = True

    def change_settings(self) -> ChangeSettings:
        """The live path's change detection settings (service.live.ChangeSettings)."""
        return ChangeSettings(horizon_seconds=self.horizon_seconds or None, hysteresis=self.hysteresis,
                              evidence_nats=self.evidence_nats, drift_nats=self.drift_nats, cap_nats=self.cap_nats,
                              evidence_views=self.evidence_views, music_evidence_nats=self.music_evidence_nats,
                              music_drift_nats=self.music_drift_nats, withdraw_nats=self.withdraw_nats,
                              quiet_dbfs=self.quiet_dbfs)

    @property
    def file_source_name(self) -> str:
        """The played file's source name (see ``file_source``)."""
        return self.file_source or ("file" if self.enabled else self.source)


@dataclass
class Config:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    tagging: TaggingSection = field(default_factory=TaggingSection)
    folders: FoldersSection = field(default_factory=FoldersSection)
    live: LiveSection = field(default_factory=LiveSection)
    # Each sink's section ([publish], [http]...), by name: see service/sinks/.
    sinks: dict[str, SinkSettings] = field(default_factory=default_sink_settings)
    # "section.key" → what the user typed to set it outside the TOML file ("--settle -1",
    # "GENRE_TAGGER_TAGGING_THRESHOLD=abc"), so that an error names it.
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # "section.key" → the TOML file that set it, so that an error names the file (a user may have
    # /etc/genre-tagger/genre-tagger.toml and a --config of their own).
    files: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def publish(self) -> PublishSection:
        """The ZeroMQ sink's section (its ``heartbeat_seconds`` also paces the daemon's status)."""
        return self.sinks["publish"]  # type: ignore[return-value]

    def section(self, name: str) -> Any:
        """A section by its TOML name (core or sink), or None."""
        if name in CORE_SECTIONS:
            return getattr(self, name)
        return self.sinks.get(name)

    def section_names(self) -> list[str]:
        return [*CORE_SECTIONS, *self.sinks]

    @property
    def state_dir(self) -> Path:
        return Path(os.path.expandvars(self.daemon.state_dir)).expanduser()

    @property
    def library_path(self) -> Path:
        if self.daemon.library:
            return Path(os.path.expandvars(self.daemon.library)).expanduser()
        return self.state_dir / "library.db"

    def validate(self) -> Config:
        """Check every value; raise one :class:`ConfigError` naming all the bad keys at once."""
        errors: list[str] = []

        def check(ok: bool, key: str, message: str, value: Any = None) -> None:
            if not ok:
                errors.append(f"{key}: {message}" + ("" if value is None else f" (got {value!r})"))

        t = self.tagging
        check(0.0 <= t.threshold <= 1.0, "tagging.threshold", "must be within 0..1", t.threshold)
        check(t.top_k >= 1, "tagging.top_k", "must be at least 1", t.top_k)
        check(t.store_top_k >= 1, "tagging.store_top_k", "must be at least 1", t.store_top_k)
        check(0.0 <= t.hop <= 1.0, "tagging.hop", "must be within 0..1 (0 = the model's)", t.hop)
        check(_coverage_ok(t.coverage), "tagging.coverage", "must be 'full' or 'excerpts:KxS' (e.g. excerpts:3x30)",
              t.coverage)
        d = self.daemon
        check(d.device in ("auto", "cuda", "cpu"), "daemon.device", "must be auto, cuda or cpu", d.device)
        check(0 <= d.threads <= MAX_THREADS, "daemon.threads",
              f"must be within 0..{MAX_THREADS} (0 = one per core; this machine has {os.cpu_count()})", d.threads)
        check(0 <= d.jobs <= MAX_JOBS, "daemon.jobs", f"must be within 0..{MAX_JOBS} (0 = one per core)", d.jobs)
        check(1 <= d.batch_size <= 4096, "daemon.batch_size", "must be within 1..4096", d.batch_size)
        check(64 <= d.chunk_frames <= 1 << 20, "daemon.chunk_frames", "must be within 64..1048576", d.chunk_frames)
        check(0 <= self.folders.settle_seconds <= 86400, "folders.settle_seconds", "must be within 0..86400 s",
              self.folders.settle_seconds)
        for root in self.folders.roots:
            # A missing root is allowed (a drive not mounted yet): the watcher says so and waits for it.
            place = Path(root).expanduser()
            check(place.is_dir() or not place.exists(), "folders.roots", f"{root!r} is not a directory")
        lv = self.live
        check(0 <= lv.horizon_seconds <= 86400, "live.horizon_seconds", "must be within 0..86400 s (0 = whole stream)",
              lv.horizon_seconds)
        check(1 <= lv.hysteresis <= 1000, "live.hysteresis", "must be within 1..1000", lv.hysteresis)
        for key in ("evidence_nats", "drift_nats", "music_evidence_nats", "music_drift_nats", "withdraw_nats"):
            check(0 <= getattr(lv, key) <= 1000, f"live.{key}", "must be within 0..1000 (0 = off)", getattr(lv, key))
        check(-200 <= lv.quiet_dbfs <= 0, "live.quiet_dbfs", "must be within -200..0 dBFS (0 = off)", lv.quiet_dbfs)
        check(0 < lv.cap_nats <= 1000, "live.cap_nats", "must be within 0..1000 and above 0", lv.cap_nats)
        check(lv.evidence_views in ("shortest", "all"), "live.evidence_views", "must be \"shortest\" or \"all\"",
              lv.evidence_views)
        check(0.001 <= lv.block_seconds <= 1.0, "live.block_seconds", "must be within 0.001..1 s", lv.block_seconds)
        check(1.0 <= lv.buffer_seconds <= 3600, "live.buffer_seconds", "must be within 1..3600 s", lv.buffer_seconds)
        for key, name in (("source", lv.source), ("file_source", lv.file_source or "file")):
            check(name.replace("-", "").replace("_", "").isalnum(), f"live.{key}",
                  "must be letters, digits, - or _ (it is part of the topic)", name)
        if lv.file:
            check("://" in lv.file or Path(lv.file).expanduser().is_file(), "live.file",
                  f"{lv.file!r} is neither an audio file nor a URL")
            check(not (lv.enabled and lv.file_source_name == lv.source), "live.file_source",
                  f"{lv.file_source_name!r} is the capture's source name too: give the file another")
        check(lv.sample_rate == 0 or 4000 <= lv.sample_rate <= 768_000, "live.sample_rate",
              "must be 0 (the device's) or within 4000..768000 Hz", lv.sample_rate)
        check(0 <= lv.channels <= 64, "live.channels", "must be within 0..64 (0 = the device's)", lv.channels)
        for name, settings in self.sinks.items():
            try:
                settings.validate(name)
                settings.validate_with(name, self)
            except ConfigError as exc:
                errors.append(str(exc).removeprefix("config "))
        check(bool(self.folders.roots) or lv.enabled or bool(lv.file), "folders.roots",
              "nothing to do: give a folder to watch, enable live capture or play a live file")
        if errors:
            raise ConfigError(self.error_line(errors))
        return self

    def error_line(self, errors: list[str]) -> str:
        """One line for ``errors`` ("section.key: reason" each) that names what the user typed: led by the
        TOML file when it set one of the keys (else by "config"), each key set by an environment variable or
        a flag followed by it ("(set by --settle -1)")."""
        files = sorted({self.files[key] for key in map(_key_of, errors) if key in self.files})
        lead = f"{', '.join(files)}: " if files else "config "
        errors = sorted(errors, key=lambda error: _key_of(error) not in self.files)  # the file's keys first
        return lead + "; ".join(self._with_origin(error) for error in errors)

    def _with_origin(self, error: str) -> str:
        """``error`` ("section.key: reason"), saying what set the key when it was not the TOML file."""
        origin = self.origins.get(_key_of(error))
        return f"{error} (set by {origin})" if origin else error


def _key_of(error: str) -> str:
    """The "section.key" an error ("section.key: reason") is about."""
    return error.split(":", 1)[0]


def _coverage_ok(text: object) -> bool:
    from tagger.coverage import Coverage

    try:
        Coverage.parse(str(text))
    except TaggerError:
        return False
    return isinstance(text, str)


# Files tagged at once beyond this are refused (each holds a decoding process).
MAX_JOBS = 256
# ONNX Runtime threads beyond this are refused (a typo like 100000 would hang creating them).
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))


def _typed(value: Any) -> str:
    """A flag's parsed value as it was most likely typed (``-1.0`` → ``-1``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    origin = get_origin(kind)
    if origin is list:
        (item,) = get_args(kind)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config {key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, key) for v in value]
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return low in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"config {key}: {value!r} is not a finite number")
            return number
        if kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config {key}: {value!r} is not a valid {kind.__name__}") from None
    raise ConfigError(f"config {key}: unsupported type")


def _apply(config: Config, section: str, values: dict[str, Any], where: str,
           origins: dict[str, str] | None = None, file: str = "") -> None:
    """Set ``values`` in ``section``; ``origins`` says what set each key (``--settle -1``), when not ``file``
    (the TOML file's path)."""
    target = config.section(section)
    if target is None or not dataclasses.is_dataclass(target):
        raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(config.section_names())})")
    hints = get_type_hints(type(target))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key {section}.{key} (known: {', '.join(sorted(hints))})")
        name = f"{section}.{key}"
        # Whatever set the key last is the one an error names.
        if origins and key in origins:
            config.origins[name] = origins[key]
        else:
            config.origins.pop(name, None)
        if file:
            config.files[name] = file
        else:
            config.files.pop(name, None)
        try:
            setattr(target, key, _coerce(value, hints[key], name))
        except ConfigError as exc:
            raise ConfigError(config.error_line([str(exc).removeprefix("config ")])) from None


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, dict[str, Any]] | None = None, extra_roots: list[str] | None = None,
                validate: bool = True, flags: dict[str, str] | None = None) -> Config:
    """Defaults ← TOML file ← environment ← ``overrides`` (from CLI flags), plus ``extra_roots``.

    ``validate=False`` skips the checks (to locate the library, say). ``flags`` names the flag behind
    each override (``{"folders.settle_seconds": "--settle"}``), so that an error names what was typed.
    """
    config = Config()
    if path:
        path = Path(path).expanduser()
        try:
            doc = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}); TOML files are UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: '{section}' must be a [section]")
            _apply(config, section, values, str(path), file=str(path))
    env = os.environ if env is None else env
    sections = set(config.section_names())
    for name, value in env.items():
        if not name.startswith("GENRE_TAGGER_") or name == "GENRE_TAGGER_MODELS":
            continue
        rest = name[len("GENRE_TAGGER_"):].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            _apply(config, section, {key: value}, f"environment {name}", {key: f"{name}={value}"})
    for section, values in (overrides or {}).items():
        given = {k: v for k, v in values.items() if v is not None}
        flag_of = {k: (flags or {}).get(f"{section}.{k}") for k in given}
        _apply(config, section, given, "command line",
               {k: f"{flag} {_typed(given[k])}" for k, flag in flag_of.items() if flag})
    for root in extra_roots or []:  # typed on the command line: a typo, not a drive to wait for
        if not Path(root).expanduser().is_dir():
            raise ConfigError(f"--folder {root}: " + ("not a directory" if Path(root).expanduser().exists()
                                                       else "no such folder"))
    config.folders.roots = [*config.folders.roots, *(extra_roots or [])]
    return config.validate() if validate else config
