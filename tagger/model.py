"""Self-describing ONNX model files.

A genre-tagger model is one ONNX file whose ``metadata_props`` carry a JSON manifest under the key
``genre_tagger``. The manifest is the single source of truth for the front end (sample rate, STFT,
mel and log parameters), the views (window lengths and hops, in frames) and the labels of every
output: no copy of those numbers lives in code.

Manifest (format 1)::

    {
      "format": 1,
      "name": "msd-musicnn-gtzan", "version": "1.0.0",
      "description": "...", "licence": "...", "provenance": "...", "training_data": "...",
      "metrics": {...},
      "input": "mel",                         # ONNX input, float32 [batch, frames, n_mels]
      "front_ends": {"mel16k": {...}},        # see tagger.frontend.FrontEndConfig
      "views": [{"name": "2.56s", "front_end": "mel16k", "window_frames": 160, "hop_frames": 80}],
      "outputs": [{"name": "genre", "onnx_output": "genre", "kind": "softmax", "labels": [...],
                   "title": "Genre (GTZAN)"}],
      "music": {"output": "music", "threshold": 0.5},  # optional: the music detector
      "level_floor_dbfs": -30.0,              # optional: quiet files are analysed raised to it
      "level_max_gain_db": 30.0               # optional (with the floor): the most they are raised
    }

``kind`` is ``softmax`` (one label per track, probabilities summing to 1) or ``sigmoid``
(multi-label, independent probabilities). Outputs are probabilities, not logits, and already
calibrated: a runtime shows them as they are.

``music`` (optional) names a one-label sigmoid output that is the probability that a slice is music:
a track or a stretch of a stream whose mean is below ``threshold`` is "no music" (silence, noise,
speech, applause...). That output is not a genre: runtimes report it beside the genres, not among them.

``level_floor_dbfs`` (optional, dBFS, within (-70, 0)): the log-mel front end is not level-invariant and
the model learnt genres only at the levels of its training data, so a file whose gated level
(:mod:`tagger.level`) is below the floor is analysed raised to it by one constant gain, at most
``level_max_gain_db`` (optional, dB, within (0, 60], default :data:`tagger.level.DEFAULT_MAX_GAIN_DB`).
Without the key nothing is raised.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tagger.errors import ModelError
from tagger.frontend import FrontEndConfig
from tagger.level import ABSOLUTE_GATE_DBFS, DEFAULT_MAX_GAIN_DB, MAX_MAX_GAIN_DB

MANIFEST_KEY = "genre_tagger"
FORMAT_VERSION = 1
OUTPUT_KINDS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ViewSpec:
    """One slicing of a front end's frames: windows of ``window_frames`` every ``hop_frames``."""

    name: str
    front_end: str
    window_frames: int
    hop_frames: int

    def with_hop(self, hop_frames: int) -> ViewSpec:
        return ViewSpec(self.name, self.front_end, self.window_frames, hop_frames)


@dataclass(frozen=True)
class OutputSpec:
    """One model output: its ONNX name, its labels and whether it is single- or multi-label."""

    name: str
    onnx_output: str
    kind: str
    labels: tuple[str, ...]
    title: str = ""

    @property
    def multi_label(self) -> bool:
        return self.kind == "sigmoid"


@dataclass(frozen=True)
class FrameStage:
    """A part of the frame features that depends on the input alone: ``tensor`` [batch, channels,
    frames], frame-aligned with the input ('same' padding), with receptive field ``context`` (frames
    before, after)."""

    tensor: str
    context: tuple[int, int]


@dataclass(frozen=True)
class FramePooling:
    """How a model that pools over time can be run faster: frame-level features once per track.

    The graph also outputs ``features`` [batch, channels, frames] (the network before its temporal
    pooling) and ``pooled`` [batch, 2·channels]: max and mean over the window's frames, interleaved
    ``[max0, mean0, max1, mean1, …]``. A runtime may compute ``features`` over a whole track, pool each
    window from them and run only the graph from ``pooled`` on. ``context`` (frames before, after) is
    the features' receptive field: a frame's features depend on that many frames on each side.

    ``stages`` optionally split the features into parts computed from the input on their own (see
    :class:`FrameStage`), from which the features follow with receptive field ``stages_context``. A
    streaming runtime then computes each stage once per frame and only the small rest over its context:
    for the default model the timbral convolutions (about 80 % of the arithmetic) see 3 frames each way
    and the temporal ones 64, and the mid-end joining them 9, so a few new frames cost little more than
    themselves instead of 145 frames of context.
    """

    features: str
    pooled: str
    pooling: str
    context: tuple[int, int]
    stages: tuple[FrameStage, ...] = ()
    stages_context: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class MusicDetector:
    """The model's music detector: ``output`` (one-label sigmoid) and the mean probability below which
    audio is "no music"."""

    output: str
    threshold: float = 0.5


