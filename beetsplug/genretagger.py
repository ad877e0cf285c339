"""genretagger: beets genres from genre-tagger's audio model.

Sets beets' multi-valued ``genres`` field (beets ≥ 2.7) from what genre-tagger hears in each file: on
import (``auto: yes``) and with ``beet genretag [QUERY]``. Only decided genres are set: a label's
calibrated probability must reach ``threshold``, an uncertain or not-music result changes nothing.
``policy`` says what happens to genres an item already has: ``if-empty`` (default) sets genres only on
items without any (or with the ones this plugin set), ``merge`` keeps theirs and adds ours after them,
``replace`` sets ours alone. The names are the model's labels through ``aliases``.

genre-tagger's library (the daemon's, or ``library``) is the cache: a file it already tagged, unchanged
since and by the same model, is not run through the model again; files the plugin tags are recorded
there. Configuration (``config.yaml``)::

    plugins: genretagger
    genretagger:
        auto: yes            # on import
        model: ''            # model name or .onnx path ('' = genre-tagger's default model)
        device: auto         # auto, cuda or cpu
        threshold: 0.6       # probability a genre needs (0..1)
        policy: if-empty     # if-empty, merge or replace
        outputs: []          # model outputs to use ([] = the first, 'genre')
        aliases: {}          # model label: your name, e.g. {hiphop: Hip-Hop}
        library: ''          # genre-tagger's library ('' = the daemon's default)
        claim_wait: 120      # seconds to wait for genre-tagger writing a file beets is about to write

Every file beets writes (``genretag -w``, an import, ``beet write``, ``beet modify``) that genre-tagger's library
knows, under any name (beets' path, its real path through a symlinked folder, or another name of the same file:
:meth:`service.library.Library.rows_of_file`), is claimed in that library first, as genre-tagger's daemon and
commands claim a file before they write its tags (:meth:`service.library.Library.claim_tag_write`): a file the
daemon is writing now is waited for (one line says so), never written by both at once; still held after
``claim_wait`` seconds, beets' write of it fails with a line saying so (``genretag`` leaves such an item unchanged
and exits 1; run it again). A file the library does not know yet needs no claim: genre-tagger writes only files it
has tagged, and one that changes while it is tagged is tagged again.

Load it from an installed genre-tagger (``beetsplug`` is a namespace package) or point beets'
``pluginpath`` at this folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beets import ui
from beets.library import Item
from beets.plugins import BeetsPlugin

OURS_FIELD = "genretagger_genres"  # the genres this plugin set last ("; "-separated): ours to update
MODEL_FIELD = "genretagger_model"  # "model version" that decided them
SEPARATOR = "; "


class GenreTaggerPlugin(BeetsPlugin):
    def __init__(self, name: str = "genretagger") -> None:
        super().__init__(name)
        self.config.add({"auto": True, "model": "", "device": "auto", "threshold": 0.6, "policy": "if-empty",
                         "outputs": [], "aliases": {}, "library": "", "claim_wait": 120.0})
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]
        # After beets moved and wrote an import's files (beets calls no plugin twice at once, so our own
        # writes refresh the cache themselves).
        self.register_listener("import_task_files", self.import_task_files)
        # Every file beets writes is claimed in genre-tagger's library around the write (see the module's docs).
        self.register_listener("write", self.before_write)
        self.register_listener("after_write", self.after_write)
        self.register_listener("cli_exit", self.release_claims)
        self._tagger: Any = None
        self._library: Any = None
        self._library_file: Path | None = None
        self._models: set[tuple[str, str]] | None = None
        self._kinds: dict[str, bool] | None = None
        # file -> (its rows in genre-tagger's library, claimed by this process; its fingerprint before the write)
        self._claims: dict[str, tuple[list[Any], str | None]] = {}
        self.busy = 0  # items genretag left unchanged: genre-tagger was writing their files

    # -- settings -------------------------------------------------------------------------------------

    def _settings(self, policy: str | None = None, threshold: float | None = None) -> Any:
        from service.tagwriter import WriteSettings

        aliases = {str(k): str(v) for k, v in (self.config["aliases"].get(dict) or {}).items()}
        return WriteSettings(policy or self.config["policy"].as_str(), tuple(self.config["outputs"].as_str_seq()),
                             self.config["threshold"].as_number() if threshold is None else threshold, aliases)

    def _library_path(self) -> Path:
        if self._library_file is None:
            configured = self.config["library"].as_str()
            if configured:
                self._library_file = Path(configured).expanduser()
            else:
                from service.config import load_config

                self._library_file = load_config(validate=False).library_path
        return self._library_file

    def _open_library(self) -> Any:
        if self._library is None:
            from service.library import Library

            self._library = Library(self._library_path())
        return self._library

    def _model_names(self) -> set[tuple[str, str]]:
        """(name, version) of the model files this configuration runs: the cache's valid entries."""
        if self._models is None:
            from tagger.model import read_manifest
            from tagger.registry import DEFAULT_CPU_MODEL, DEFAULT_MODEL, resolve_model

            model = self.config["model"].as_str()
            names = [model] if model else [DEFAULT_MODEL, DEFAULT_CPU_MODEL]
            self._models = set()
            for name in names:
                try:
                    manifest = read_manifest(resolve_model(name))
                except Exception:  # the CPU twin may not be installed
                    continue
                self._models.add((manifest.name, manifest.version))
        return self._models

    def _load_tagger(self) -> Any:
        if self._tagger is None:
            from tagger.engine import EngineOptions
            from tagger.pipeline import Tagger

            self._tagger = Tagger(self.config["model"].as_str() or None, threshold=self._settings().threshold,
                                  engine_options=EngineOptions(device=self.config["device"].as_str()))
        return self._tagger

    # -- deciding an item's genres --------------------------------------------------------------------

    def result_for(self, path: str) -> tuple[dict, bool, str, str, bool]:
        """(outputs, music, model, version, cached) for a file: from genre-tagger's library, or the model."""
        from service.library import TAGGED, fingerprint

        library = self._open_library()
        st = os.stat(path)
        fp = fingerprint(path, st.st_size)
        rows = library.rows_of_file(path, fp)  # the file may be known under another name (a symlinked folder)
        for row in rows:
            if row.status == TAGGED and row.fingerprint == fp:
                track = library.track(row.id) or {}
                if (track.get("model"), track.get("model_version")) in self._model_names():
                    outputs = _estimates(track.get("genres") or [], self._load_kinds(), self._settings().threshold)
                    if outputs:
                        return outputs, track.get("music") != 0, track["model"], track["model_version"], True
        result = self._load_tagger().tag_file(path)
        if fingerprint(path) == fp:  # recorded under the name the library knows it by: one row per file
            library.record_file_result(rows[0].path if rows else path, result, st.st_size, st.st_mtime, fp)
        return result.outputs, result.music, result.model, result.model_version, False

    def _load_kinds(self) -> dict[str, bool]:
        """Each output's multi-label flag, in the model's order, from its manifest (read once; no model is
        loaded)."""
        if self._kinds is None:
            from tagger.model import read_manifest
            from tagger.registry import DEFAULT_MODEL, resolve_model

            manifest = read_manifest(resolve_model(self.config["model"].as_str() or DEFAULT_MODEL))
            self._kinds = {o.name: o.multi_label for o in manifest.outputs}
        return self._kinds

    def genres_for(self, item: Item, settings: Any) -> tuple[list[str] | None, str, tuple[str, ...]]:
        """The genres ``item`` should have under ``settings`` (None: leave them), a reason to log, and the
        genres the model decided for it."""
        from service.tagwriter import TagWriter
        from tagger.errors import TaggerError
        from tagger.filetags import provenance_value

        path = os.fsdecode(item.path)
        try:
            outputs, music, model, version, cached = self.result_for(path)
        except (TaggerError, OSError) as exc:
            return None, f"cannot tag: {exc}", ()
        new = TagWriter(None, settings, "beets").genres(outputs, music, settings)
        source = "genre-tagger library" if cached else f"model {model} {version}"
        if not new:
            return None, ("not music" if not music else "no genre reached the threshold") + f" ({source})", ()
        planned = _plan(item, new, settings.policy, provenance_value(model, version))
        if planned is None:
            return None, f"its own genres kept (policy {settings.policy}; {source})", new
        return planned, source, new

    def process(self, item: Item, settings: Any, write: bool, pretend: bool = False,
                show: bool = False) -> tuple[str, ...]:
        """Set ``item``'s genres; ``show`` prints each change (the command), else logs it (the import).
        Returns the genres the model decided for the item (for its album's)."""
        before = list(item.get("genres") or ())
        genres, reason, decided = self.genres_for(item, settings)
        if genres is None:
            self._log.info("{}: {}", item, reason)
            return decided
        if genres == before:
            self._log.debug("{}: genres already {} ({})", item, genres, reason)
            if not pretend:
                item.store()
            return decided
        if not pretend and write:
            # Claimed before anything changes: an item whose file genre-tagger keeps writing is left as it is
            # (its genres in beets' database and in the file stay together).
            file = os.fsdecode(item.path)
            holder = self.claim(file)
            if holder is not None:
                self.busy += 1
                self._log.warning("{}: busy: genre-tagger process {} was writing its tags for {:g} s, genres not set "
                                  "(run genretag again)", file, holder, self._claim_wait())
                return decided
        item.genres = genres
        self._show(f"{item}: {'; '.join(before) or '(none)'} → {'; '.join(genres)} ({reason})", show, pretend)
        if not pretend:
            # beets sets this plugin's log level around each of its hooks and asserts that none runs inside another;
            # this write sends our `write` listener from within this command or import stage, so the level is
            # handed back to beets (NOTSET) meanwhile and taken again after.
            level = self._log.level
            self._log.setLevel(logging.NOTSET)
            try:
                item.try_sync(write=write, move=False)
            finally:
                self._log.setLevel(level)
                if write:
                    self.release(file)
        return decided

    def process_album(self, album: Any, settings: Any, decided: list[tuple[str, ...]], pretend: bool = False,
                      show: bool = False) -> None:
        """An album's genres: those decided for at least half its tracks, most common first (the tracks
        keep their own; the album's are not copied to them)."""
        from tagger.filetags import unique

        counts: dict[str, int] = {}
        spelling: dict[str, str] = {}
        for genres in decided:
            for g in unique(genres):
                counts[g.casefold()] = counts.get(g.casefold(), 0) + 1
                spelling.setdefault(g.casefold(), g)
        shared = [spelling[k] for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if 2 * n >= len(decided)]
        if not shared:
            self._log.info("{}: no genre decided for half its tracks", album)
            return
        models = {item.get(MODEL_FIELD) for item in album.items()} - {None}
        before = list(album.get("genres") or ())
        planned = _plan(album, tuple(shared), settings.policy, models.pop() if len(models) == 1 else None)
        if planned is None or planned == before:
            if not pretend:
                album.store(inherit=False)
            return
        album.genres = planned
        self._show(f"album {album}: {'; '.join(before) or '(none)'} → {'; '.join(planned)}", show, pretend)
        if not pretend:
            album.store(inherit=False)

    def _show(self, change: str, show: bool, pretend: bool) -> None:
        if show:
            ui.print_(change + (" (pretend)" if pretend else ""))
        else:
            self._log.info("{}", change)

    # -- beets hooks ----------------------------------------------------------------------------------

    def imported(self, session: Any, task: Any) -> None:
        # beets writes the files of an autotagged import itself; an as-is import is written here.
        beets_writes = bool(getattr(task, "apply", False))
        write = ui.should_write() and not beets_writes
        settings = self._settings()
        decided = [self.process(item, settings, write) for item in task.imported_items()]
        if getattr(task, "is_album", False) and getattr(task, "album", None) is not None:
            self.process_album(task.album, settings, decided)

    def _claim_wait(self) -> float:
        """``claim_wait``: how long, in seconds, beets waits for a genre-tagger process writing a file it is about to
        write (0: not at all). Anything else than a number of seconds, 0 or more, is an error naming it."""
        value = self.config["claim_wait"].get()
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:  # `not >=`: NaN too
            raise ui.UserError(f"claim_wait {value!r} is not a number of seconds, 0 or more")
        return float(value)

    def _library_if_any(self) -> Any:
        """genre-tagger's library when it exists (None: nothing there to claim; no library is made for it)."""
        if self._library is None and not self._library_path().is_file():
            return None
        return self._open_library()

    def claim(self, file: str) -> int | None:
        """Claim ``file``'s writing in genre-tagger's library, waiting up to ``claim_wait`` seconds for a
        genre-tagger process writing it now (one line when the wait begins). The library's rows for the file are
        found under whatever name it knows the file by (:meth:`service.library.Library.rows_of_file`: beets' path,
        the real path, or the same device and inode under another name): a file in a symlinked folder is claimed
        too. Returns None once claimed (or when the library does not know the file: no genre-tagger process writes
        it), else the pid still holding it."""
        import time

        from service.library import fingerprint
        from service.tagwriter import claim, waiting_line
        from tagger.errors import TaggerError

        try:
            library = self._library_if_any()
            rows = [] if library is None else library.rows_of_file(file)
        except TaggerError as exc:  # a library (or genre-tagger config) that cannot be read: beets' write goes on
            self._log.warning("{}: not claimed in genre-tagger's library: {}", file, exc)
            return None
        except OSError:  # a file that cannot be read: beets' write of it fails and says why
            return None
        if not rows:
            return None
        said: list[int] = []

        def waiting(pid: int) -> None:
            if not said:  # one line for the file, however many of its rows are held
                said.append(pid)
                self._log.warning("{}", waiting_line(file, pid).removeprefix("genre-tagger: "))

        deadline = time.monotonic() + self._claim_wait()
        claimed: list[Any] = []
        for row in rows:  # a file known under two names (rows made before both were recognised) has two claims
            holder = claim(library, row.id, max(0.0, deadline - time.monotonic()), waiting)
            if holder is not None:
                for taken in claimed:
                    library.release_tag_write(taken.id)
                return holder
            claimed.append(row)
        try:  # the file as it is before beets writes it (read under the claim: no genre-tagger writes it now)
            before = fingerprint(file)
        except OSError:
            before = None
        self._claims[file] = (claimed, before)
        return None

    def release(self, file: str) -> None:
        """Done writing ``file``: its genre-tagger cache entry (and a write genre-tagger owes for it) describes the
        rewritten file, and the claim goes."""
        claimed = self._claims.pop(file, None)
        if claimed is not None:
            rows, before = claimed
            try:
                self._refresh_cache(file, before, rows)
            finally:
                for row in rows:
                    self._library.release_tag_write(row.id)

    def before_write(self, item: Item, path: bytes, tags: dict) -> None:
        """beets is about to write a file's tags: claimed first (a refusal makes beets' write fail, said so)."""
        from beets.library import WriteError

        file = os.fsdecode(path)
        holder = self.claim(file)
        if holder is not None:
            raise WriteError(path, RuntimeError(
                f"genre-tagger process {holder} was writing its tags for {self._claim_wait():g} s, not written "
                "(`beet write` writes it again)"))

    def after_write(self, item: Item, path: bytes) -> None:
        self.release(os.fsdecode(path))

    def release_claims(self, lib: Any = None) -> None:
        """beets is exiting: claims of writes that failed (beets sends no event for those) are released."""
        for file in list(self._claims):
            self.release(file)

    def import_task_files(self, session: Any, task: Any) -> None:
        for item in task.imported_items():
            self._refresh_cache(os.fsdecode(item.path))

    def _refresh_cache(self, file: str, before: str | None = None, rows: list[Any] | None = None) -> None:
        """beets rewrote a file's tags (the audio is the same): keep its genre-tagger cache entries valid. ``before``:
        the file's fingerprint before the write (known for a claimed write, with the claimed ``rows``): then an
        entry follows only if it described that file, and a genre write genre-tagger owes for it stays owed for the
        rewritten file (:meth:`service.library.Library.file_rewritten`); else the daemon would drop it as "file
        changed" and, the entry being valid, never tag the file again: its genres would never reach the file."""
        from service.library import TAGGED, fingerprint

        if self._library is None or not os.path.isfile(file):
            return
        st = os.stat(file)
        fp = fingerprint(file, st.st_size)
        for row in self._library.rows_of_file(file, fp) if rows is None else rows:
            if row.status == TAGGED:
                self._library.file_rewritten(row.id, st.st_size, st.st_mtime, fp, before)

    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("genretag", help="set genres from genre-tagger's audio model")
        cmd.parser.add_option("-p", "--pretend", action="store_true", help="show the changes, change nothing")
        cmd.parser.add_option("-w", "--write", action="store_true", default=None,
                              help="write the new genres into the files (default: import.write)")
        cmd.parser.add_option("-W", "--nowrite", action="store_false", dest="write",
                              help="do not write the files' tags")
        cmd.parser.add_option("--policy", choices=("if-empty", "merge", "replace"),
                              help="items that already have genres (default: the config's policy)")
        cmd.parser.add_option("--threshold", metavar="P",
                              help="probability a genre needs, 0..1 or a percentage like 70% (stricter than the "
                                   "config's, never looser)")
        cmd.parser.add_option("-a", "--album", action="store_true",
                              help="match albums: set each album's tracks and the album's own genres")

        def run(lib: Any, opts: Any, args: Sequence[str]) -> None:
            import argparse

            from tagger.cli import _fraction
            from tagger.errors import TaggerError

            if opts.threshold is not None:  # as genre-tagger tag --threshold takes it
                try:
                    opts.threshold = _fraction(opts.threshold)
                except argparse.ArgumentTypeError as exc:
                    raise ui.UserError(f"genretag --threshold {exc}") from None
            configured = self.config["threshold"].as_number()
            if opts.threshold is not None and opts.threshold < configured:
                # Results are judged (and recorded in genre-tagger's library) at the configured threshold:
                # a lower one would set genres that library calls uncertain.
                raise ui.UserError(f"genretag --threshold {opts.threshold:g} is below genretagger.threshold "
                                   f"{configured:g}: lower the configured threshold instead")
            try:
                settings = self._settings(opts.policy, opts.threshold)
            except TaggerError as exc:
                raise ui.UserError(str(exc)) from None
            self._claim_wait()  # checked before any item changes (the other writes check it at their first claim)
            write = ui.should_write(opts.write)
            self.busy = 0
            if opts.album:
                for album in lib.albums(args):
                    decided = [self.process(item, settings, write, opts.pretend, show=True) for item in album.items()]
                    self.process_album(album, settings, decided, opts.pretend, show=True)
            else:
                for item in lib.items(args):
                    self.process(item, settings, write, opts.pretend, show=True)
            if self.busy:
                raise ui.UserError(f"genretag: {self.busy} items left unchanged: genre-tagger was writing their "
                                   "files (run genretag again)")

        cmd.func = run
        return [cmd]


