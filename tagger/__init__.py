"""genre-tagger: streaming music genre tagging on ONNX Runtime.

The public API::

    from tagger import Tagger

    tagger = Tagger()                       # the shipped default model (or Tagger("path/to/model.onnx"))
    result = tagger.tag_file("song.flac")   # a TrackResult
    print(result.outputs["genre"].top)

    stream = tagger.stream(horizon_seconds=30)   # live: feed mono float32 blocks at tagger.sample_rate
    stream.feed(block)
    estimate = stream.estimate()                 # {output name: OutputEstimate}
"""

__version__ = "0.1.0"

from tagger.engine import Engine, EngineOptions
from tagger.ensemble import Ensemble, LabelScore, OutputEstimate
from tagger.errors import ConfigError, DecodeError, ModelError, TaggerError
from tagger.model import ModelManifest, OutputSpec, ViewSpec, read_manifest
from tagger.pipeline import SliceResult, Tagger, TagStream, TrackResult

__all__ = [
    "ConfigError", "DecodeError", "Engine", "EngineOptions", "Ensemble", "LabelScore", "ModelError",
    "ModelManifest", "OutputEstimate", "OutputSpec", "SliceResult", "TagStream", "Tagger", "TaggerError",
    "TrackResult", "ViewSpec", "__version__", "read_manifest",
]
