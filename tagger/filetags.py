"""Genres in the audio files' own tags: read, plan and write them safely (mutagen).

Where each format keeps its genres, and what genre-tagger writes there:

``mp3`` (ID3v2)
    One ``TCON`` frame; several genres are NUL-separated values, which only ID3v2.4 can hold, so a
    written tag is ID3v2.4 (an ID3v2.3 tag is upgraded; mutagen translates its other frames, e.g.
    ``TYER`` → ``TDRC``). Provenance: ``TXXX:GENRE_TAGGER_MODEL``. An existing ID3v1 tag is updated
    from the v2 tag (its genre byte can hold one genre), none is added.
``flac``, ``ogg`` (Vorbis), ``opus`` (Vorbis comments)
    One ``GENRE=`` field per genre, kept where the first one was; provenance ``GENRE_TAGGER_MODEL=``.
    Every other field keeps its place and spelling.
``m4a``/``mp4`` (MP4 ``ilst``)
    The ``©gen`` atom with one value per genre. Some taggers also write a freeform
    ``----:com.apple.iTunes:GENRE`` atom: when a file has one, it gets the same values (so readers that
    prefer it agree), otherwise none is added; it is read when ``©gen`` is absent. A numeric ``gnre``
    atom is read by mutagen as ``©gen`` and written back as ``©gen``. Provenance:
    ``----:com.apple.iTunes:GENRE_TAGGER_MODEL``.
``wav``, ``aiff``
    An ID3v2.4 chunk (``id3 ``), as for mp3: mutagen and FFmpeg read it, and it holds several genres. A
    RIFF ``LIST/INFO`` chunk (``IGNR``) is left byte for byte (mutagen cannot write it and it holds a
    single string); FFmpeg reads both, and the chunk later in the file wins (a new ID3 chunk goes at the
    end, an existing one stays where it is).

FFmpeg (and PyAV's ``metadata``) joins several Vorbis ``GENRE`` fields with ``;`` but reports only the
first value of an ID3v2.4 ``TCON`` or MP4 ``©gen`` list; mutagen, TagLib and beets read every value.

Safety (:func:`write_state`): the tags are written into a copy beside the file (a hidden
``.NAME.PID.genre-tagger-tmp``), the copy is checked (tags read back, every other tag and picture
identical, the demuxed audio packets byte-identical), flushed to disk, and renamed over the file; a
kill at any moment leaves the old file or the new one. Mode, owner and extended attributes are kept;
the modification time is the write's, so players and servers notice the new tags. Files that are read-only, locked
by another program (``flock``), or hard-linked (a rename would split the links) are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagger.errors import TaggerError

PROVENANCE_KEY = "GENRE_TAGGER_MODEL"
POLICIES = ("if-empty", "merge", "replace")
DEFAULT_POLICY = "if-empty"
TEMP_SUFFIX = ".genre-tagger-tmp"
_MP4_GENRE = "©gen"
_MP4_FREEFORM_GENRE = "----:com.apple.iTunes:GENRE"
_MP4_PROVENANCE = f"----:com.apple.iTunes:{PROVENANCE_KEY}"
_ID3_PROVENANCE = f"TXXX:{PROVENANCE_KEY}"


class TagWriteError(TaggerError):
    """A file whose tags could not be read or written; the message is one line naming the file."""


class FileSkipped(TagWriteError):
    """A file left alone on purpose (read-only, locked, hard-linked, changed since it was tagged).

    ``lasting``: trying again will not help until the user changes something (a read-only file, an
    unsupported format, hard links); False for what passes (a lock, a change since it was tagged).
    """

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class GenreState:
    """The genre-related tags of a file.

    Attributes:
        genres: the genre values, in file order (empty: no genre tag).
        provenance: the ``GENRE_TAGGER_MODEL`` value ("model version"), None when absent.
        alternate: the MP4 freeform ``GENRE`` atom's values, None when the file has none (other formats: None).
    """

    genres: tuple[str, ...] = ()
    provenance: str | None = None
    alternate: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"genres": list(self.genres), "provenance": self.provenance,
                "alternate": None if self.alternate is None else list(self.alternate)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenreState:
        alternate = data.get("alternate")
        return cls(tuple(data.get("genres") or ()), data.get("provenance"),
                   None if alternate is None else tuple(alternate))


def provenance_value(model: str, version: str) -> str:
    """The provenance tag's text: ``"<model> <version>"``."""
    return f"{model} {version}"


