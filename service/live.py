"""Live audio: PortAudio capture into a ring buffer, a consumer that tags it, and genre-change events.

The PortAudio callback only copies samples into a preallocated ring buffer: it never blocks, never
allocates and never runs inference. A consumer thread downmixes, resamples to the model's rate (FFmpeg's
swresample through PyAV), feeds a :class:`tagger.TagStream` with a recent horizon, and hands its sink
(the daemon's :class:`service.sinks.SinkHub`) a :class:`service.events.LiveUpdate` for every hop and a
:class:`service.events.GenreChanged` when the top genre changes and holds for ``hysteresis`` hops.
A lost or failing device is reopened with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import av
import numpy as np

from service.events import GenreChanged, LiveUpdate
from tagger.pipeline import SliceResult, Tagger

log = logging.getLogger(__name__)
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class RingBuffer:
    """Single-producer, single-consumer ring of float32 frames [capacity, channels].

    ``write`` (the audio callback) and ``read`` (the consumer) touch disjoint index variables; under
    CPython's GIL an int assignment is atomic, so no lock is needed and the writer never waits.
    """

    def __init__(self, capacity_frames: int, channels: int) -> None:
        self.data = np.zeros((capacity_frames, channels), dtype=np.float32)
        self.capacity = capacity_frames
        self.written = 0  # frames ever written (only the writer changes it)
        self.consumed = 0  # frames ever read (only the reader changes it)
        self.overflows = 0  # blocks dropped because the reader fell a whole buffer behind
        self.last_write_time = 0.0

    def write(self, block: np.ndarray) -> None:
        n = block.shape[0]
        if self.written - self.consumed + n > self.capacity:
            self.overflows += 1
            return
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.data[start:start + first] = block[:first]
        if first < n:
            self.data[: n - first] = block[first:]
        self.last_write_time = time.monotonic()
        self.written += n

    def read(self) -> np.ndarray:
        """Everything written since the last read, [frames, channels] (a copy)."""
        end = self.written
        n = end - self.consumed
        if n <= 0:
            return self.data[:0].copy()
        start = self.consumed % self.capacity
        first = min(n, self.capacity - start)
        out = np.concatenate([self.data[start:start + first], self.data[: n - first]]) if first < n \
            else self.data[start:start + n].copy()
        self.consumed = end
        return out


class StreamResampler:
    """Mono float32 blocks at ``rate_in`` → mono float32 at ``rate_out`` (swresample, stateful)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self._resampler = None if rate_in == rate_out else av.AudioResampler(format="flt", layout="mono",
                                                                              rate=rate_out)
        self._pts = 0

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        if self._resampler is None or mono.size == 0:
            return mono.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate = self.rate_in
        frame.pts = self._pts
        self._pts += mono.size
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@dataclass
class ChangeDetector:
    """Announce a new top genre only after it held the top for ``hysteresis`` consecutive updates.

    An update without a label to announce (``None``: the genre is uncertain) breaks a candidate's run
    and keeps the current label: an uncertain estimate never becomes a change (contract §3)."""

    hysteresis: int = 3
    current: str | None = None
    _candidate: str | None = None
    _count: int = 0

    def update(self, top: str | None) -> tuple[str | None, str] | None:
        """Feed one update's top label (None when uncertain); return (previous, new) when a change is
        announced."""
        if top is None or top == self.current:
            self._candidate, self._count = None, 0
            return None
        if top == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = top, 1
        if self._count >= self.hysteresis:
            previous, self.current = self.current, top
            self._candidate, self._count = None, 0
            return previous, top
        return None


@dataclass
class LiveStatus:
    running: bool = False
    device: str = ""
    overflows: int = 0
    restarts: int = 0
    error: str = ""
    updates: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {"running": self.running, "device": self.device, "overflows": self.overflows, "restarts": self.restarts}
        if self.error:
            d["error"] = self.error
        return d


class LiveSink(Protocol):
    """What a live source reports to: a :class:`service.sinks.Sink` or the daemon's hub."""

    def live(self, event: LiveUpdate) -> None: ...

    def genre_changed(self, event: GenreChanged) -> None: ...


