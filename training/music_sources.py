"""Freely licensed music from Debian packages: more positives for the music detector than GTZAN's ten genres,
above all the ambient, orchestral and quiet game soundtracks GTZAN lacks.

A build step, no root needed and nothing installed: each package of :data:`SOURCES` is fetched with
``apt-get download`` into ``<root>/debs`` and unpacked with ``dpkg-deb -x`` into ``<root>/<package>``; its
``usr/share/doc/<package>/copyright`` comes with it (the licence of every file, kept beside the audio).
Only the package's music folder is read. Per track at most :data:`SEGMENTS` excerpts of
:data:`SEGMENT_SECONDS` s (one early, one from the middle), and at most :data:`TRACKS_PER_PACKAGE` tracks
per package (spread over its sorted list), so one package never outweighs the others and the features
stay cheap.

    python -m training.music_sources --root .cache/music-packages     # fetch and list

Never used: the packages whose music is among the shared evaluation fixtures (``../shared/data/realworld``:
warzone2100-music, asc-music, singularity-music) and their data packages (:data:`EXCLUDED_PACKAGES`); FMA
has no Debian package. No audio of these packages is committed to the repository.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEGMENT_SECONDS = 20.0
SEGMENTS = 2
EARLY_OFFSET_S = 8.0  # the first excerpt starts here (after most fade-ins), or at 0 in a shorter track
TRACKS_PER_PACKAGE = 16
AUDIO_SUFFIXES = (".ogg", ".oga", ".mp3", ".flac", ".opus", ".wav")
DEFAULT_ROOT = Path(".cache/music-packages")
# The realworld fixtures come from these (or belong to the same games): never trained on.
EXCLUDED_PACKAGES = frozenset({"warzone2100-music", "warzone2100-data", "warzone2100", "asc-music", "asc-data",
                               "asc", "singularity-music", "singularity"})


@dataclass(frozen=True)
class MusicSource:
    """One Debian package's music: ``folder`` inside the unpacked package (or, with ``archive``, inside that
    zip file of the package), the licence of its music files per the package's copyright file, and what it
    sounds like."""

    package: str
    folder: str
    licence: str
    style: str
    archive: str = ""


SOURCES: tuple[MusicSource, ...] = (
    MusicSource("freedroidrpg-data", "usr/share/freedroidrpg/data/sound/music", "GPL-2+",
                "ambient and electronic game score"),
    MusicSource("naev-data", "usr/share/naev/dat/snd/music", "CC-BY-3.0, CC-BY-SA-3.0, public domain (per file)",
                "ambient space and orchestral score"),
    MusicSource("hyperrogue-music", "usr/share/hyperrogue/music", "CC-BY-SA-3.0 (Shawn Parrotte, Lincoln Domina, "
                "Will Savino and others)", "ambient, atmospheric and world-music game score"),
    MusicSource("wesnoth-1.16-music", "usr/share/games/wesnoth/1.16/data/core/music", "GPL-2+",
                "orchestral and folk fantasy score, many quiet pieces"),
    MusicSource("widelands-data", "usr/share/games/widelands/data/music", "GPL-2+, CC-BY-SA-3.0 (per file)",
                "calm orchestral and ambient strategy-game score"),
    MusicSource("megaglest-data", "usr/share/games/megaglest", "CC-BY-SA-3.0",
                "orchestral, ethnic and ambient faction music"),
    MusicSource("ufoai-music", "music", "GPL-2+, CC-BY-SA-3.0, CC-BY-3.0, public domain (per file)",
                "dark ambient and orchestral score", archive="usr/share/games/ufoai/base/0music.pk3"),
    MusicSource("supertux-data", "usr/share/games/supertux2/music", "GPL-2+, CC-BY-SA-3.0/4.0 (per file)",
                "chiptune-like and light electronic game music"),
    MusicSource("extremetuxracer-data", "usr/share/games/etr/music", "GPL-2+", "light electronic and calm racing "
                "music"),
    MusicSource("planetblupi-music-ogg", "usr/share/planetblupi/music", "GPL-3+", "light pop and jazz game music"),
    MusicSource("hedgewars-data", "usr/share/games/hedgewars/Data/Music", "GPL-2, CC-BY-SA-3.0 (per file)",
                "themed game music from folk to electronic"),
    MusicSource("frozen-bubble-data", "usr/share/games/frozen-bubble/snd", "GPL-2",
                "the game's music files (*zik*), which training/negatives.py leaves out of its effects"),
)
assert not {s.package for s in SOURCES} & EXCLUDED_PACKAGES


@dataclass(frozen=True)
class MusicExcerpt:
    """One excerpt of one track: ``make(sample_rate)`` decodes it (mono float32)."""

    clip_id: str
    package: str
    track: str
    offset_s: float
    make: Callable[[int], np.ndarray]


def fetch(source: MusicSource, root: Path = DEFAULT_ROOT) -> Path:
    """The unpacked package (downloaded and unpacked on the first call); raises with the reason otherwise."""
    if source.package in EXCLUDED_PACKAGES:
        raise ValueError(f"{source.package}: an evaluation fixture's package, never trained on")
    unpacked = root / source.package
    done = unpacked / ".unpacked"
    if done.is_file():
        return unpacked
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not available: the music sources are Debian packages")
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{source.package}_*.deb"))
    if not found:
        result = subprocess.run(["apt-get", "download", source.package], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{source.package}_*.deb"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"apt-get download {source.package} failed: {result.stderr.strip()[-300:]}")
    if unpacked.exists():
        shutil.rmtree(unpacked)
    subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(unpacked)], check=True, capture_output=True)
    if source.archive:
        with zipfile.ZipFile(unpacked / source.archive) as archive:
            members = [m for m in archive.namelist() if m.startswith(source.folder + "/")
                       and m.lower().endswith(AUDIO_SUFFIXES)]
            archive.extractall(unpacked / "archive", members)
    done.write_text(found[-1].name + "\n")
    return unpacked


def copyright_file(source: MusicSource, root: Path = DEFAULT_ROOT) -> Path:
    """The package's own licence file, as unpacked."""
    return root / source.package / "usr/share/doc" / source.package / "copyright"