# -- choosing the genres --------------------------------------------------------------------------------


def _key(genre: str) -> str:
    return genre.strip().casefold()


def unique(genres: Iterable[str]) -> tuple[str, ...]:
    """Genres without blanks or case-insensitive repeats, first spelling kept, order kept."""
    seen: set[str] = set()
    out = []
    for g in genres:
        g = g.strip()
        if g and _key(g) not in seen:
            seen.add(_key(g))
            out.append(g)
    return tuple(out)


def decided_genres(outputs: Mapping[str, Any], names: Sequence[str] | None = None,
                   music: bool = True) -> tuple[str, ...]:
    """The genres a result allows writing: the decided labels of the chosen outputs, best first.

    ``outputs`` maps output names to :class:`~tagger.ensemble.OutputEstimate` objects or their
    ``as_dict()`` form. ``names``: the outputs to use (default: the first one, the model's main
    genre output). An uncertain output adds nothing, and a result that is not music (``music``
    False) gives nothing at all: a guess never becomes a tag.
    """
    if not music or not outputs:
        return ()
    chosen = list(names) if names else [next(iter(outputs))]
    scored: list[tuple[float, str]] = []
    for name in chosen:
        if name not in outputs:
            raise TagWriteError(f"output {name!r} is not one of the model's ({', '.join(outputs)})")
        est = outputs[name]
        if isinstance(est, Mapping):
            uncertain, decided, scores = est["uncertain"], est["decided"], est.get("scores", {})
        else:
            uncertain, decided = est.uncertain, est.decided
            scores = {s.label: s.score for s in est.scores}
        if uncertain:
            continue
        scored += [(float(scores.get(label, 0.0)), label) for label in decided]
    scored.sort(key=lambda pair: -pair[0])  # stable: equal scores keep output order
    return unique(label for _, label in scored)


