"""The text file sink: a "now playing genre" file for radio automation, rewritten on each genre change.

Section ``[textfile]``. On every ``genre_changed`` of the chosen source the file is replaced
atomically (a temporary file in the same folder, flushed, then renamed over it), so a reader never
sees half a line. An uncertain change (a genre withdrawn, music back after "no music" with its genre
undecided) writes ``uncertain``, never its genre (contract §3); a change to "no music" writes ``no_music``;
both are by default an empty file ("no genre now").
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from service.sinks import ChangeSection, ChangeSink, SinkContext, SinkSettings, check


@dataclass
class TextFileSection(ChangeSection):
    """enabled: write the file. path: the file (its folder must exist). format: the text for a genre,
    with {genre}, {confidence} (0..1), {percent}, {source}, {previous}, {time}. no_music: the text when
    the stream turns to talk or silence. uncertain: the text while the music's genre is not decided (never
    the genre). source: the live source to follow ("" = every source)."""

    path: str = ""
    format: str = "{genre}\n"

    def validate(self, section: str) -> None:
        super().validate(section)
        if self.enabled:
            check(bool(self.path), f"{section}.path", "must name the file to write")
            folder = Path(os.path.expandvars(self.path)).expanduser().parent
            check(folder.is_dir(), f"{section}.path", f"folder {str(folder)!r} does not exist")


class TextFileSink(ChangeSink):
    name: ClassVar[str] = "textfile"
    Settings: ClassVar[type[SinkSettings]] = TextFileSection

    def __init__(self, settings: TextFileSection, context: SinkContext) -> None:
        super().__init__(settings, context)
        self.settings: TextFileSection = settings
        self.path = Path(os.path.expandvars(settings.path)).expanduser()
        self.writes = 0

    def describe(self) -> str:
        return f"genre text file {self.path}"

    def show(self, text: str) -> bool:
        write_atomically(self.path, text)  # "" too: an empty file says "no genre now"
        self.writes += 1
        return True


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) so that a reader sees the old file or the new one, whole.

    The file is created 0666 less the process umask (automation often reads it as another user). The
    kernel applies the umask: reading it with ``os.umask`` would set it process-wide for a moment, and
    any file another thread of the daemon created meanwhile would get no umask at all.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
