"""The tagging pipeline: decode → front end → rolling views → engine → ensemble.

:class:`Tagger` holds a loaded model; :meth:`Tagger.tag_file` tags a whole file and
:meth:`Tagger.stream` returns a :class:`TagStream` to feed sample blocks and read the running
estimate (live audio, or a file read block by block).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.coverage import Coverage, Segment, decode_coverage
from tagger.decode import DEFAULT_BLOCK_SECONDS, MIN_TRACK_SECONDS, decode_blocks, read_ahead
from tagger.engine import Engine, EngineOptions
from tagger.ensemble import DEFAULT_THRESHOLD, DEFAULT_TOP_K, Ensemble, OutputEstimate
from tagger.errors import Cancelled, ConfigError, TaggerError
from tagger.framepool import FeatureStream, FramePoolRunner, PooledSlice
from tagger.level import RunningFloor, analyse_floored, floor_gain_db
from tagger.model import ModelManifest, ViewSpec
from tagger.registry import default_cpu_model, resolve_model
from tagger.views import FrontEndStream, Slice, build_streams


@dataclass(frozen=True)
class SliceResult:
    """The model's probabilities for one slice: each output's float32 vector."""

    view: str
    start_s: float
    end_s: float
    probabilities: dict[str, np.ndarray]


@dataclass
class TrackResult:
    """The result of tagging one file (or one finished stream).

    Attributes:
        path: the file tagged ('' for a stream).
        duration_s: decoded audio length in seconds.
        outputs: each output's estimate.
        model, model_version: the model that produced it; ``provider`` the ONNX Runtime provider.
        elapsed_s: wall time spent, in seconds.
        slices: the per-slice results, when asked for (``keep_slices``).
        music: False when the model's music detector says the file is not music (its genres then mean
            nothing); True when it is music or the model has no detector.
        music_probability: the detector's mean probability of music over the file (0..1), None
            without a detector.
        coverage: what was analysed: ``full``, or ``excerpts:KxS`` (:mod:`tagger.coverage`; a track too
            short for its excerpts is analysed in full and says ``full``); ``analysed_s`` the seconds of
            audio analysed, and ``duration_s`` then the container's length of the track.
        level_dbfs: the gated level of the audio analysed (:mod:`tagger.level`), in dBFS, before any gain;
            None for silence (or a stream, whose level is not measured).
        gain_db: the constant gain in dB the audio was analysed raised by: above 0 when the file was
            quieter than the model's level floor (``level_floor_dbfs`` in its manifest), else 0.
    """

    path: str
    duration_s: float
    outputs: dict[str, OutputEstimate]
    model: str
    model_version: str
    provider: str
    elapsed_s: float
    slices: list[SliceResult] = field(default_factory=list)
    music: bool = True
    music_probability: float | None = None
    coverage: str = "full"
    analysed_s: float | None = None
    level_dbfs: float | None = None
    gain_db: float = 0.0

    def as_dict(self, top_k: int | None = None) -> dict:
        return {
            "path": self.path,
            "ok": True,
            "duration_s": round(self.duration_s, 3),
            "music": self.music,
            "music_probability": None if self.music_probability is None else round(self.music_probability, 6),
            "model": self.model,
            "model_version": self.model_version,
            "provider": self.provider,
            "elapsed_s": round(self.elapsed_s, 3),
            "coverage": self.coverage,
            "analysed_s": round(self.duration_s if self.analysed_s is None else self.analysed_s, 3),
            "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 2),
            "gain_db": round(self.gain_db, 2),
            "outputs": {name: est.as_dict(top_k) for name, est in self.outputs.items()},
        }


def views_with_hop(views: tuple[ViewSpec, ...], hop_fraction: float | None) -> tuple[ViewSpec, ...]:
    """The model's views, or the same windows with a hop of ``hop_fraction`` of each window."""
    if hop_fraction is None:
        return views
    if not 0.0 < hop_fraction <= 1.0:
        raise ConfigError(f"hop fraction {hop_fraction} must be in (0, 1]")
    return tuple(v.with_hop(max(1, round(v.window_frames * hop_fraction))) for v in views)


