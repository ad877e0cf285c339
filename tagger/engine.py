"""ONNX Runtime inference: provider choice, thread settings, model validation, batched runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tagger.errors import ModelError
from tagger.model import ModelManifest, manifest_from_props

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model.

    Attributes:
        device: ``"auto"`` (CUDA when it works, else CPU), ``"cuda"`` (fail if CUDA does not work)
            or ``"cpu"``.
        intra_op_threads: threads inside one operator; 0 means one per usable core, less the one that
            decodes beside the fast path's sessions.
        inter_op_threads: operators run in parallel; 1 (sequential) suits these small graphs.
        batch_size: slices per inference call (larger amortises the call overhead).
        chunk_frames: frames of frame-level features per call on the fast path: memory grows with it.
            Measured on 2 cores (4 realworld tracks, default model, peak RSS of the process): 512 → 93 ×
            real time, 265 MB; 1024 → 89 ×, 341 MB; 2048 → 88 ×, 365 MB.
        memory_arena: let ONNX Runtime keep its CPU memory arena between calls (a little faster; the
            process then holds its largest call's memory for good).
        blas_threads: threads for numpy's BLAS (the front end's mel projection), set for the whole
            process when an engine loads; 0 leaves them alone. One: OpenBLAS threads spin after each
            call and took the cores from ONNX Runtime (2 cores, default model, 11 realworld tracks:
            75-82 → 97-107 × real time).
    """

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    batch_size: int = 32
    chunk_frames: int = 512
    memory_arena: bool = True
    blas_threads: int = 1


ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu")


