"""``genre-tagger batch --ray``: the same rows as the local run, computed by Ray Data across a cluster.

Stages: the paths (a Ray Dataset) → decoding and the front end in CPU tasks (:func:`front_end_batch`: the
log-mel frames of the whole track, or of each coverage excerpt) → the model in a pool of actors
(:class:`ModelActor`: each loads the model once; ``num_gpus=1`` each when the cluster has GPUs, and then
larger batches) → rows streamed back to the driver, which is the one writer of the shards and drops a
path it has already written (a task Ray retried after a lost node cannot make a duplicate). Ray Data
retries the tasks and restarts the actors of a node that dies; a track whose CPU task fails for good
ends as an error row, like a file that cannot be decoded.

Needs the ``cluster`` extra (``pip install 'genre-tagger[cluster]'``); every node must see the files at
the same paths and have genre-tagger and its model installed.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tagger.errors import ConfigError, TaggerError

log = logging.getLogger(__name__)

# Tracks per CPU task (each decoded and turned into frames alone; a batch only groups the scheduling).
FRONT_END_BATCH = 4
# Tracks per model call on the CPU, and on a GPU (batches across files keep a GPU busy).
MODEL_BATCH_CPU, MODEL_BATCH_GPU = 4, 32


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'genre-tagger[cluster]'") from None
    return ray


def connect(address: str) -> None:
    """Join the cluster at ``address`` ('auto', 'local' to start one here, or ray://HOST:PORT)."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster ({first[:200]})") from None


def _manifest(arguments: dict[str, Any]):
    from tagger.model import read_manifest
    from tagger.registry import resolve_model

    return read_manifest(resolve_model(arguments.get("model")))


def track_frames(path: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Decode ``path`` (its coverage's excerpts) and compute the model's log-mel frames: a list of
    segments (start in the track in seconds or None, samples, {front end: float32 [n, mels]}), the
    track's declared length when excerpts were read, its gated level (dBFS, :mod:`tagger.level`) and the
    gain (dB) its frames were computed with: a track quieter than the model's level floor is decoded again
    and its frames computed raised, as :meth:`tagger.pipeline.Tagger.tag_file` does."""
    from tagger.coverage import Segment, decode_coverage
    from tagger.decode import DEFAULT_BLOCK_SECONDS
    from tagger.frontend import StreamingFrontEnd
    from tagger.level import analyse_floored

    manifest = _manifest(arguments)
    (rate,) = {fe.sample_rate for fe in manifest.front_ends.values()}

    def frames(prepare: Callable[[np.ndarray], np.ndarray]) -> tuple[list[dict[str, Any]], float | None]:
        """One pass: the segments' frames of every block through ``prepare`` (measured, or raised), and the
        track's declared length when excerpts were read."""
        segments: list[dict[str, Any]] = []
        track_s = None

        def start(at: float | None) -> None:
            segments.append({"start_s": at, "samples": 0, "front_ends": {n: StreamingFrontEnd(c) for n, c in
                                                                       manifest.front_ends.items()},
                             "frames": {n: [] for n in manifest.front_ends}})

        for item in decode_coverage(path, rate, arguments.get("block_seconds", DEFAULT_BLOCK_SECONDS),
                                    coverage=arguments.get("coverage", "full")):
            if isinstance(item, Segment):
                start(item.start_s)
                track_s = item.track_s
                continue
            if not segments:
                start(None)
            segment = segments[-1]
            segment["samples"] += item.size
            samples = prepare(item)
            for name, front_end in segment["front_ends"].items():
                segment["frames"][name].append(front_end.push(samples))
        out = []
        for segment in segments:
            computed = {}
            for name, front_end in segment["front_ends"].items():
                parts = [*segment["frames"][name], front_end.flush()]
                computed[name] = np.concatenate(parts).astype(np.float32, copy=False)
            out.append({"start_s": segment["start_s"], "samples": segment["samples"], "frames": computed})
        return out, track_s

    # Quieter than the model's floor: decoded again, raised (only quiet tracks pay it), as tag_file does.
    passes = analyse_floored(frames, rate, manifest.level_floor_dbfs, manifest.level_max_gain_db)
    segments, track_s = passes.result
    return {"segments": segments, "track_s": track_s, "level_dbfs": passes.level_dbfs, "gain_db": passes.gain_db}


def front_end_batch(batch: dict[str, np.ndarray], arguments: dict[str, Any]):
    """CPU task: each path's identity (size, mtime, fingerprint) and frames, or its error (an Arrow table:
    typed columns keep None as None)."""
    import pyarrow

    from service.batch import file_identity

    out: dict[str, list] = {"path": [], "payload": [], "error": [], "identity": []}
    for path in batch["path"]:
        path = str(path)
        out["path"].append(path)
        out["identity"].append(pickle.dumps(file_identity(path)))
        try:
            out["payload"].append(pickle.dumps(track_frames(path, arguments), protocol=5))
            out["error"].append(None)
        except TaggerError as exc:
            out["payload"].append(None)
            out["error"].append(str(exc))
        except OSError as exc:
            out["payload"].append(None)
            out["error"].append(f"{path}: {exc.strerror or exc}")
    return pyarrow.table(out, schema=pyarrow.schema([("path", pyarrow.string()), ("payload", pyarrow.binary()),
                                                     ("error", pyarrow.string()), ("identity", pyarrow.binary())]))


class ModelActor:
    """Loads the model once; turns each track's frames into its shard row."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        from tagger.pipeline import Tagger

        self.tagger = Tagger(**arguments)
        self.tagger.prepare()
        self.coverage = str(self.tagger.coverage)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow

        from service.batch import arrow_schema, result_row

        rows = []
        for path, payload, error, identity in zip(batch["path"], batch["payload"], batch["error"],
                                                  batch["identity"], strict=True):
            result = None
            if payload is not None:
                try:
                    result = self._tag(str(path), pickle.loads(payload))
                except TaggerError as exc:
                    error = str(exc)
            rows.append(result_row(str(path), result, error, pickle.loads(identity)))
        return pyarrow.Table.from_pylist(rows, schema=arrow_schema())  # typed: None stays None

    def _tag(self, path: str, data: dict[str, Any]):
        started = time.perf_counter()
        stream = self.tagger.stream(eager=False, fast=self.tagger.fast)
        for segment in data["segments"]:
            if segment["start_s"] is not None:
                stream.next_segment(segment["start_s"])
            stream.feed_frames(segment["frames"], segment["samples"])
        return stream.track_result(path, started, self.coverage, data["track_s"], data.get("level_dbfs"),
                                   data.get("gain_db", 0.0))


def ray_rows(todo: list[str], arguments: dict[str, Any], address: str, actors: int = 0) -> Iterator[dict]:
    """Rows of ``todo`` computed on the Ray cluster at ``address``, as they arrive."""
    if not todo:
        return
    ray = _ray()
    connect(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    actors = actors or (gpus if gpus else max(1, cpus // 4))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    arguments = {**arguments, "coverage": str(arguments.get("coverage") or "full")}
    # On a GPU the default model file (not its CPU twin) and CUDA; the CPU tasks never load a model.
    actor_arguments = dict(arguments)
    paths = ray.data.from_items([{"path": p} for p in todo],
                                override_num_blocks=max(1, min(len(todo), 4 * cpus)))
    frames = paths.map_batches(front_end_batch, fn_kwargs={"arguments": arguments}, batch_size=FRONT_END_BATCH,
                               num_cpus=1, max_retries=3)
    rows = frames.map_batches(ModelActor, fn_constructor_kwargs={"arguments": actor_arguments},
                              batch_size=MODEL_BATCH_GPU if gpus else MODEL_BATCH_CPU,
                              compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                              num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=-1, max_task_retries=-1)
    log.info("batch on Ray: %d tracks, %d CPUs, %d GPUs, %d model actors", len(todo), cpus, gpus, actors)
    for batch in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()
