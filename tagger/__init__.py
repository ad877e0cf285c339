"""genre-tagger: streaming music genre tagging on ONNX Runtime.

The public API::

    from tagger import Tagger

    tagger = Tagger()                       # the shipped default model (or Tagger("path/to/model.onnx"))
    result = tagger.tag_file("song.flac")   # a TrackResult
    print(result.outputs["genre"].top)

    stream = tagger.stream(horizon_seconds=30)   # live: feed mono float32 blocks at tagger.sample_rate
    stream.feed(block)
    estimate = stream.estimate()                 # {output name: OutputEstimate}

The names below are imported when first used, so that a process that needs only a light module of the
package (``tagger.errors``, as the ZeroMQ publisher's own process does) does not load numpy and ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "Engine": "tagger.engine", "EngineOptions": "tagger.engine",
    "Ensemble": "tagger.ensemble", "LabelScore": "tagger.ensemble", "OutputEstimate": "tagger.ensemble",
    "ConfigError": "tagger.errors", "DecodeError": "tagger.errors", "ModelError": "tagger.errors",
    "TaggerError": "tagger.errors",
    "ModelManifest": "tagger.model", "OutputSpec": "tagger.model", "ViewSpec": "tagger.model",
    "read_manifest": "tagger.model",
    "SliceResult": "tagger.pipeline", "Tagger": "tagger.pipeline", "TagStream": "tagger.pipeline",
    "TrackResult": "tagger.pipeline",
}

__all__ = [
    "ConfigError", "DecodeError", "Engine", "EngineOptions", "Ensemble", "LabelScore", "ModelError",
    "ModelManifest", "OutputEstimate", "OutputSpec", "SliceResult", "TagStream", "Tagger", "TaggerError",
    "TrackResult", "ViewSpec", "__version__", "read_manifest",
]

if TYPE_CHECKING:
    from tagger.engine import Engine, EngineOptions
    from tagger.ensemble import Ensemble, LabelScore, OutputEstimate
    from tagger.errors import ConfigError, DecodeError, ModelError, TaggerError
    from tagger.model import ModelManifest, OutputSpec, ViewSpec, read_manifest
    from tagger.pipeline import SliceResult, Tagger, TagStream, TrackResult


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tagger' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