class TagStream:
    """Feed mono sample blocks at the model's rate; read the running estimate at any time.

    Args:
        tagger: the loaded tagger.
        horizon_seconds: None to average the whole stream; else the ensemble's recent horizon.
        eager: run inference as soon as a slice is complete (live latency) instead of batching.
        keep_slices: keep every :class:`SliceResult` (memory grows with the stream).
        on_slice: called with each :class:`SliceResult` as it is computed.
        fast: use the frame-pooling fast path (:mod:`tagger.framepool`); needs a model that supports
            it (:attr:`Tagger.supports_fast`).
        level_floor: raise the samples fed while their running level is under the model's level floor
            (:class:`tagger.level.RunningFloor`; nothing without ``level_floor_dbfs`` in the manifest). None
            (default): for an eager stream (live input, which has no end to measure first), not for a batched
            one (a file: :meth:`Tagger.tag_file` raises a quiet file by one constant gain instead).
    """

    def __init__(self, tagger: Tagger, horizon_seconds: float | None = None, eager: bool = True,
                 keep_slices: bool = False, on_slice: Callable[[SliceResult], None] | None = None,
                 fast: bool = False, level_floor: bool | None = None) -> None:
        self.tagger = tagger
        manifest = tagger.manifest
        floor = manifest.level_floor_dbfs
        self.floor: RunningFloor | None = None  # raises the samples fed; None: they are analysed as fed
        if floor is not None and (eager if level_floor is None else level_floor):
            self.floor = RunningFloor(tagger.sample_rate, floor, manifest.level_max_gain_db)
        # Sources of slices: one FeatureStream (fast path: pooled windows) or one FrontEndStream per
        # front end (per-window frames); both offer push(samples) and finish().
        self._fast = fast
        self.eager = eager
        self._sources = self._new_sources()
        self._offset_s = 0.0  # where the current stretch of audio starts in the track (coverage excerpts)
        self.ensemble = Ensemble(manifest.outputs, [v.name for v in tagger.views], horizon_seconds)
        self.keep_slices = keep_slices
        self.on_slice = on_slice
        self.slices: list[SliceResult] = []
        self._pending: dict[str, list[Slice | PooledSlice]] = {v.name: [] for v in tagger.views}
        self.samples_in = 0
        self._finished = False

    def _new_sources(self) -> list[FeatureStream | FrontEndStream]:
        tagger, manifest = self.tagger, self.tagger.manifest
        if self._fast:
            (front_end,) = {v.front_end for v in tagger.views}
            return [FeatureStream(tagger.frame_runner, manifest.front_ends[front_end], tagger.views,
                                  tagger.engine.options.chunk_frames, eager=self.eager)]
        return list(build_streams(manifest.front_ends, tagger.views))

    def next_segment(self, start_s: float) -> None:
        """The samples fed next start at ``start_s`` seconds of the track and do not follow those fed so far
        (coverage excerpts): the current stretch's tail is covered as at the end of a stream, its slices
        are run, and the front end and windows start afresh, so that no window spans the gap. The
        ensemble keeps averaging over every stretch. Before any sample it only sets where they start."""
        if self._finished:
            raise RuntimeError("next_segment() after finish()")
        if self.samples_in == 0:
            self._offset_s = start_s
            return
        for source in self._sources:
            for s in source.finish():
                self._pending[s.view].append(s)
        self._infer(force=True)
        self._sources = self._new_sources()
        self._offset_s = start_s

    def feed_frames(self, frames: Mapping[str, np.ndarray], samples: int) -> list[SliceResult]:
        """Add log-mel frames computed elsewhere, float32 [n, mels] per front end name (by
        :class:`tagger.frontend.StreamingFrontEnd` with the model's settings, over ``samples`` samples):
        a batch job computes them in CPU tasks and runs the model where the model is loaded. A stream is
        fed samples or frames, not both."""
        if self._finished:
            raise RuntimeError("feed_frames() after finish()")
        self.samples_in += samples
        for source in self._sources:
            if not isinstance(source.front_end, _FramesGiven):
                source.front_end = _FramesGiven(source.config.n_mels)
            name = next(n for n, config in self.tagger.manifest.front_ends.items() if config == source.config)
            given = np.asarray(frames[name], dtype=np.float32)
            for s in source.push_frames(given):
                self._pending[s.view].append(s)
        return self._infer(force=self.eager)

    @property
    def sample_rate(self) -> int:
        """The rate :meth:`feed` expects, in Hz (every front end of a model shares it)."""
        return self.tagger.sample_rate

    @property
    def seconds_in(self) -> float:
        return self.samples_in / self.sample_rate

    def feed(self, samples: np.ndarray) -> list[SliceResult]:
        """Add a block of mono float32 samples; return the slice results computed now. With a running floor
        (:attr:`floor`) they are analysed raised by its gain."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += samples.size
        if self.floor is not None:
            samples = self.floor(samples)
        for source in self._sources:
            for s in source.push(samples):
                self._pending[s.view].append(s)
        return self._infer(force=self.eager)

    @property
    def fast(self) -> bool:
        """Slices come from the frame-pooling fast path."""
        return self._fast

    def finish(self) -> dict[str, OutputEstimate]:
        """End of stream: cover the tail, run what is pending, return the final estimate."""
        if not self._finished:
            self._finished = True
            for source in self._sources:
                for s in source.finish():
                    self._pending[s.view].append(s)
            self._infer(force=True)
        return self.estimate()

    def track_result(self, path: str, started: float, coverage: str, track_s: float | None,
                     level_dbfs: float | None = None, gain_db: float = 0.0) -> TrackResult:
        """End of a file: the track's result once every block is in.

        Args:
            path: the file, as the result names it.
            started: when tagging began, a :func:`time.perf_counter` value (for ``elapsed_s``).
            coverage: the excerpts asked for (recorded only when excerpts were read).
            track_s: the container's length in seconds when excerpts were read, else None (the
                analysed seconds are then the track's length).
            level_dbfs: the gated level of the audio fed, before ``gain_db``, in dBFS (None: silence or
                not measured).
            gain_db: the gain the fed audio was raised by, dB (:meth:`Tagger.floor_gain_db`).

        Raises :class:`TaggerError` when under ``MIN_TRACK_SECONDS`` of audio came in.
        """
        if self.seconds_in < MIN_TRACK_SECONDS:  # looped to fill a window, a click would get a genre
            raise TaggerError(f"{path}: too short to tag ({self.seconds_in:.2f} s of audio, "
                              f"at least {MIN_TRACK_SECONDS} s needed)")
        outputs = self.finish()
        if not outputs:
            raise TaggerError(f"{path}: too short to tag")
        analysed_s = self.seconds_in
        t = self.tagger
        return TrackResult(path, analysed_s if track_s is None else max(analysed_s, track_s), outputs,
                           t.manifest.name, t.manifest.version, t.provider, time.perf_counter() - started,
                           self.slices, self.music(), self.music_probability(),
                           coverage if track_s is not None else "full", analysed_s, level_dbfs, gain_db)

    def estimate(self) -> dict[str, OutputEstimate]:
        """Each genre output's running estimate (the music detector's is :meth:`music_probability`)."""
        t = self.tagger
        estimate = self.ensemble.estimate(t.threshold, t.top_k, t.aliases)
        detector = t.manifest.music
        if detector is not None:
            estimate.pop(detector.output, None)
        return estimate

    def music_probability(self) -> float | None:
        """The music detector's mean probability over the stream (or its horizon); None without a detector
        or before the first slice."""
        detector = self.tagger.manifest.music
        if detector is None:
            return None
        mean = self.ensemble.combined(detector.output)
        return None if mean is None else float(mean[0])

    def music(self) -> bool:
        """False when the music detector's mean is below the model's threshold (True without a detector)."""
        p = self.music_probability()
        detector = self.tagger.manifest.music
        return p is None or detector is None or p >= detector.threshold

    def _infer(self, force: bool) -> list[SliceResult]:
        results: list[SliceResult] = []
        batch_size = self.tagger.engine.options.batch_size
        for view, pending in self._pending.items():
            while pending and (force or len(pending) >= batch_size):
                chunk, self._pending[view] = pending[:batch_size], pending[batch_size:]
                pending = self._pending[view]
                if self._fast:
                    outputs = self.tagger.frame_runner.head(np.stack([s.pooled for s in chunk]))
                else:
                    outputs = self.tagger.engine.run(np.stack([s.frames for s in chunk]))
                for i, s in enumerate(chunk):
                    probs = {name: values[i] for name, values in outputs.items()}
                    start_s, end_s = s.start_s + self._offset_s, s.end_s + self._offset_s
                    self.ensemble.add(view, end_s, probs)
                    results.append(SliceResult(view, start_s, end_s, probs))
        if self.keep_slices:
            self.slices.extend(results)
        if self.on_slice:
            for r in results:
                self.on_slice(r)
        return results


class _FramesGiven:
    """Stands in for a source's front end when its frames come ready-made (:meth:`TagStream.feed_frames`)."""

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels

    def push(self, samples: np.ndarray) -> np.ndarray:
        raise RuntimeError("feed() on a stream fed with frames")

    def flush(self) -> np.ndarray:
        return np.zeros((0, self.n_mels), dtype=np.float32)


