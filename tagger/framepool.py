"""The frame-pooling fast path: backbone features once per stretch of frames, windows pooled from them.

For a model whose manifest has ``frame_pooling`` (a network that is convolutional in time and pools
globally), running every overlapping window through the whole network recomputes each frame's features
once per window that contains it (4 times with the default two views at half-window hops). Here the
model file is cut (``onnx.utils.Extractor``) into its frame-feature part (``mel → features``) and its
head (``pooled → outputs``): features are computed once, in chunks with the receptive field as context
(so they equal a whole-track computation), each window's max and mean are taken in numpy, and only the
small head runs per window.

When the manifest splits the features into ``stages`` (parts computed from the input alone, each with
its own receptive field), each stage runs once per frame and the rest from the stages' outputs: a live
stream then computes, per 50 ms block, only the few new frames plus each stage's own context, instead
of the whole 145-frame receptive field (or whole windows, as the naive path does).

The results differ from the per-window ("naive") semantics at window edges: there a window alone sees
zero padding, here it sees the real neighbouring frames. ``genre-tagger bench`` measures the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from tagger.engine import Engine, EngineOptions, session_options, usable_cores
from tagger.errors import ModelError
from tagger.frontend import StreamingFrontEnd
from tagger.model import ViewSpec

DEFAULT_CHUNK_FRAMES = EngineOptions.chunk_frames  # its docstring has the memory/speed trade-off
STAGE_CHUNK_FRAMES = 256  # the least a stage computes per call when it may wait (files)


class FramePoolRunner:
    """The ONNX Runtime sessions cut from one model file, on the engine's provider: the frame features
    (from the input, or from the manifest's stages, each a session of its own) and the head."""

    def __init__(self, engine: Engine) -> None:
        fp = engine.manifest.frame_pooling
        if fp is None:
            raise ModelError(f"{engine.path}: the model declares no frame_pooling")
        inp = engine.manifest.input
        outputs = [o.onnx_output for o in engine.manifest.outputs]
        stages, features, head = self._split(engine, fp, inp, outputs)
        options = session_options(engine.options)
        if not engine.options.intra_op_threads:
            # One core decodes beside these sessions (tag_file's read-ahead thread). 2 cores, 11 realworld
            # tracks, per-file best of 3, interleaved: 1 thread 10.36 and 12.44 s, 2 threads 11.29 and 13.01 s
            # (the naive path's large calls want every core: 22.69 s on 1 thread, 18.53 s on 2).
            options.intra_op_num_threads = max(1, usable_cores() - 1)
        providers = engine.session.get_providers()

        def session(part: bytes) -> ort.InferenceSession:
            return ort.InferenceSession(part, options, providers=providers)

        self.stage_sessions = [session(part) for part in stages]
        self.features_session = session(features)
        self.head_session = session(head)
        self.engine = engine
        self.context = fp.context
        self.stages = fp.stages
        self.stages_context = fp.stages_context
        self._input = inp
        self._features = fp.features
        self._pooled = fp.pooled
        self._outputs = outputs
        self._names = [o.name for o in engine.manifest.outputs]

    @staticmethod
    def _split(engine: Engine, fp, inp: str, outputs: list[str]) -> tuple[list[bytes], bytes, bytes]:
        import onnx
        import onnx.utils

        stage_names = [st.tensor for st in fp.stages]
        try:
            extractor = onnx.utils.Extractor(onnx.load(str(engine.path)))
            stages = [extractor.extract_model([inp], [name]).SerializeToString() for name in stage_names]
            features = extractor.extract_model(stage_names or [inp], [fp.features]).SerializeToString()
            head = extractor.extract_model([fp.pooled], outputs).SerializeToString()
        except Exception as exc:  # onnx raises plain Exceptions for unknown or insufficient tensor names
            raise ModelError(f"{engine.path}: cannot split the graph at {[*stage_names, fp.features, fp.pooled]}: "
                             f"{exc}") from None
        return stages, features, head

    def stage(self, index: int, frames: np.ndarray) -> np.ndarray:
        """Stage ``index`` [channels, n] for log-mel frames [n, mels] (zero padding at both ends)."""
        name = self.stages[index].tensor
        (out,) = self.stage_sessions[index].run([name], {self._input: frames[None].astype(np.float32, copy=False)})
        return out[0]

    def features(self, frames: np.ndarray) -> np.ndarray:
        """Frame features [channels, n] for log-mel frames [n, mels] (zero padding at both ends)."""
        if not self.stages:
            return self.features_from_stages([frames])
        return self.features_from_stages([self.stage(i, frames) for i in range(len(self.stages))])

    def features_from_stages(self, parts: list[np.ndarray]) -> np.ndarray:
        """Frame features [channels, n] from each stage's output [stage channels, n] over the same frames
        (or, for a model without stages, from the log-mel frames [n, mels])."""
        if not self.stages:
            feed = {self._input: parts[0][None].astype(np.float32, copy=False)}
        else:
            feed = {st.tensor: part[None] for st, part in zip(self.stages, parts, strict=True)}
        (out,) = self.features_session.run([self._features], feed)
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


class _Buffer:
    """Frame-aligned values held from absolute frame ``first``: [channels, n] (or [n, mels] for input)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.data: np.ndarray | None = None
        self.first = 0
        self.done = 0  # values final for frames [0, done)

    def append(self, values: np.ndarray) -> None:
        self.data = values if self.data is None else np.concatenate([self.data, values], axis=self.axis)
        self.done += values.shape[self.axis]

    def span(self, lo: int, hi: int) -> np.ndarray:
        assert self.data is not None
        return self.data[lo - self.first:hi - self.first] if self.axis == 0 \
            else self.data[:, lo - self.first:hi - self.first]

    def drop_before(self, frame: int) -> None:
        if self.data is not None and frame > self.first:
            self.data = self.data[frame - self.first:] if self.axis == 0 else self.data[:, frame - self.first:]
            self.first = frame


class FeatureStream:
    """Front end → [stages →] frame features (each final once its receptive field has arrived) → pooled
    windows.

    Args:
        runner: the split model.
        front_end: the (single) front end all ``views`` share.
        views: windows and hops, in frames.
        chunk_frames: the most features computed per ONNX call (bounded memory for any track length).
        eager: compute as soon as anything is final (live: a few frames per call); otherwise whole chunks
            until the end (files: few, large calls).
    """

    def __init__(self, runner: FramePoolRunner, front_end, views: tuple[ViewSpec, ...],
                 chunk_frames: int | None = None, eager: bool = False) -> None:
        self.runner = runner
        self.config = front_end
        self.front_end = StreamingFrontEnd(front_end)
        self.views = views
        self.chunk = chunk_frames or DEFAULT_CHUNK_FRAMES
        self.eager = eager
        self.stages = runner.stages
        # Context of the features over what they are computed from: the input, or the stages.
        self.before, self.after = runner.stages_context if self.stages else runner.context
        # A stage with little context runs in small chunks (bounded memory at no cost); one with more
        # in chunks large enough that the context is a small part of each call.
        self.stage_chunks = [min(self.chunk, max(STAGE_CHUNK_FRAMES, 8 * sum(st.context))) for st in self.stages]
        self._mels = _Buffer(axis=0)
        self._stage_out = [_Buffer(axis=1) for _ in self.stages]
        self._feats = _Buffer(axis=1)
        self._next = {v.name: 0 for v in views}
        self._last_end = {v.name: 0 for v in views}
        self.counts = {v.name: 0 for v in views}
        self._max_window = max(v.window_frames for v in views)

    @property
    def _total(self) -> int:
        return self._mels.done

    @property
    def _done(self) -> int:
        return self._feats.done

    def push(self, samples: np.ndarray) -> list[PooledSlice]:
        self._append(self.front_end.push(samples))
        self._compute(final=False)
        return self._collect(end=self._done)

    def push_frames(self, frames: np.ndarray) -> list[PooledSlice]:
        """Log-mel frames [n, mels] computed elsewhere, instead of samples (see ``TagStream.feed_frames``)."""
        self._append(frames)
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
            self._mels.append(frames.astype(np.float32, copy=False))

    def _ready(self, done: int, limit: int, final: bool, chunk: int) -> int:
        """End of the next batch of frames to compute after ``done`` (``done`` itself: nothing to do)."""
        b = min(done + chunk, limit)
        if b <= done or (not final and not self.eager and b - done < chunk):
            return done
        return b

    def _compute(self, final: bool) -> None:
        # Values of frames [a, b) need their sources over [a - before, b + after): final once those are.
        # Files compute whole chunks until the end (each call pays for its context, and one input shape
        # lets ONNX Runtime reuse its plan); live streams compute whatever is final.
        total = self._total
        for index, (stage, out) in enumerate(zip(self.stages, self._stage_out, strict=True)):
            before, after = stage.context
            chunk = self.stage_chunks[index]
            while (b := self._ready(out.done, total if final else total - after, final, chunk)) != out.done:
                lo, hi = max(0, out.done - before), min(total, b + after)
                out.append(self.runner.stage(index, self._mels.span(lo, hi))[:, out.done - lo:b - lo])
        sources = self._stage_out or [self._mels]
        available = min(src.done for src in sources)
        while (b := self._ready(self._done, total if final else available - self.after, final, self.chunk)) \
                != self._done:
            lo, hi = max(0, self._done - self.before), min(available, b + self.after)
            parts = [src.span(lo, hi) for src in sources]
            self._feats.append(self.runner.features_from_stages(parts)[:, self._done - lo:b - lo])
            self._trim()

    def _trim(self) -> None:
        # Sources: keep the context the next calls need. Features: what unfinished windows need.
        for out in self._stage_out:
            out.drop_before(max(0, self._done - self.before))
        keep_mels = min([out.done - st.context[0] for out, st in zip(self._stage_out, self.stages, strict=True)]
                        or [self._done - self.before])
        self._mels.drop_before(max(0, keep_mels))
        oldest = min(min(self._next.values()), max(0, self._done - self._max_window))
        self._feats.drop_before(oldest)

    def _collect(self, end: int) -> list[PooledSlice]:
        out = []
        for view in self.views:
            starts = []
            while self._next[view.name] + view.window_frames <= end:
                starts.append(self._next[view.name])
                self._next[view.name] += view.hop_frames
            if starts:
                pooled = pool_windows(self._feats.data, self._feats.first, starts, view.window_frames)
                sec = self.config.frame_seconds
                for start, vector in zip(starts, pooled, strict=True):
                    out.append(PooledSlice(view.name, start, vector, start * sec, (start + view.window_frames) * sec))
                self.counts[view.name] += len(starts)
                self._last_end[view.name] = starts[-1] + view.window_frames
        self._trim()
        return out

    def _pooled(self, view: ViewSpec, start: int, length: int) -> PooledSlice:
        vector = pool_windows(self._feats.data, self._feats.first, [start], length)[0]
        self.counts[view.name] += 1
        sec = self.config.frame_seconds
        return PooledSlice(view.name, start, vector, start * sec, (start + length) * sec)
