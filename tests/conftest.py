"""Shared fixtures: real audio from ../shared/data, tiny real ONNX models exported from PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
REALWORLD = DATA / "realworld"
REFERENCE = SHARED / "reference" / "musicnn"

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config: pytest.Config) -> None:
    if not REALWORLD.is_dir():
        raise pytest.UsageError(f"{REALWORLD} is missing: the tests need the shared data beside the repository")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models import export_tiny

    return export_tiny(tmp_path_factory.mktemp("models") / "tiny-test.onnx")


@pytest.fixture(scope="session")
def realworld() -> Path:
    return REALWORLD


def encode(samples: np.ndarray, rate: int, path: Path, codec: str, fmt: str | None = None,
           codec_rate: int | None = None, options: dict[str, str] | None = None) -> Path:
    """Encode mono float samples in [-1, 1] at ``rate`` Hz as stereo with PyAV."""
    out_rate = codec_rate or rate
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=out_rate, layout="stereo", options=options or {})
        if options and "strict" in options:
            stream.codec_context.options = options
        resampler = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout="stereo",
                                      rate=out_rate)
        for start in range(0, len(samples), 4096):
            chunk = samples[start:start + 4096].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                container.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return path


FORMATS = {
    # suffix: (encoder, container format, encoder options)
    "wav": ("pcm_s16le", "wav", None),
    "flac": ("flac", "flac", None),
    "mp3": ("libmp3lame", "mp3", None),
    "ogg": ("vorbis", "ogg", {"strict": "experimental"}),
    "opus": ("libopus", "ogg", None),
    "m4a": ("aac", "ipod", None),
    "aiff": ("pcm_s16be", "aiff", None),
}


@pytest.fixture(scope="session")
def excerpt() -> tuple[np.ndarray, int]:
    """20 s of a real track (GPL-2+ game music, licence in its folder), mono float32 at 44.1 kHz."""
    from tagger.decode import decode_blocks

    rate = 44100
    blocks = []
    total = 0
    for block in decode_blocks(REALWORLD / "asc-music" / "machine_wars.mp3", rate):
        blocks.append(block)
        total += block.size
        if total >= 30 * rate:
            break
    audio = np.concatenate(blocks)[10 * rate: 30 * rate]
    return audio, rate


@pytest.fixture(scope="session")
def format_files(tmp_path_factory: pytest.TempPathFactory, excerpt) -> dict[str, Path]:
    """The excerpt encoded in every format the issue names, made with PyAV."""
    audio, rate = excerpt
    folder = tmp_path_factory.mktemp("formats")
    files = {}
    for suffix, (codec, fmt, options) in FORMATS.items():
        codec_rate = 48000 if codec == "libopus" else None
        files[suffix] = encode(audio, rate, folder / f"excerpt.{suffix}", codec, fmt, codec_rate, options)
    return files


@pytest.fixture(scope="session")
def floored():
    """The shipped default CPU model (a ``Tagger``), which states a level floor."""
    from tagger import Tagger

    tagger = Tagger()
    assert tagger.manifest.level_floor_dbfs is not None, (
        f"the shipped default model {tagger.engine.path} states no level floor")
    return tagger


@pytest.fixture(scope="session")
def unfloored(tmp_path_factory: pytest.TempPathFactory):
    """The shipped default CPU model with the floor taken out of its manifest (a model of before the floor)."""
    import dataclasses
    import shutil

    from tagger import Tagger
    from tagger.model import read_manifest
    from tagger.registry import default_cpu_model
    from training.export import rewrite_manifest

    path = tmp_path_factory.mktemp("models") / "no-floor.onnx"
    shutil.copyfile(default_cpu_model(), path)
    rewrite_manifest(path, dataclasses.replace(read_manifest(path), level_floor_dbfs=None))
    return Tagger(path)
