"""Coverage: how much of each track is analysed, and decoding only those parts by seeking.

``full`` analyses every second. ``excerpts:KxS`` analyses K excerpts of S seconds spread over the track
(centred at 1/2K, 3/2K, … of its length), each decoded after a seek (FFmpeg reads the packets from the
nearest seek point before it, not the whole file). A track shorter than ``FULL_BELOW`` × K × S is
analysed in full: its excerpts would cover most of it anyway. Excerpts are independent stretches of
audio: no window spans two of them, and the track's estimate is the mean over all their windows, as for
a whole track. ``docs/scaling.md`` has the agreement with full coverage and the speed-up measured here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tagger import decode as _decode  # its private helpers: open, stream, info, resampler
from tagger.decode import DEFAULT_BLOCK_SECONDS, decode_blocks
from tagger.errors import ConfigError, DecodeError

# Excerpts are used only when they cover at most 1/FULL_BELOW (two thirds) of the track.
FULL_BELOW = 1.5

_EXCERPTS = re.compile(r"^excerpts:(\d+)\s*[x×]\s*(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Coverage:
    """How much of a track to analyse: ``excerpts`` excerpts of ``seconds`` s each, or (0) all of it."""

    excerpts: int = 0
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str | Coverage | None) -> Coverage:
        """``full`` or ``excerpts:KxS`` (K ≥ 1 excerpts of S ≥ 3 s, e.g. ``excerpts:3x30``)."""
        if isinstance(text, Coverage):
            return text
        value = (text or "full").strip().lower()
        if value == "full":
            return FULL
        match = _EXCERPTS.match(value)
        if not match:
            raise ConfigError(f"coverage {text!r}: expected 'full' or 'excerpts:KxS' (e.g. excerpts:3x30)")
        count, seconds = int(match[1]), float(match[2])
        if count < 1 or seconds < 3.0:
            raise ConfigError(f"coverage {text!r}: needs at least 1 excerpt of at least 3 seconds")
        return cls(count, seconds)

    @property
    def full(self) -> bool:
        return self.excerpts == 0

    def __str__(self) -> str:
        return "full" if self.full else f"excerpts:{self.excerpts}x{self.seconds:g}"

    def spans(self, duration_s: float | None) -> list[tuple[float, float]] | None:
        """(start, length) of each excerpt in seconds for a track of ``duration_s``; None: analyse it all
        (full coverage, an unknown length, or a track shorter than ``FULL_BELOW`` × the excerpts)."""
        if self.full or duration_s is None or duration_s < FULL_BELOW * self.excerpts * self.seconds:
            return None
        return [(max(0.0, (i + 0.5) * duration_s / self.excerpts - self.seconds / 2), self.seconds)
                for i in range(self.excerpts)]


FULL = Coverage()


@dataclass(frozen=True)
class Segment:
    """Yielded by :func:`decode_coverage` before each excerpt's blocks: where the excerpt starts in the
    track, and the track's length as its container declares it (both in seconds)."""

    start_s: float
    track_s: float


@dataclass
class DecodeStats:
    """What :func:`decode_coverage` decoded: audio frames and their length in seconds (seeking keeps
    this near the excerpts' total rather than the track's length)."""

    frames: int = 0
    decoded_s: float = 0.0


def track_duration(path: str | Path) -> float | None:
    """The length the container declares, in seconds (None when it does not say)."""
    container = _decode._open(path)
    try:
        return _decode._info(container, _decode._audio_stream(container, path)).duration_s
    finally:
        container.close()


def decode_coverage(path: str | Path, sample_rate: int, block_seconds: float = DEFAULT_BLOCK_SECONDS,
                    coverage: str | Coverage = "full", stats: DecodeStats | None = None
                    ) -> Iterator[np.ndarray | Segment]:
    """Mono float32 blocks at ``sample_rate`` Hz of the parts of the file ``coverage`` asks for.

    Full coverage, an undeclared length or a track too short for its excerpts: exactly
    :func:`tagger.decode.decode_blocks` (and no :class:`Segment`). Excerpts: a :class:`Segment`, then
    that excerpt's blocks, for each excerpt in order; each is reached by seeking, and samples before its
    start are dropped. An excerpt past the real end of the file (a container that overstated its length)
    yields what there is. Raises :class:`DecodeError` for a file that cannot be read, or when no excerpt
    gave a sample.
    """
    coverage = Coverage.parse(coverage)
    spans = None if coverage.full else coverage.spans(track_duration(path))
    if spans is None:
        yield from decode_blocks(path, sample_rate, block_seconds)
        return
    block_samples = max(1, round(block_seconds * sample_rate))
    container = _decode._open(path)
    total = 0
    try:
        stream = _decode._audio_stream(container, path)
        _decode.check_truncation(container, path)
        track_s = _decode._info(container, stream).duration_s or 0.0
        offset_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for start_s, length_s in spans:
            yield Segment(start_s, track_s)
            for block in _decode_span(container, stream, sample_rate, start_s, offset_s,
                                      round(length_s * sample_rate), block_samples, stats):
                _decode.check_samples(path, block, round(start_s * sample_rate), sample_rate)
                total += block.size
                yield block
    except av.error.FFmpegError as exc:
        if _decode.is_url(path) and not isinstance(exc, av.error.InvalidDataError):
            raise DecodeError(path, _decode._url_problem(str(path), exc)) from None
        raise DecodeError(path, f"corrupt or unsupported audio ({_decode._ffmpeg_reason(exc)})") from None
    finally:
        container.close()
    if total == 0:
        raise DecodeError(path, "no audio samples could be decoded at the excerpts' positions")


def _decode_span(container: av.container.InputContainer, stream: av.audio.stream.AudioStream, sample_rate: int,
                 start_s: float, offset_s: float, need: int, block_samples: int,
                 stats: DecodeStats | None) -> Iterator[np.ndarray]:
    # Seek to the last seek point at or before the start, then drop what precedes it. A fresh resampler
    # for each span: its filter state must not carry audio from before the seek.
    container.seek(round((start_s + offset_s) / stream.time_base), stream=stream, backward=True)
    to_mono = _decode._mono_resampler(stream, sample_rate)
    skip: int | None = None
    pending: list[np.ndarray] = []
    held = 0
    emitted = 0
    for packet in container.demux(stream):
        for frame in packet.decode():
            if stats is not None:
                stats.frames += 1
                stats.decoded_s += frame.samples / (frame.sample_rate or sample_rate)
            if skip is None:
                frame_s = float(frame.pts * frame.time_base) - offset_s if frame.pts is not None else start_s
                skip = max(0, round((start_s - frame_s) * sample_rate))
            for mono in to_mono(frame):
                if skip:
                    dropped = min(skip, mono.size)
                    mono, skip = mono[dropped:], skip - dropped
                if mono.size:
                    pending.append(mono)
                    held += mono.size
            while held >= block_samples or (held and emitted + held >= need):
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                size = min(block_samples, need - emitted)
                block, rest = joined[:size], joined[size:]
                pending, held = ([rest] if rest.size else []), rest.size
                emitted += block.size
                yield block
                if emitted >= need:
                    return
    # The file ended inside the span: what is left of it, resampler flushed.
    for mono in to_mono(None):
        if skip:
            dropped = min(skip, mono.size)
            mono, skip = mono[dropped:], skip - dropped
        pending.append(mono)
    if pending and emitted < need:
        rest = np.concatenate(pending)[: need - emitted]
        if rest.size:
            yield rest
