"""Real tags on real files for the tag-writer tests: cover art and ordinary tags added with mutagen,
snapshots of everything that must survive a genre write, and a hash of the decoded audio."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from pathlib import Path

import av
import mutagen

from tagger.filetags import PROVENANCE_KEY


def png(width: int = 4, height: int = 3) -> bytes:
    """A small valid PNG (red-green gradient), so pictures are real images."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in (60 * x, 80 * y, 0)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def add_tags(path: Path, genres: tuple[str, ...] = (), freeform_genre: tuple[str, ...] | None = None) -> None:
    """Title, artist, album, a comment, a custom field and a front cover, plus ``genres`` if given."""
    from mutagen.aiff import AIFF
    from mutagen.flac import FLAC, Picture
    from mutagen.id3 import APIC, COMM, TALB, TCON, TIT2, TPE1, TXXX
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4, AtomDataType, MP4Cover, MP4FreeForm
    from mutagen.wave import WAVE

    f = mutagen.File(path)
    cover = png()
    if isinstance(f, MP4):
        if f.tags is None:
            f.add_tags()
        f.tags.update({"©nam": ["Machine Wars (excerpt)"], "©ART": ["ASC"], "©alb": ["Test album"],
                       "covr": [MP4Cover(cover, imageformat=MP4Cover.FORMAT_PNG)],
                       "----:com.apple.iTunes:MOOD": [MP4FreeForm(b"tense", AtomDataType.UTF8)]})
        if genres:
            f.tags["©gen"] = list(genres)
        if freeform_genre is not None:
            f.tags["----:com.apple.iTunes:GENRE"] = [MP4FreeForm(g.encode(), AtomDataType.UTF8)
                                                     for g in freeform_genre]
    elif isinstance(f, MP3 | WAVE | AIFF):
        if f.tags is None:
            f.add_tags()
        for frame in (TIT2(encoding=3, text="Machine Wars (excerpt)"), TPE1(encoding=3, text="ASC"),
                      TALB(encoding=3, text="Test album"), COMM(encoding=3, lang="eng", desc="", text="a comment"),
                      TXXX(encoding=3, desc="MOOD", text="tense"),
                      APIC(encoding=3, mime="image/png", type=3, desc="cover", data=cover)):
            f.tags.add(frame)
        if genres:
            f.tags.add(TCON(encoding=3, text=list(genres)))
    else:  # Vorbis comments: flac, ogg, opus
        if f.tags is None:
            f.add_tags()
        picture = Picture()
        picture.type, picture.mime, picture.desc, picture.data = 3, "image/png", "cover", cover
        picture.width, picture.height, picture.depth = 4, 3, 24
        f.tags["TITLE"] = "Machine Wars (excerpt)"
        f.tags["ARTIST"] = "ASC"
        if genres:
            f.tags["GENRE"] = list(genres)
        f.tags["ALBUM"] = "Test album"
        f.tags["MOOD"] = "tense"
        if isinstance(f, FLAC):
            f.add_picture(picture)
        else:
            f.tags["METADATA_BLOCK_PICTURE"] = base64.b64encode(picture.write()).decode("ascii")
    if isinstance(f, MP3 | WAVE | AIFF):
        f.save(path, v2_version=4)
    else:
        f.save(path)


def snapshot(path: Path) -> dict:
    """Every tag mutagen sees (pictures included), with the genre ones apart, and FFmpeg's metadata."""
    f = mutagen.File(path)
    tags = f.tags
    genre_keys = {"TCON", f"TXXX:{PROVENANCE_KEY}", "©gen", "----:com.apple.iTunes:GENRE",
                  f"----:com.apple.iTunes:{PROVENANCE_KEY}", "genre", PROVENANCE_KEY.lower()}
    items = []
    if tags is not None:
        pairs = list(tags.items()) if hasattr(tags, "items") and not isinstance(tags, list) else list(tags)
        for key, value in pairs:
            if key.lower() in {k.lower() for k in genre_keys}:
                continue
            items.append((key, repr(value)))
    pictures = [(p.type, p.mime, p.data) for p in getattr(f, "pictures", [])]
    with av.open(str(path)) as container:
        metadata = {**container.metadata, **container.streams.audio[0].metadata}
    ffmpeg = {k: v for k, v in metadata.items() if k.lower() not in ("genre", PROVENANCE_KEY.lower())}
    return {"tags": sorted(items), "pictures": pictures, "ffmpeg": ffmpeg}


def ffmpeg_genre(path: Path) -> str | None:
    """The genre FFmpeg (PyAV ``container.metadata``, or the stream's for Ogg) reports."""
    with av.open(str(path)) as container:
        metadata = {**container.metadata, **container.streams.audio[0].metadata}
    return next((v for k, v in metadata.items() if k.lower() == "genre"), None)


def pcm_digest(path: Path) -> str:
    """SHA-256 of every decoded sample (the codec's own output format, no resampling)."""
    digest = hashlib.sha256()
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            digest.update(frame.to_ndarray().tobytes())
    return digest.hexdigest()