def plan_genres(current: GenreState, new: Sequence[str], policy: str,
                ours: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """The genres a file should hold after a write, or None to leave its genres alone.

    Args:
        current: the file's tags now.
        new: the decided genres (empty: nothing decided, so nothing to write).
        policy: ``if-empty`` writes only into a file without genres, or one whose genres are exactly
            those genre-tagger wrote last (``ours``); ``merge`` keeps the user's genres (the file's, less
            the ones genre-tagger wrote last) and adds the new ones after them; ``replace`` writes the
            new genres alone.
        ours: the genres genre-tagger wrote into this file last time (None: never).
    """
    if policy not in POLICIES:
        raise TagWriteError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    new = unique(new)
    if not new:
        return None
    ours_keys = {_key(g) for g in ours or ()}
    has_ours = ours is not None and {_key(g) for g in current.genres} == ours_keys and current.genres != ()
    if policy == "replace":
        return new
    if policy == "if-empty":
        return new if not current.genres or has_ours else None
    users = [g for g in current.genres if _key(g) not in ours_keys] if ours is not None else list(current.genres)
    return unique([*users, *new])


# -- reading and writing tags with mutagen ---------------------------------------------------------------


def _open(path: Path) -> Any:
    import mutagen

    try:
        f = mutagen.File(path)
    except mutagen.MutagenError as exc:
        raise TagWriteError(f"{path}: cannot read tags ({exc})") from None
    except OSError as exc:
        raise TagWriteError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if f is None:
        raise FileSkipped(f"{path}: not a format whose tags genre-tagger writes (mp3, flac, ogg, opus, m4a, wav, "
                          "aiff), tags not written", lasting=True)
    kind = _kind(f)
    if kind is None:
        raise FileSkipped(f"{path}: {type(f).__name__} files are not written (mp3, flac, ogg, opus, m4a, wav, aiff "
                          "are), tags not written", lasting=True)
    return f


def _kind(f: Any) -> str | None:
    from mutagen.aiff import AIFF
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    if isinstance(f, MP3 | WAVE | AIFF):
        return "id3"
    if isinstance(f, FLAC | OggVorbis | OggOpus):
        return "vorbis"
    if isinstance(f, MP4):
        return "mp4"
    return None


def _state(f: Any) -> GenreState:
    kind = _kind(f)
    tags = f.tags
    if tags is None:
        return GenreState()
    if kind == "id3":
        genres = tuple(v for frame in tags.getall("TCON") for v in frame.text)
        prov = tags.getall(_ID3_PROVENANCE)
        return GenreState(genres, str(prov[0].text[0]) if prov and prov[0].text else None)
    if kind == "vorbis":
        genres = tuple(v for k, v in tags if k.lower() == "genre")
        prov = [v for k, v in tags if k.upper() == PROVENANCE_KEY]
        return GenreState(genres, prov[0] if prov else None)
    genres = tuple(str(v) for v in tags.get(_MP4_GENRE, []))
    alternate = tags.get(_MP4_FREEFORM_GENRE)
    alternate_values = None if alternate is None else tuple(bytes(v).decode("utf-8", "replace") for v in alternate)
    if not genres and alternate_values:
        genres = alternate_values
    prov = tags.get(_MP4_PROVENANCE)
    return GenreState(genres, bytes(prov[0]).decode("utf-8", "replace") if prov else None, alternate_values)


def read_state(path: str | Path) -> GenreState:
    """The genre tags of ``path`` (raises :class:`TagWriteError` when they cannot be read)."""
    return _state(_open(Path(path)))


def _set_vorbis(tags: Any, key: str, values: Sequence[str]) -> None:
    """Replace every ``key`` field (case-insensitive) with ``values`` where the first one stood."""
    pairs = list(tags)
    positions = [i for i, (k, _) in enumerate(pairs) if k.lower() == key.lower()]
    name = pairs[positions[0]][0] if positions else key
    rest = [p for p in pairs if p[0].lower() != key.lower()]
    at = sum(1 for i in range(positions[0]) if pairs[i][0].lower() != key.lower()) if positions else len(rest)
    del tags[:]
    tags.extend([*rest[:at], *((name, v) for v in values), *rest[at:]])


def _apply(f: Any, target: GenreState) -> None:
    kind = _kind(f)
    if f.tags is None:
        f.add_tags()
    tags = f.tags
    if kind == "id3":
        from mutagen.id3 import TCON, TXXX

        tags.delall("TCON")
        if target.genres:
            tags.add(TCON(encoding=3, text=list(target.genres)))
        tags.delall(_ID3_PROVENANCE)
        if target.provenance is not None:
            tags.add(TXXX(encoding=3, desc=PROVENANCE_KEY, text=[target.provenance]))
    elif kind == "vorbis":
        _set_vorbis(tags, "GENRE", target.genres)
        _set_vorbis(tags, PROVENANCE_KEY, [] if target.provenance is None else [target.provenance])
    else:
        from mutagen.mp4 import AtomDataType, MP4FreeForm

        def freeform(values: Sequence[str]) -> list:
            return [MP4FreeForm(v.encode("utf-8"), AtomDataType.UTF8) for v in values]

        if target.genres:
            tags[_MP4_GENRE] = list(target.genres)
        else:
            tags.pop(_MP4_GENRE, None)
        if target.alternate is None:
            tags.pop(_MP4_FREEFORM_GENRE, None)
        else:
            tags[_MP4_FREEFORM_GENRE] = freeform(target.alternate)
        if target.provenance is None:
            tags.pop(_MP4_PROVENANCE, None)
        else:
            tags[_MP4_PROVENANCE] = freeform([target.provenance])


def _save(f: Any, path: Path) -> None:
    if _kind(f) == "id3":
        f.save(path, v2_version=4)
    else:
        f.save(path)


def with_genres(current: GenreState, genres: Sequence[str], provenance: str | None) -> GenreState:
    """``current`` holding ``genres`` (and the MP4 freeform atom, where the file has one, the same)."""
    alternate = None if current.alternate is None else tuple(genres)
    return GenreState(tuple(genres), provenance, alternate)


def _other_tags(f: Any) -> list:
    """Everything in the tags except the genre and provenance ones, comparable with ``==``."""
    kind = _kind(f)
    tags = f.tags
    info = [getattr(f.info, a, None) for a in ("length", "sample_rate", "channels", "bitrate", "bits_per_sample")]
    if kind == "id3":
        frames = sorted((k, repr(v)) for k, v in (tags or {}).items() if k != "TCON" and k != _ID3_PROVENANCE)
        return [info, frames]
    if kind == "vorbis":
        fields = [(k, v) for k, v in tags or () if k.lower() != "genre" and k.upper() != PROVENANCE_KEY]
        blocks = []
        for block in getattr(f, "metadata_blocks", []):
            if type(block).__name__ not in ("VCFLACDict", "Padding"):
                blocks.append((type(block).__name__, block.write()))
        return [info, fields, blocks]
    items = sorted((k, [(bytes(v), getattr(v, "imageformat", None), getattr(v, "dataformat", None))
                        if isinstance(v, bytes) else v for v in (vals if isinstance(vals, list) else [vals])])
                   for k, vals in (tags or {}).items()
                   if k not in (_MP4_GENRE, _MP4_FREEFORM_GENRE, _MP4_PROVENANCE))
    return [info, items]


def audio_digest(path: str | Path) -> str:
    """BLAKE2b of the audio packets of ``path``'s first audio stream, as FFmpeg demuxes them.

    Identical packets decode to identical samples; the digest ignores tags and container framing
    (Ogg page numbers, MP4 chunk offsets), which a tag write may legitimately move.
    """
    import av

    digest = hashlib.blake2b(digest_size=16)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                if packet.size:
                    digest.update(bytes(packet))
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise TagWriteError(f"{path}: cannot read its audio ({exc})") from None
    return digest.hexdigest()


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def remove_stale_temps(path: Path) -> int:
    """Delete temp copies of ``path`` left by writers that died (their process is gone)."""
    removed = 0
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+){re.escape(TEMP_SUFFIX)}$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = pattern.match(entry.name)
            if not m:
                continue
            pid = int(m.group(1))
            try:
                os.kill(pid, 0)
                alive = pid != os.getpid()
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
            if not alive:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class WriteResult:
    """What :func:`write_state` did: ``changed`` False when the file already held ``target``."""

    path: Path
    before: GenreState
    after: GenreState
    changed: bool
    stat: os.stat_result | None = None


