"""A live source without a sound card: a file or an HTTP/Icecast stream played through the live path.

``genre-tagger daemon --live-file PATH|URL [--loop]`` (``[live] file``, ``file_loop``): the audio is
decoded with PyAV (FFmpeg reads files and http(s):// streams alike), handed to a
:class:`service.live.LiveTagger` in blocks of ``block_seconds`` and paced to real time, so the
updates, changes and latency are those of a real capture. A file ends (or starts over with
``loop``); a stream that stops or cannot be reached is reopened with exponential backoff, as a lost
sound card is.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from service.live import ChangeSettings, LiveSink, LiveSource, LiveTagger
from tagger.decode import decode_blocks
from tagger.pipeline import Tagger

log = logging.getLogger(__name__)
NETWORK_TIMEOUT_S = 10.0  # to connect, and between two reads of a stream


def is_url(location: str) -> bool:
    return location.split("://", 1)[0].lower() in ("http", "https", "icecast", "rtmp", "rtsp", "udp", "tcp") \
        and "://" in location


def redact(location: str) -> str:
    """``location`` without a password (``http://user:secret@host/`` → ``http://user:***@host/``), for logs
    and status messages."""
    if not is_url(location):
        return location
    parts = urllib.parse.urlsplit(location)
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def stream_blocks(url: str, sample_rate: int, block_seconds: float) -> Iterator[np.ndarray]:
    """Decode a network stream to mono float32 blocks at ``sample_rate`` Hz (the channels' mean)."""
    try:
        container = av.open(url, mode="r", timeout=(NETWORK_TIMEOUT_S, NETWORK_TIMEOUT_S))
    except av.error.FFmpegError as exc:
        raise ConnectionError(f"cannot open {redact(url)}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if not container.streams.audio:
            raise ConnectionError(f"{redact(url)}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=sample_rate)
        block = max(1, round(block_seconds * sample_rate))
        pending = np.zeros(0, dtype=np.float32)
        for packet in container.demux(stream):
            for frame in packet.decode():
                for out in resampler.resample(frame):
                    pending = np.concatenate([pending, out.to_ndarray().mean(axis=0, dtype=np.float32)])
                while pending.size >= block:
                    yield pending[:block]
                    pending = pending[block:]
        if pending.size:
            yield pending
    finally:
        container.close()


class LiveFile(LiveSource):
    """Play ``location`` (a path or URL) in real time into a :class:`LiveTagger`, as a live source.

    Args:
        location: an audio file, or an http(s):// stream (an Icecast mount, say).
        loop: start a file over when it ends (a stream is always reopened).
        block_seconds: the block handed to the live path at a time, seconds (as a capture's block).
        level_floor: raise input under the model's level floor (see :class:`service.live.LiveSource`).
    """

    def __init__(self, tagger: Tagger, sink: LiveSink, location: str, source: str = "file", loop: bool = False,
                 changes: ChangeSettings | None = None, block_seconds: float = 0.05,
                 top_k: int = 5, level_floor: bool = True) -> None:
        super().__init__(tagger, sink, source, changes, block_seconds, top_k, level_floor)
        self.location = location
        self.loop = loop
        self.shown = redact(location)  # the location as logs and status messages show it
        self.status.device = self.shown
        self._live: LiveTagger | None = None  # one for the whole run: a reconnected stream continues it

    def _failed(self, exc: Exception, backoff: float) -> None:
        self.status.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.warning("live input %s (%s) failed: %s; retrying in %.1f s", self.source, self.shown,
                    self.status.error, backoff)

    def _once(self, stop: threading.Event) -> bool:
        """Play once (a file: to its end, as often as ``loop`` asks); True when it ended for good."""
        rate = self.tagger.sample_rate
        live = self._live = self._live or self._tagger(rate)
        url = is_url(self.location)
        while True:
            blocks = stream_blocks(self.location, rate, self.block_seconds) if url else \
                decode_blocks(Path(self.location).expanduser(), rate, self.block_seconds)
            origin = time.monotonic()
            played = 0
            for block in blocks:
                if not self.status.running:
                    self.status.running, self.status.error = True, ""
                    log.info("live input %s: playing %s in real time%s", self.source, self.shown,
                             ", looping" if self.loop and not url else "")
                delay = origin + played / rate - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return True
                if stop.is_set():
                    return True
                self._feed(live, block, time.monotonic())
                played += block.size
                self.status.updates += 1
            if url:
                raise ConnectionError("the stream ended")
            if not self.loop:
                log.info("live input %s: %s ended (%.1f s played)", self.source, self.shown, played / rate)
                return True