def tracks(source: MusicSource, root: Path = DEFAULT_ROOT, limit: int = TRACKS_PER_PACKAGE) -> list[Path]:
    """At most ``limit`` music files of the package, spread evenly over its sorted list."""
    base = root / source.package / ("archive" if source.archive else "") / source.folder
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if source.package == "frozen-bubble-data":
        files = [p for p in files if "zik" in p.name]
    if source.package == "megaglest-data":
        files = [p for p in files if "/music/" in p.as_posix()]
    if len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit).round()]
    return files


def excerpt_offsets(duration_s: float, seconds: float = SEGMENT_SECONDS, segments: int = SEGMENTS) -> list[float]:
    """Where a track's excerpts start: early (after :data:`EARLY_OFFSET_S`), then the middle; one excerpt of
    a track too short for two, the whole track if shorter than one."""
    if duration_s <= seconds + EARLY_OFFSET_S:
        return [0.0]
    offsets = [EARLY_OFFSET_S]
    if segments > 1 and duration_s >= EARLY_OFFSET_S + 2 * seconds:
        offsets.append(max(EARLY_OFFSET_S + seconds, duration_s / 2 - seconds / 2))
    return offsets


def _excerpt(path: Path, offset_s: float, seconds: float, store: Path) -> Callable[[int], np.ndarray]:
    """The excerpt's audio: decoded up to its end only, and kept in ``store`` (16-bit, a few hundred kB) since
    every variant of the feature cache asks for it."""

    def make(sample_rate: int) -> np.ndarray:
        from tagger.decode import decode_blocks

        kept = store / f"{sample_rate}" / f"{path.stem}@{offset_s:.0f}.npy"
        if kept.is_file():
            return np.load(kept).astype(np.float32) / 32767
        start, stop = int(offset_s * sample_rate), int((offset_s + seconds) * sample_rate)
        blocks, have = [], 0
        for block in decode_blocks(path, sample_rate):
            blocks.append(block)
            have += block.size
            if have >= stop:
                break
        audio = np.concatenate(blocks)[start:stop] if blocks else np.zeros(0, np.float32)
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_suffix(".tmp.npy")
        np.save(tmp, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
        tmp.replace(kept)
        return audio

    return make


def excerpts(sources: tuple[MusicSource, ...] = SOURCES, root: Path = DEFAULT_ROOT,
             seconds: float = SEGMENT_SECONDS, log: Callable[[str], None] = print) -> list[MusicExcerpt]:
    """Every excerpt of every source (fetched on the first call). A package that cannot be fetched is
    reported and left out; the rest goes on."""
    from tagger.decode import probe

    out: list[MusicExcerpt] = []
    for source in sources:
        try:
            fetch(source, root)
        except Exception as exc:  # one package missing (offline, renamed) leaves the others usable
            log(f"music source {source.package} left out: {exc}")
            continue
        base = root / source.package
        for path in tracks(source, root):
            try:
                duration = probe(path).duration_s or 0.0
            except Exception as exc:  # an unreadable file in a package is skipped, not fatal
                log(f"{path}: skipped ({exc})")
                continue
            name = path.relative_to(base).as_posix()
            for offset in excerpt_offsets(duration, seconds):
                out.append(MusicExcerpt(f"package/{source.package}/{Path(name).stem}@{offset:.0f}",
                                        source.package, name, offset,
                                        _excerpt(path, offset, seconds, base / "excerpts")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help=f"where packages go (default {DEFAULT_ROOT})")
    args = parser.parse_args(argv)
    root = Path(args.root)
    clips = excerpts(root=root)
    for source in SOURCES:
        mine = [c for c in clips if c.package == source.package]
        print(f"{source.package:24s} {len({c.track for c in mine}):3d} tracks {len(mine):3d} excerpts "
              f"licence {source.licence} ({copyright_file(source, root)})")
    print(f"{len(clips)} excerpts of {SEGMENT_SECONDS:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