def check_writable(path: Path) -> None:
    """Raise :class:`FileSkipped` for files genre-tagger must not rewrite."""
    if not path.is_file():
        raise FileSkipped(f"{path}: not a file", lasting=True)
    st = path.stat()
    if not os.access(path, os.W_OK) or not st.st_mode & 0o222:
        raise FileSkipped(f"{path}: read-only file, tags not written", lasting=True)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise FileSkipped(f"{path}: its folder is read-only, tags not written", lasting=True)
    if st.st_nlink > 1:
        raise FileSkipped(f"{path}: has {st.st_nlink} hard links (replacing it would split them), tags not written",
                          lasting=True)


def write_state(path: str | Path, target: GenreState, *, expected: GenreState | None = None,
                before_replace: Callable[[Path, os.stat_result], None] | None = None) -> WriteResult:
    """Atomically make ``path``'s genre tags ``target``, leaving everything else as it was.

    Args:
        path: the audio file (a symbolic link is followed: its target is rewritten, the link kept).
        target: the genre state to write.
        expected: when given, the file's genre state must still be this one (else :class:`FileSkipped`:
            someone changed the tags since the plan was made).
        before_replace: called with the finished temp copy and its ``stat`` after it is flushed and
            before it replaces the file (record its new size, mtime and fingerprint there, so a watcher
            that sees the rename knows it); may raise :class:`FileSkipped` to abandon the write.

    The copy is read back before the rename (genres, every other tag, the audio packets). Returns a
    :class:`WriteResult`; a file that already holds ``target`` is not rewritten at all.
    Raises :class:`FileSkipped` or :class:`TagWriteError`; the file is then unchanged.
    """
    path = Path(os.path.realpath(path))
    check_writable(path)
    remove_stale_temps(path)
    try:
        lock_fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise TagWriteError(f"{path}: cannot open ({exc.strerror})") from None
    temp = _temp_path(path)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FileSkipped(f"{path}: locked by another program, tags not written") from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # A filesystem without locks (some network mounts): the re-check before the rename still holds.
        original_stat = os.fstat(lock_fd)
        f = _open(path)
        before = _state(f)
        if expected is not None and before != expected:
            raise FileSkipped(f"{path}: its genre tags changed since they were read, tags not written")
        if before == target:
            return WriteResult(path, before, target, False, original_stat)
        others = _other_tags(f)
        digest = audio_digest(path)
        _copy(path, temp, original_stat)
        try:
            f = _open(temp)
            _apply(f, target)
            _save(f, temp)
            _verify(path, temp, target, others, digest)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            new_stat = os.stat(temp)
            now = os.fstat(lock_fd)
            if (now.st_size, now.st_mtime_ns) != (original_stat.st_size, original_stat.st_mtime_ns) or \
                    os.stat(path).st_ino != original_stat.st_ino:
                raise FileSkipped(f"{path}: changed while its tags were being written, tags not written")
            if before_replace is not None:
                before_replace(temp, new_stat)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_dir(path.parent)
        return WriteResult(path, before, target, True, new_stat)
    except OSError as exc:
        raise TagWriteError(f"{path}: cannot write tags ({exc.strerror or exc})") from None
    except Exception as exc:
        if isinstance(exc, TaggerError):
            raise
        # mutagen raises its own errors for damaged tags; name the file, keep it untouched.
        raise TagWriteError(f"{path}: cannot write tags ({type(exc).__name__}: {exc})") from None
    finally:
        os.close(lock_fd)


def _copy(src: Path, dest: Path, st: os.stat_result) -> None:
    import shutil

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1024 * 1024)
    os.chmod(dest, st.st_mode & 0o7777)
    if os.geteuid() == 0 or st.st_uid == os.geteuid():
        with contextlib.suppress(OSError):  # the group may not be ours to give
            os.chown(dest, st.st_uid, st.st_gid)
    # Extended attributes (ACLs, user.* labels, SELinux contexts) follow where the filesystem allows.
    with contextlib.suppress(OSError):
        for name in os.listxattr(src):
            with contextlib.suppress(OSError):
                os.setxattr(dest, name, os.getxattr(src, name))


def _verify(path: Path, temp: Path, target: GenreState, others: list, digest: str) -> None:
    f = _open(temp)
    got = _state(f)
    if got != target:
        raise TagWriteError(f"{path}: the written genres read back as {list(got.genres)} instead of "
                            f"{list(target.genres)}; file left untouched")
    if _other_tags(f) != others:
        raise TagWriteError(f"{path}: writing the genres would change other tags; file left untouched")
    if audio_digest(temp) != digest:
        raise TagWriteError(f"{path}: writing the genres would change the audio data; file left untouched")