def _plan(obj: Any, new: tuple[str, ...], policy: str, provenance: str | None) -> list[str] | None:
    """An item's or album's genres under ``policy`` (None: leave them); remembers which are ours."""
    from tagger.filetags import GenreState, plan_genres, unique

    current = GenreState(tuple(obj.get("genres") or ()))
    set_before = obj.get(OURS_FIELD)
    ours = tuple(g for g in set_before.split(SEPARATOR) if g) if set_before else None
    planned = plan_genres(current, new, policy, ours)
    if planned is None:
        return None
    obj[OURS_FIELD] = SEPARATOR.join(unique(g for g in planned if g.casefold() in {n.casefold() for n in new}))
    if provenance:
        obj[MODEL_FIELD] = provenance
    return list(planned)


def _estimates(rows: list[dict], kinds: dict[str, bool], threshold: float) -> dict:
    """OutputEstimates from a library track's stored genre rows (each output's best labels)."""
    from tagger.ensemble import LabelScore, OutputEstimate

    by_output: dict[str, list[LabelScore]] = {}
    for r in rows:
        by_output.setdefault(r["output"], []).append(LabelScore(r["label"], float(r["score"])))
    outputs = {}
    for name in sorted(by_output, key=lambda n: list(kinds).index(n) if n in kinds else len(kinds)):
        scores = sorted(by_output[name], key=lambda s: -s.score)  # in the model's output order
        outputs[name] = OutputEstimate(name, name, kinds.get(name, False), scores, scores[0].label, scores[0].score,
                                       0.0, [], True, [], threshold)
    return outputs