class Tagger:
    """A loaded model and the settings to tag with it.

    Args:
        model: a model name, a path to an ``.onnx`` file, or None for the default model.
        threshold: probability a label needs to be decided (default 0.6); below it the result is
            "uncertain" with candidates.
        top_k: how many candidates and scores summaries list.
        aliases: optional map from model labels to the user's names.
        hop_fraction: slice hop as a fraction of each window (None: the model's own hops).
        engine_options: device, threads and batch size for ONNX Runtime.
        block_seconds: decoding block length, in seconds.
        fast: tag files with the frame-pooling fast path when the model supports it (default);
            False runs every window through the whole network (the reference semantics).
        coverage: how much of each file :meth:`tag_file` analyses: ``"full"`` (default) or
            ``"excerpts:KxS"`` (:mod:`tagger.coverage`).
    """

    def __init__(self, model: str | Path | None = None, *, threshold: float = DEFAULT_THRESHOLD,
                 top_k: int = DEFAULT_TOP_K, aliases: Mapping[str, str] | None = None,
                 hop_fraction: float | None = None, engine_options: EngineOptions | None = None,
                 block_seconds: float = DEFAULT_BLOCK_SECONDS, fast: bool = True,
                 coverage: str | Coverage = "full") -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold {threshold} must be within 0..1")
        if top_k < 1:
            raise ConfigError("top_k must be at least 1")
        # What builds the same tagger in another process (tagger.parallel's workers).
        self.arguments = {"model": model, "threshold": threshold, "top_k": top_k, "aliases": dict(aliases or {}),
                          "hop_fraction": hop_fraction, "engine_options": engine_options,
                          "block_seconds": block_seconds, "fast": fast, "coverage": str(coverage)}
        self.coverage = Coverage.parse(coverage)
        # No model named: the default, whose int8 file runs instead when the session is on the CPU.
        self.engine = Engine(resolve_model(model), engine_options, None if model else default_cpu_model())
        self.manifest: ModelManifest = self.engine.manifest
        rates = {fe.sample_rate for fe in self.manifest.front_ends.values()}
        if len(rates) != 1:
            raise ConfigError(f"model front ends disagree on the sample rate: {sorted(rates)}")
        self.sample_rate: int = rates.pop()
        self.views = views_with_hop(self.manifest.views, hop_fraction)
        self.threshold = threshold
        self.top_k = top_k
        self.aliases = dict(aliases or {})
        self.block_seconds = block_seconds
        self.fast = fast and self.supports_fast
        self._frame_runner: FramePoolRunner | None = None

    @property
    def supports_fast(self) -> bool:
        """The model declares frame pooling and every view reads one front end."""
        return self.manifest.frame_pooling is not None and len({v.front_end for v in self.views}) == 1

    @property
    def frame_runner(self) -> FramePoolRunner:
        if self._frame_runner is None:
            self._frame_runner = FramePoolRunner(self.engine)
        return self._frame_runner

    @property
    def provider(self) -> str:
        return self.engine.provider

    def prepare(self) -> None:
        """Load every session tagging files will use, now: before the tagger is shared between threads
        (:mod:`tagger.parallel`), which may then run them at once."""
        if self.fast:
            _ = self.frame_runner

    def stream(self, horizon_seconds: float | None = None, eager: bool = True, keep_slices: bool = False,
               on_slice: Callable[[SliceResult], None] | None = None, fast: bool = False,
               level_floor: bool | None = None) -> TagStream:
        """A new :class:`TagStream` (see there).

        With ``fast`` and ``eager`` (live), each block computes only its new frames' features: a window
        is pooled once the frames its receptive field needs have arrived (for the default model, 73
        frames or 1.17 s after the window's end), so updates trail the audio by that much.

        An eager stream (live input) of a model with a level floor is raised while its running level is under
        the floor (:class:`tagger.level.RunningFloor`); ``level_floor`` True or False says so for any stream.
        """
        return TagStream(self, horizon_seconds, eager, keep_slices, on_slice, fast and self.supports_fast,
                         level_floor)

    def tag_file(self, path: str | Path, keep_slices: bool = False,
                 cancelled: Callable[[], bool] | None = None,
                 decode: Callable[..., Iterator[np.ndarray | Segment]] | None = None,
                 coverage: str | Coverage | None = None, decode_ahead: bool = True) -> TrackResult:
        """Tag a file: the mean of every slice of every view, over the whole file or over the excerpts
        ``coverage`` (default: the tagger's) asks for (:mod:`tagger.coverage`).

        ``decode_ahead`` (default True) decodes in a thread of its own, beside the front end and the model
        (:func:`tagger.decode.read_ahead`); False decodes in this thread, between blocks. The thread pays
        when this file has more than one core to itself; when several jobs fill the cores it only adds
        hand-offs (:func:`tagger.parallel.decode_ahead_for_jobs`). The result is the same either way.

        Raises :class:`DecodeError` for a bad file, and :class:`Cancelled` when ``cancelled()`` turns
        true (checked between decoded blocks). ``decode(path, sample_rate, block_seconds)`` yields the
        mono blocks (default :func:`tagger.decode.decode_blocks`, in this process; the daemon passes
        :meth:`tagger.isolated.IsolatedDecoder.blocks`, so that no file can crash it); with excerpts it
        is called with ``coverage=`` too and yields as :func:`tagger.coverage.decode_coverage` does.
        """
        started = time.perf_counter()
        coverage = self.coverage if coverage is None else Coverage.parse(coverage)

        def analyse(prepare: Callable[[np.ndarray], np.ndarray]) -> tuple[TagStream, float | None]:
            """One pass over the file's audio, each block through ``prepare`` (measured, or raised: see
            :func:`tagger.level.analyse_floored`): the fed stream and the container's length when excerpts
            were read."""
            # Never a running floor: a quiet file is raised by one constant gain (analyse_floored).
            stream = self.stream(eager=False, keep_slices=keep_slices, fast=self.fast, level_floor=False)
            # With decode_ahead, decoding runs in its own thread, the front end and the model in this one: on 2
            # cores that balances the two (11 realworld tracks, per-file best of 5: 11.48 s with the front end
            # in the decoding thread, 10.63 s here).
            if coverage.full:
                blocks = (decode or decode_blocks)(path, self.sample_rate, self.block_seconds)
            else:
                blocks = (decode or decode_coverage)(path, self.sample_rate, self.block_seconds,
                                                     coverage=str(coverage))
            track_s: float | None = None  # the container's length, when excerpts were read
            source = read_ahead(blocks) if decode_ahead else blocks
            try:
                for block in source:
                    if cancelled is not None and cancelled():
                        raise Cancelled(f"{path}: cancelled")
                    if isinstance(block, Segment):  # an excerpt starts: no window spans the gap before it
                        stream.next_segment(block.start_s)
                        track_s = block.track_s
                        continue
                    stream.feed(prepare(block))
            finally:  # leaving early (an error, a cancellation) stops the decoder now, not when collected
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            return stream, track_s

        passes = analyse_floored(analyse, self.sample_rate, self.manifest.level_floor_dbfs,
                                 self.manifest.level_max_gain_db)
        stream, track_s = passes.result
        return stream.track_result(str(path), started, str(coverage), track_s, passes.level_dbfs, passes.gain_db)

    def floor_gain_db(self, level_dbfs: float | None) -> float:
        """The gain in dB a file at ``level_dbfs`` (gated, :mod:`tagger.level`) is analysed raised by: up to
        the model's ``level_floor_dbfs``, at most its ``level_max_gain_db``; 0 without a floor, at or above
        it, or for silence (None)."""
        return floor_gain_db(level_dbfs, self.manifest.level_floor_dbfs, self.manifest.level_max_gain_db)
