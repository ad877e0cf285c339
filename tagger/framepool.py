"""The frame-pooling fast path: backbone features once per stretch of frames, windows pooled from them.

For a model whose manifest has ``frame_pooling`` (a network that is convolutional in time and pools
globally), running every overlapping window through the whole network recomputes each frame's features
once per window that contains it (4 times with the default two views at half-window hops). Here the
model file is cut (``onnx.utils.Extractor``) into its frame-feature part (``mel → features``) and its
head (``pooled → outputs``): features are computed once, in chunks with the receptive field as context
(so they equal a whole-track computation), each window's max and mean are taken in numpy, and only the
small head runs per window.

The results differ from the per-window ("naive") semantics at window edges: there a window alone sees
zero padding, here it sees the real neighbouring frames. ``genre-tagger bench`` measures the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from tagger.engine import Engine, session_options
from tagger.errors import ModelError
from tagger.frontend import StreamingFrontEnd
from tagger.model import ViewSpec

DEFAULT_CHUNK_FRAMES = 2048  # EngineOptions.chunk_frames documents the memory/speed trade-off


class FramePoolRunner:
    """The two ONNX Runtime sessions cut from one model file, on the engine's provider."""

    def __init__(self, engine: Engine) -> None:
        fp = engine.manifest.frame_pooling
        if fp is None:
            raise ModelError(f"{engine.path}: the model declares no frame_pooling")
        import onnx
        import onnx.utils

        try:
            model = onnx.load(str(engine.path))
            extractor = onnx.utils.Extractor(model)
            features = extractor.extract_model([engine.manifest.input], [fp.features])
            head = extractor.extract_model([fp.pooled], [o.onnx_output for o in engine.manifest.outputs])
        except Exception as exc:  # onnx raises plain Exceptions for unknown tensor names
            raise ModelError(f"{engine.path}: cannot split the graph at {fp.features!r}/{fp.pooled!r}: {exc}") \
                from None
        options = session_options(engine.options)
        providers = engine.session.get_providers()
        self.features_session = ort.InferenceSession(features.SerializeToString(), options, providers=providers)
        self.head_session = ort.InferenceSession(head.SerializeToString(), options, providers=providers)
        self.engine = engine
        self.context = fp.context
        self._input = engine.manifest.input
        self._features = fp.features
        self._pooled = fp.pooled
        self._outputs = [o.onnx_output for o in engine.manifest.outputs]
        self._names = [o.name for o in engine.manifest.outputs]

    def features(self, frames: np.ndarray) -> np.ndarray:
        """Frame features [channels, n] for log-mel frames [n, mels] (zero padding at both ends)."""
        (out,) = self.features_session.run([self._features], {self._input: frames[None].astype(np.float32)})
        return out[0]

    def head(self, pooled: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for pooled features [n, 2·channels]."""
        values = self.head_session.run(self._outputs, {self._pooled: np.ascontiguousarray(pooled, np.float32)})
        return dict(zip(self._names, values, strict=True))


def pool_windows(features: np.ndarray, offset: int, starts: list[int], window: int) -> np.ndarray:
    """Max and mean of ``features`` [C, frames held from absolute index ``offset``] over each window
    [start, start + window), interleaved [max0, mean0, …]: float32 [n, 2C]."""
    out = np.empty((len(starts), 2 * features.shape[0]), dtype=np.float32)
    for i, start in enumerate(starts):
        span = features[:, start - offset:start - offset + window]
        out[i, 0::2] = span.max(axis=1)
        out[i, 1::2] = span.mean(axis=1)
    return out


@dataclass(frozen=True)
class PooledSlice:
    """A window pooled from frame features (the fast path's counterpart of :class:`tagger.views.Slice`)."""

    view: str
    start_frame: int
    pooled: np.ndarray
    start_s: float
    end_s: float


class FeatureStream:
    """Front end → frame features (final once their receptive field is complete) → pooled windows.

    Args:
        runner: the split model.
        front_end: the (single) front end all ``views`` share.
        views: windows and hops, in frames.
        chunk_frames: features computed per ONNX call (bounded memory for any track length).
    """

    def __init__(self, runner: FramePoolRunner, front_end, views: tuple[ViewSpec, ...],
                 chunk_frames: int | None = None) -> None:
        self.runner = runner
        self.config = front_end
        self.front_end = StreamingFrontEnd(front_end)
        self.views = views
        self.chunk = chunk_frames or DEFAULT_CHUNK_FRAMES
        self.before, self.after = runner.context
        self._mels = np.zeros((0, front_end.n_mels), dtype=np.float32)  # input frames held
        self._mels_first = 0
        self._total = 0  # input frames seen
        self._feats = np.zeros((0, 0), dtype=np.float32)  # final features held [C, n]
        self._feats_first = 0
        self._done = 0  # features final for frames [0, done)
        self._next = {v.name: 0 for v in views}
        self._last_end = {v.name: 0 for v in views}
        self.counts = {v.name: 0 for v in views}
        self._max_window = max(v.window_frames for v in views)

    def push(self, samples: np.ndarray) -> list[PooledSlice]:
        self._append(self.front_end.push(samples))
        self._compute(final=False)
        return self._collect(end=self._done)

    def finish(self) -> list[PooledSlice]:
        self._append(self.front_end.flush())
        self._compute(final=True)
        slices = self._collect(end=self._done)
        total = self._total
        for view in self.views:
            window = view.window_frames
            if total == 0:
                continue
            if total < window:  # the whole (short) track is the one window
                slices.append(self._pooled(view, 0, total))
            elif self._last_end[view.name] < total:
                slices.append(self._pooled(view, total - window, window))
                self._last_end[view.name] = total
        return slices

    def _append(self, frames: np.ndarray) -> None:
        if frames.shape[0]:
            self._mels = np.concatenate([self._mels, frames])
            self._total += frames.shape[0]

    def _compute(self, final: bool) -> None:
        # Features of frames [a, b) need input frames [a - before, b + after): final once those arrived.
        # Whole chunks only until the end: the context costs (before + after) frames per call, and one
        # input shape lets ONNX Runtime reuse its plan.
        while True:
            limit = self._total if final else self._total - self.after
            b = min(self._done + self.chunk, limit)
            if b <= self._done or (not final and b - self._done < self.chunk):
                return
            lo = max(0, self._done - self.before)
            hi = min(self._total, b + self.after)
            feats = self.runner.features(self._mels[lo - self._mels_first:hi - self._mels_first])
            new = feats[:, self._done - lo:b - lo]
            self._feats = new if self._feats.size == 0 else np.concatenate([self._feats, new], axis=1)
            self._done = b
            self._trim()

    def _trim(self) -> None:
        # Input frames: keep the context the next chunk needs. Features: what unfinished windows need.
        keep_mels_from = max(0, self._done - self.before)
        if keep_mels_from > self._mels_first:
            self._mels = self._mels[keep_mels_from - self._mels_first:]
            self._mels_first = keep_mels_from
        oldest = min(min(self._next.values()), max(0, self._done - self._max_window))
        if oldest > self._feats_first:
            self._feats = self._feats[:, oldest - self._feats_first:]
            self._feats_first = oldest

    def _collect(self, end: int) -> list[PooledSlice]:
        out = []
        for view in self.views:
            starts = []
            while self._next[view.name] + view.window_frames <= end:
                starts.append(self._next[view.name])
                self._next[view.name] += view.hop_frames
            if starts:
                pooled = pool_windows(self._feats, self._feats_first, starts, view.window_frames)
                sec = self.config.frame_seconds
                for start, vector in zip(starts, pooled, strict=True):
                    out.append(PooledSlice(view.name, start, vector, start * sec, (start + view.window_frames) * sec))
                self.counts[view.name] += len(starts)
                self._last_end[view.name] = starts[-1] + view.window_frames
        self._trim()
        return out

    def _pooled(self, view: ViewSpec, start: int, length: int) -> PooledSlice:
        vector = pool_windows(self._feats, self._feats_first, [start], length)[0]
        self.counts[view.name] += 1
        sec = self.config.frame_seconds
        return PooledSlice(view.name, start, vector, start * sec, (start + length) * sec)