class LiveTagger:
    """Tag an endless stream of (possibly multichannel) blocks; report updates and changes to ``sink``.

    Independent of PortAudio, so files, sockets or tests can drive it too.
    """

    def __init__(self, tagger: Tagger, source: str, rate_in: int, horizon_seconds: float | None,
                 hysteresis: int, sink: LiveSink, top_k: int = 5) -> None:
        self.tagger = tagger
        self.source = source
        # Incremental inference where the model allows it: per block, only the new frames' features.
        self.stream = tagger.stream(horizon_seconds=horizon_seconds, eager=True, fast=tagger.fast)
        self.resample = StreamResampler(rate_in, tagger.sample_rate)
        self.changes = ChangeDetector(hysteresis)
        self.sink = sink
        self.top_k = top_k
        self.horizon_seconds = horizon_seconds
        self.labels = {o.name: tuple(o.labels) for o in tagger.manifest.outputs}

    def feed(self, block: np.ndarray, captured_at: float | None = None) -> list[SliceResult]:
        """Add frames [n] or [n, channels] at the input rate; report to the sink if slices completed.

        ``captured_at``: :func:`time.monotonic` when the newest frame was captured (for ``latency_ms``)."""
        mono = block.mean(axis=1) if block.ndim == 2 else block
        results = self.stream.feed(self.resample(mono))
        if results:
            self._publish(results, captured_at)
        return results

    def _publish(self, results: list[SliceResult], captured_at: float | None) -> None:
        update = LiveUpdate(
            source=self.source, stream_s=self.stream.seconds_in, horizon_s=self.horizon_seconds,
            slices=tuple(results), estimates=self.stream.estimate(), labels=self.labels, top_k=self.top_k,
            music=self.stream.music(), music_probability=self.stream.music_probability(),
            latency_ms=1000 * (time.monotonic() - captured_at) if captured_at is not None else None)
        self.sink.live(update)
        # Only a decided genre, or "no music", can be announced: an uncertain top is no news.
        change = self.changes.update(update.top if not update.music or not update.uncertain else None)
        if change:
            previous, current = change
            self.sink.genre_changed(GenreChanged(
                source=self.source, stream_s=update.stream_s, previous=previous, current=current,
                confidence=update.confidence, uncertain=False, music=update.music))


class LiveUnavailable(Exception):
    """A live input that cannot work here until the user acts (a missing package): not retried."""


class LiveSource:
    """A live input driving a :class:`LiveTagger` from its own thread, restarted after each failure with a
    growing pause (``BACKOFF_START_S`` doubling to ``BACKOFF_MAX_S``; back to the start after a good run).

    Subclasses say how to play the input once (:meth:`_once`) and how to report a failure (:meth:`_failed`).

    Args:
        source: the name in topics (``live.<source>``).
        horizon_seconds: the running ensemble's span, seconds (None: the whole stream).
        hysteresis: consecutive hops a new top genre must hold before a change is announced.
        block_seconds: the block handed to the live path at a time, seconds.
        top_k: labels per output in the messages.
    """

    def __init__(self, tagger: Tagger, sink: LiveSink, source: str, horizon_seconds: float | None = 4.0,
                 hysteresis: int = 1, block_seconds: float = 0.05, top_k: int = 5) -> None:
        self.tagger = tagger
        self.sink = sink
        self.source = source
        self.horizon_seconds = horizon_seconds
        self.hysteresis = hysteresis
        self.block_seconds = block_seconds
        self.top_k = top_k
        self.status = LiveStatus()
        self.finished = threading.Event()  # set when the thread has ended (stopped, or the input ended for good)
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(stop,), name=f"live-{self.source}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def _tagger(self, rate_in: int) -> LiveTagger:
        return LiveTagger(self.tagger, self.source, rate_in, self.horizon_seconds, self.hysteresis, self.sink,
                          self.top_k)

    def _once(self, stop: threading.Event) -> bool:
        """Play the input until it stops or fails (raises); True when it ended for good (no restart)."""
        raise NotImplementedError

    def _failed(self, exc: Exception, backoff: float) -> None:
        """Record and log a failure (``status.error``); the next try comes in ``backoff`` seconds."""
        raise NotImplementedError

    def _run(self, stop: threading.Event) -> None:
        backoff = BACKOFF_START_S
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if self._once(stop):
                        break
                except LiveUnavailable as exc:
                    self.status.error = str(exc)
                    log.error("live input %s: %s", self.source, self.status.error)
                    return  # nothing to retry until the user acts
                except Exception as exc:  # a vanished device or file, a dropped stream, a corrupt packet...
                    self._failed(exc, backoff)
                self.status.running = False
                if stop.is_set():
                    break
                self.status.restarts += 1
                if time.monotonic() - started > 10 * backoff:
                    backoff = BACKOFF_START_S  # it ran a good while: start the backoff over
                stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
        finally:
            self.status.running = False
            self.finished.set()