def installed_onnxruntime_builds() -> list[str]:
    """The ONNX Runtime distributions installed here: one, or two (a broken mix: both own ``onnxruntime/``)."""
    from importlib import metadata

    found = []
    for name in ONNXRUNTIME_BUILDS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def limit_blas_threads(threads: int) -> None:
    """Limit numpy's BLAS to ``threads`` threads for the rest of the process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def session_options(options: EngineOptions) -> ort.SessionOptions:
    """ONNX Runtime settings for ``options`` (shared by every session a model is run with)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or usable_cores()
    so.inter_op_num_threads = max(1, options.inter_op_threads)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = options.memory_arena
    # The fast path alternates between several sessions (and a decoding thread): a session's threads
    # spinning for work after its call took the cores from the next one. Measured on 2 cores: files
    # 60 → 89 × real time, live hop p50 13 → 6 ms, once they sleep instead.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def load_session(path: Path, providers: Sequence[str], options: EngineOptions | None = None
                 ) -> ort.InferenceSession:
    """Build an inference session, turning ONNX Runtime's many failure types into :class:`ModelError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file")
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(options or EngineOptions()),
                                    providers=list(providers))
    except Exception as exc:  # ORT raises Fail, InvalidProtobuf, InvalidGraph, NoSuchFile, RuntimeError...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load ONNX model ({first_line[:200]})") from None


class Engine:
    """A loaded, validated model ready to run batches of slices.

    ``provider`` is the execution provider actually in use (``CUDAExecutionProvider`` or
    ``CPUExecutionProvider``) and ``fallback_reason`` says why CUDA was not used when it was wanted.
    """

    def __init__(self, path: str | Path, options: EngineOptions | None = None,
                 cpu_path: str | Path | None = None) -> None:
        """``cpu_path``: the file to load instead of ``path`` if the session ends up on the CPU (the
        default model's int8 file); ``path`` is what a GPU runs. ``self.path`` is the file loaded."""
        self.path = Path(path)
        self.cpu_path = Path(cpu_path) if cpu_path else None
        self.options = options or EngineOptions()
        if self.options.blas_threads > 0:
            limit_blas_threads(self.options.blas_threads)
        self.fallback_reason = ""
        self.session = self._create_session()
        self.provider = self.session.get_providers()[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.manifest: ModelManifest = manifest_from_props(meta, str(self.path))
        self._check_graph()

    def _create_session(self) -> ort.InferenceSession:
        device = self.options.device
        if len(installed_onnxruntime_builds()) > 1:
            log.warning("both onnxruntime and onnxruntime-gpu are installed: they overwrite each other's files; "
                        "keep one (`make install-cpu` or `make install-gpu`, see the README)")
        if device not in ("auto", "cuda", "cpu"):
            raise ModelError(f"device {device!r} is not one of auto, cuda, cpu")
        if device == "cpu":
            return self._cpu_session()
        if CUDA not in ort.get_available_providers():
            reason = ("this ONNX Runtime build has no CUDA provider (the CPU build is installed: "
                      "`make install-gpu` swaps in the GPU build, see the README)")
        else:
            # ORT logs its own CUDA loading failure at error level: silence it, we report it once below.
            previous = ort.get_default_logger_severity() if hasattr(ort, "get_default_logger_severity") else 2
            ort.set_default_logger_severity(4)
            try:
                session = load_session(self.path, [CUDA, CPU], self.options)
            finally:
                ort.set_default_logger_severity(previous)
            if session.get_providers()[0] == CUDA:
                return session
            reason = "the CUDA provider did not initialise (no GPU or no CUDA/cuDNN libraries)"
        if device == "cuda":
            raise ModelError(f"{self.path}: CUDA requested but unavailable: {reason}")
        self.fallback_reason = reason
        log.debug("using the CPU: %s", reason)
        return self._cpu_session()

    def _cpu_session(self) -> ort.InferenceSession:
        if self.cpu_path is not None:
            self.path = self.cpu_path
        return load_session(self.path, [CPU], self.options)

    def _check_graph(self) -> None:
        m = self.manifest
        inputs = {i.name: i for i in self.session.get_inputs()}
        if m.input not in inputs:
            raise ModelError(f"{self.path}: manifest input {m.input!r} is not a graph input ({sorted(inputs)})")
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: the graph must have exactly one input, has {sorted(inputs)}")
        inp = inputs[m.input]
        if inp.type != "tensor(float)" or len(inp.shape) != 3:
            raise ModelError(f"{self.path}: input {m.input!r} must be float32 [batch, frames, mels], "
                             f"is {inp.type} {inp.shape}")
        _, time_dim, mel_dim = inp.shape
        for view in m.views:
            fe = m.front_ends[view.front_end]
            if isinstance(mel_dim, int) and mel_dim != fe.n_mels:
                raise ModelError(f"{self.path}: input has {mel_dim} mel bands, front end "
                                 f"{view.front_end!r} makes {fe.n_mels}")
            if isinstance(time_dim, int) and time_dim != view.window_frames:
                raise ModelError(f"{self.path}: input takes {time_dim} frames, view {view.name!r} "
                                 f"is {view.window_frames} frames")
        graph_outputs = {o.name: o for o in self.session.get_outputs()}
        for out in m.outputs:
            if out.onnx_output not in graph_outputs:
                raise ModelError(f"{self.path}: output {out.onnx_output!r} is not in the graph "
                                 f"({sorted(graph_outputs)})")
        # A dry run on each distinct window shape checks the label counts, whatever the declared shapes.
        shapes = {(v.window_frames, m.front_ends[v.front_end].n_mels) for v in m.views}
        for frames, mels in sorted(shapes):
            result = self.run(np.zeros((1, frames, mels), dtype=np.float32), release_memory=True)
            for out in m.outputs:
                got = result[out.name].shape
                if got != (1, len(out.labels)):
                    raise ModelError(f"{self.path}: output {out.name!r} gives shape {list(got)} for one slice, "
                                     f"but the manifest lists {len(out.labels)} labels")

    def run(self, batch: np.ndarray, release_memory: bool = False) -> dict[str, np.ndarray]:
        """Run a batch of slices float32 [n, frames, mels]; return each output's [n, labels].

        ``release_memory`` hands the call's working memory back afterwards (the arena keeps it otherwise):
        for calls, such as the load-time check, that a process may never repeat.
        """
        names = [o.onnx_output for o in self.manifest.outputs]
        options = None
        if release_memory and self.options.memory_arena and self.session.get_providers()[0] == "CPUExecutionProvider":
            options = ort.RunOptions()
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        values = self.session.run(names, {self.manifest.input: np.ascontiguousarray(batch, dtype=np.float32)},
                                  options)
        return {o.name: np.asarray(v, dtype=np.float32) for o, v in zip(self.manifest.outputs, values, strict=True)}
