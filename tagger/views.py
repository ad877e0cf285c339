"""Rolling spectrogram buffers and the views (window slicings) that read them.

One :class:`FrontEndStream` per distinct front end computes each STFT frame once and keeps only
the frames its views still need; every view sharing that front end slices the same frames. The same
code serves a file (``finish()`` adds an end-aligned last window so the whole file is covered) and a
never-ending live stream (no ``finish()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagger.frontend import FrontEndConfig, StreamingFrontEnd
from tagger.model import ViewSpec


@dataclass(frozen=True)
class Slice:
    """One window of log-mel frames for one view.

    Attributes:
        view: the view's name.
        start_frame: index of the first frame in the front end's frame sequence.
        frames: float32 [window_frames, n_mels].
        start_s, end_s: the window's span in seconds from the start of the stream.
        padded: True for a track shorter than the window (its frames were looped to fill it).
    """

    view: str
    start_frame: int
    frames: np.ndarray
    start_s: float
    end_s: float
    padded: bool = False


class RollingFrames:
    """Frames of one front end, addressed by absolute index, holding only a bounded recent span."""

    def __init__(self, n_mels: int, capacity: int) -> None:
        self._data = np.zeros((max(capacity, 1), n_mels), dtype=np.float32)
        self._first = 0  # absolute index of self._data[0]
        self._count = 0  # frames stored
        self.total = 0  # frames appended since the start

    @property
    def first(self) -> int:
        """Absolute index of the oldest frame still held."""
        return self._first

    def append(self, frames: np.ndarray) -> None:
        n = frames.shape[0]
        if n == 0:
            return
        needed = self._count + n
        if needed > self._data.shape[0]:
            grown = np.zeros((max(needed, 2 * self._data.shape[0]), self._data.shape[1]), dtype=np.float32)
            grown[: self._count] = self._data[: self._count]
            self._data = grown
        self._data[self._count: needed] = frames
        self._count = needed
        self.total += n

    def get(self, start: int, stop: int) -> np.ndarray:
        """A copy of absolute frames [start, stop)."""
        if start < self._first or stop > self.total or start > stop:
            raise IndexError(f"frames [{start}, {stop}) not held (have [{self._first}, {self.total}))")
        return self._data[start - self._first: stop - self._first].copy()

    def discard_before(self, index: int) -> None:
        """Forget frames older than absolute ``index`` (amortised: moves data at most once per fill)."""
        drop = min(index, self.total) - self._first
        if drop <= 0:
            return
        # Shift only when the dead prefix is at least half the buffer, so each frame moves O(1) times.
        if drop * 2 >= self._data.shape[0] or drop == self._count:
            keep = self._count - drop
            self._data[:keep] = self._data[drop: self._count]
            self._first += drop
            self._count = keep


class _ViewCursor:
    def __init__(self, spec: ViewSpec) -> None:
        self.spec = spec
        self.next_start = 0
        self.emitted = 0
        self.last_end = 0


class FrontEndStream:
    """A front end, its rolling frame buffer, and the views that slice it."""

    def __init__(self, config: FrontEndConfig, views: list[ViewSpec]) -> None:
        if not views:
            raise ValueError("a front-end stream needs at least one view")
        self.config = config
        self.front_end = StreamingFrontEnd(config)
        self._cursors = [_ViewCursor(v) for v in views]
        self._max_window = max(v.window_frames for v in views)
        max_hop = max(v.hop_frames for v in views)
        self.frames = RollingFrames(config.n_mels, 2 * (self._max_window + max_hop))

    @property
    def views(self) -> list[ViewSpec]:
        return [c.spec for c in self._cursors]

    def push(self, samples: np.ndarray) -> list[Slice]:
        """Add samples; return every slice that became complete."""
        self.frames.append(self.front_end.push(samples))
        return self._collect()

    def push_frames(self, frames: np.ndarray) -> list[Slice]:
        """Log-mel frames [n, mels] computed elsewhere, instead of samples (see ``TagStream.feed_frames``)."""
        self.frames.append(frames)
        return self._collect()

    def finish(self) -> list[Slice]:
        """End of stream: the remaining slices, an end-aligned last one per view, and short-track padding."""
        self.frames.append(self.front_end.flush())
        slices = self._collect()
        total = self.frames.total
        for cursor in self._cursors:
            window = cursor.spec.window_frames
            if total == 0:
                continue
            if total < window:
                held = self.frames.get(self.frames.first, total)
                # Full history is still held: the buffer keeps at least max_window frames.
                reps = -(-window // held.shape[0])
                looped = np.tile(held, (reps, 1))[:window]
                slices.append(self._slice(cursor.spec, 0, looped, padded=True))
                cursor.emitted += 1
            elif cursor.last_end < total:
                start = total - window
                slices.append(self._slice(cursor.spec, start, self.frames.get(start, total)))
                cursor.emitted += 1
                cursor.last_end = total
        return slices

    def _collect(self) -> list[Slice]:
        slices = []
        total = self.frames.total
        for cursor in self._cursors:
            spec = cursor.spec
            while cursor.next_start + spec.window_frames <= total:
                start = cursor.next_start
                frames = self.frames.get(start, start + spec.window_frames)
                slices.append(self._slice(spec, start, frames))
                cursor.next_start += spec.hop_frames
                cursor.emitted += 1
                cursor.last_end = start + spec.window_frames
        # Keep what the next slices need, and the last max_window frames for the end-aligned slice.
        oldest_needed = min(min(c.next_start for c in self._cursors), total - self._max_window)
        self.frames.discard_before(max(0, oldest_needed))
        return slices

    def _slice(self, spec: ViewSpec, start: int, frames: np.ndarray, padded: bool = False) -> Slice:
        sec = self.config.frame_seconds
        end = start + (frames.shape[0] if not padded else self.frames.total)
        return Slice(spec.name, start, frames, start * sec, end * sec, padded)

    def slice_counts(self) -> dict[str, int]:
        return {c.spec.name: c.emitted for c in self._cursors}


def build_streams(front_ends: dict[str, FrontEndConfig], views: tuple[ViewSpec, ...] | list[ViewSpec]
                  ) -> list[FrontEndStream]:
    """One stream per front end that at least one view uses, in manifest order."""
    streams = []
    for name, config in front_ends.items():
        mine = [v for v in views if v.front_end == name]
        if mine:
            streams.append(FrontEndStream(config, mine))
    return streams