@dataclass(frozen=True)
class ModelManifest:
    """The parsed, validated manifest of a model file."""

    name: str
    version: str
    input: str
    front_ends: dict[str, FrontEndConfig]
    views: tuple[ViewSpec, ...]
    outputs: tuple[OutputSpec, ...]
    description: str = ""
    licence: str = ""
    provenance: str = ""
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    frame_pooling: FramePooling | None = None
    music: MusicDetector | None = None
    level_floor_dbfs: float | None = None
    level_max_gain_db: float = DEFAULT_MAX_GAIN_DB

    @property
    def genre_outputs(self) -> tuple[OutputSpec, ...]:
        """The outputs that name genres (every output but the music detector)."""
        return tuple(o for o in self.outputs if self.music is None or o.name != self.music.output)

    def view_seconds(self, view: ViewSpec) -> tuple[float, float]:
        """Return (window, hop) of a view in seconds."""
        fe = self.front_ends[view.front_end]
        return view.window_frames * fe.frame_seconds, view.hop_frames * fe.frame_seconds

    def output(self, name: str) -> OutputSpec:
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(name)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "licence": self.licence,
            "provenance": self.provenance,
            "training_data": self.training_data,
            "metrics": self.metrics,
            "input": self.input,
            "front_ends": {k: asdict(v) for k, v in self.front_ends.items()},
            "views": [asdict(v) for v in self.views],
            "outputs": [
                {"name": o.name, "onnx_output": o.onnx_output, "kind": o.kind, "labels": list(o.labels),
                 "title": o.title}
                for o in self.outputs
            ],
        }
        if self.frame_pooling:
            doc["frame_pooling"] = asdict(self.frame_pooling)
        if self.music:
            doc["music"] = asdict(self.music)
        if self.level_floor_dbfs is not None:
            doc["level_floor_dbfs"] = self.level_floor_dbfs
            doc["level_max_gain_db"] = self.level_max_gain_db
        return json.dumps(doc, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> ModelManifest:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: manifest is not valid JSON ({exc.msg} at char {exc.pos})") from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "model") -> ModelManifest:
        if not isinstance(doc, dict):
            raise ModelError(f"{source}: manifest must be a JSON object")
        fmt = doc.get("format")
        if fmt != FORMAT_VERSION:
            raise ModelError(f"{source}: manifest format {fmt!r} is not supported (expected {FORMAT_VERSION})")
        for key in ("name", "version", "input", "front_ends", "views", "outputs"):
            if key not in doc:
                raise ModelError(f"{source}: manifest lacks required key {key!r}")
        if not isinstance(doc["front_ends"], dict) or not doc["front_ends"]:
            raise ModelError(f"{source}: 'front_ends' must be a non-empty object")
        front_ends = {}
        for fe_name, fe_doc in doc["front_ends"].items():
            try:
                front_ends[fe_name] = FrontEndConfig.from_dict(fe_doc)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"{source}: front end {fe_name!r}: {exc}") from None
        views = []
        if not isinstance(doc["views"], list) or not doc["views"]:
            raise ModelError(f"{source}: 'views' must be a non-empty list")
        for v in doc["views"]:
            try:
                view = ViewSpec(str(v["name"]), str(v["front_end"]), int(v["window_frames"]),
                                int(v["hop_frames"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError(f"{source}: bad view {v!r}: {exc}") from None
            if view.front_end not in front_ends:
                raise ModelError(f"{source}: view {view.name!r} names unknown front end {view.front_end!r}")
            if view.window_frames < 1 or view.hop_frames < 1:
                raise ModelError(f"{source}: view {view.name!r} needs positive window_frames and hop_frames")
            views.append(view)
        if len({v.name for v in views}) != len(views):
            raise ModelError(f"{source}: view names must be unique")
        outputs = []
        if not isinstance(doc["outputs"], list) or not doc["outputs"]:
            raise ModelError(f"{source}: 'outputs' must be a non-empty list")
        for o in doc["outputs"]:
            try:
                out = OutputSpec(str(o["name"]), str(o.get("onnx_output", o["name"])), str(o["kind"]),
                                 tuple(str(label) for label in o["labels"]), str(o.get("title", "")))
            except (KeyError, TypeError) as exc:
                raise ModelError(f"{source}: bad output {o!r}: missing {exc}") from None
            if out.kind not in OUTPUT_KINDS:
                raise ModelError(f"{source}: output {out.name!r} kind {out.kind!r} is not one of {OUTPUT_KINDS}")
            if not out.labels:
                raise ModelError(f"{source}: output {out.name!r} has no labels")
            if len(set(out.labels)) != len(out.labels):
                raise ModelError(f"{source}: output {out.name!r} has duplicate labels")
            outputs.append(out)
        if len({o.name for o in outputs}) != len(outputs):
            raise ModelError(f"{source}: output names must be unique")
        frame_pooling = None
        if doc.get("frame_pooling") is not None:
            fp = doc["frame_pooling"]
            try:
                stages = tuple(FrameStage(str(st["tensor"]), (int(st["context"][0]), int(st["context"][1])))
                               for st in fp.get("stages", ()))
                sc = fp.get("stages_context", (0, 0))
                frame_pooling = FramePooling(str(fp["features"]), str(fp["pooled"]), str(fp["pooling"]),
                                             (int(fp["context"][0]), int(fp["context"][1])), stages,
                                             (int(sc[0]), int(sc[1])))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise ModelError(f"{source}: bad frame_pooling {fp!r}: {exc}") from None
            if frame_pooling.pooling != "max_mean_interleaved":
                raise ModelError(f"{source}: frame_pooling.pooling {frame_pooling.pooling!r} is not supported")
        music = None
        if doc.get("music") is not None:
            md = doc["music"]
            try:
                music = MusicDetector(str(md["output"]), float(md.get("threshold", 0.5)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ModelError(f"{source}: bad music {md!r}: {exc}") from None
            spec = next((o for o in outputs if o.name == music.output), None)
            if spec is None or spec.kind != "sigmoid" or len(spec.labels) != 1:
                raise ModelError(f"{source}: music output {music.output!r} must be a one-label sigmoid output")
            if not 0.0 < music.threshold < 1.0:
                raise ModelError(f"{source}: music threshold {music.threshold} is not within (0, 1)")
            if len(outputs) < 2:
                raise ModelError(f"{source}: a model needs a genre output besides its music detector")
        floor, max_gain = _level_floor(doc, source)
        return cls(
            name=str(doc["name"]), version=str(doc["version"]), input=str(doc["input"]),
            front_ends=front_ends, views=tuple(views), outputs=tuple(outputs),
            description=str(doc.get("description", "")), licence=str(doc.get("licence", "")),
            provenance=str(doc.get("provenance", "")), training_data=str(doc.get("training_data", "")),
            metrics=dict(doc.get("metrics", {})), frame_pooling=frame_pooling, music=music,
            level_floor_dbfs=floor, level_max_gain_db=max_gain,
        )


def _level_floor(doc: dict, source: str) -> tuple[float | None, float]:
    """The manifest's ``level_floor_dbfs`` (None when absent) and ``level_max_gain_db``, validated."""
    def number(key: str) -> float:
        value = doc[key]
        # bool is an int to Python; a floor of "true" is a typo, not 1 dBFS.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ModelError(f"{source}: {key} {value!r} is not a number")
        return float(value)

    if doc.get("level_floor_dbfs") is None:
        if doc.get("level_max_gain_db") is not None:
            raise ModelError(f"{source}: level_max_gain_db without level_floor_dbfs")
        return None, DEFAULT_MAX_GAIN_DB
    floor = number("level_floor_dbfs")
    if not ABSOLUTE_GATE_DBFS < floor < 0.0:
        raise ModelError(f"{source}: level_floor_dbfs {floor:g} is not within ({ABSOLUTE_GATE_DBFS:g}, 0) dBFS")
    max_gain = DEFAULT_MAX_GAIN_DB if doc.get("level_max_gain_db") is None else number("level_max_gain_db")
    if not 0.0 < max_gain <= MAX_MAX_GAIN_DB:
        raise ModelError(f"{source}: level_max_gain_db {max_gain:g} is not within (0, {MAX_MAX_GAIN_DB:g}] dB")
    return floor, max_gain


def read_manifest(path: str | Path) -> ModelManifest:
    """Read and validate the manifest of an ONNX model file (loads the graph on the CPU, runs nothing)."""
    from tagger.engine import load_session

    session = load_session(Path(path), providers=["CPUExecutionProvider"])
    return manifest_from_props(session.get_modelmeta().custom_metadata_map, str(path))


def manifest_from_props(props: dict[str, str], source: str) -> ModelManifest:
    if MANIFEST_KEY not in props:
        raise ModelError(f"{source}: no '{MANIFEST_KEY}' manifest in the ONNX metadata (not a genre-tagger model)")
    return ModelManifest.from_json(props[MANIFEST_KEY], source)