class LiveCapture(LiveSource):
    """Capture from a PortAudio input device and drive a :class:`LiveTagger`, reopening on failure.

    Args:
        device: a PortAudio device name (substring) or index; "" for the default input.
        buffer_seconds: the ring buffer between the audio callback and the tagger, seconds.
        sample_rate, channels: 0 for the device's own.
    """

    def __init__(self, tagger: Tagger, sink: LiveSink, source: str = "live",
                 device: str = "", horizon_seconds: float | None = 4.0, hysteresis: int = 1,
                 block_seconds: float = 0.05, buffer_seconds: float = 30.0, sample_rate: int = 0,
                 channels: int = 0, top_k: int = 5) -> None:
        super().__init__(tagger, sink, source, horizon_seconds, hysteresis, block_seconds, top_k)
        self.device: int | str | None = (int(device) if device.isdigit() else device) if device else None
        self.buffer_seconds = buffer_seconds
        self.sample_rate = sample_rate
        self.channels = channels
        self._reported = ""  # the last problem logged as a warning

    def _once(self, stop: threading.Event) -> bool:
        self._capture(stop)
        self._reported = ""
        return False  # the stream ended (the device failed) or the daemon stops: reopen unless stopping

    def _failed(self, exc: Exception, backoff: float) -> None:
        self.status.error = self._explain(exc)
        # Once per distinct problem (a missing device would otherwise fill the journal), then quietly
        # retried with a growing pause; `status` messages carry the error meanwhile.
        level = logging.WARNING if self.status.error != self._reported else logging.DEBUG
        log.log(level, "live input %s: %s; trying again with growing pauses (up to %.0f s)", self.source,
                self.status.error, BACKOFF_MAX_S)
        self._reported = self.status.error

    def _explain(self, exc: Exception) -> str:
        """One line a user can act on, for what PortAudio or sounddevice raised."""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "querying device -1" in text or "no default" in text.lower():
            return ("no audio input device (PortAudio sees none: is PulseAudio or ALSA set up for this user? "
                    "`python3 -m sounddevice` lists the devices)")
        if isinstance(exc, ValueError) and "No input device matching" in text:
            return f"no input device matching {self.device!r} (`python3 -m sounddevice` lists the devices)"
        return f"{type(exc).__name__}: {text}"

    def _capture(self, stop: threading.Event) -> None:
        try:
            import sounddevice as sd
        except ImportError:
            raise LiveUnavailable("live capture needs sounddevice: pip install 'genre-tagger[live]'") from None

        info = sd.query_devices(self.device, kind="input")
        rate = self.sample_rate or int(info["default_samplerate"])
        channels = self.channels or max(1, min(2, int(info["max_input_channels"])))
        ring = RingBuffer(int(self.buffer_seconds * rate), channels)
        live = self._tagger(rate)
        failed = threading.Event()

        def callback(indata: np.ndarray, frames: int, time_info, status) -> None:
            if status.input_overflow:
                ring.overflows += 1
            ring.write(indata)

        with sd.InputStream(device=self.device, samplerate=rate, channels=channels, dtype="float32",
                            blocksize=max(1, int(self.block_seconds * rate)), callback=callback,
                            finished_callback=failed.set):
            self.status.running = True
            self.status.device = str(info["name"])
            self.status.error = ""
            log.info("live input %s: %s at %d Hz, %d channels", self.source, info["name"], rate, channels)
            idle_since = time.monotonic()
            while not stop.is_set() and not failed.is_set():
                block = ring.read()
                self.status.overflows = ring.overflows
                if block.shape[0]:
                    idle_since = time.monotonic()
                    live.feed(block, ring.last_write_time)
                elif time.monotonic() - idle_since > max(5.0, 20 * self.block_seconds):
                    raise RuntimeError("the input device delivers no audio")
                else:
                    time.sleep(min(0.005, self.block_seconds / 4))
        if failed.is_set() and not stop.is_set():
            raise RuntimeError("the input stream stopped (device lost?)")
