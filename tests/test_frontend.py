"""The streaming front end: equal to the whole-file computation for any block sizes, and to librosa's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import REFERENCE
from hypothesis import given, settings
from hypothesis import strategies as st

from tagger.frontend import FrontEndConfig, StreamingFrontEnd, mel_filterbank, round_to_float16
from tagger.views import build_streams
from training.default_model import MUSICNN_FRONT_END, VIEWS

CONFIG = MUSICNN_FRONT_END


def _signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CONFIG.sample_rate)) / CONFIG.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * (220 + 200 * t) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _stream(signal: np.ndarray, sizes) -> np.ndarray:
    fe = StreamingFrontEnd(CONFIG)
    out = []
    pos = 0
    sizes = iter(sizes)
    while pos < signal.size:
        n = next(sizes)
        out.append(fe.push(signal[pos:pos + n]))
        pos += n
    out.append(fe.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("block", [1, 37, 4096])
def test_streamed_frames_equal_whole_file(block: int) -> None:
    signal = _signal(1.5 if block == 1 else 7.3)
    whole = CONFIG.spectrogram(signal)
    assert whole.shape == (CONFIG.frames_for_samples(signal.size), CONFIG.n_mels)
    streamed = _stream(signal, iter(lambda: block, None))
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5, rtol=0)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=60),
       seconds=st.floats(min_value=0.01, max_value=6.0))
def test_streamed_frames_equal_whole_file_for_random_blocks(sizes: list[int], seconds: float) -> None:
    signal = _signal(seconds, seed=len(sizes))
    streamed = _stream(signal, (sizes[i % len(sizes)] for i in range(10**9)))
    np.testing.assert_allclose(streamed, CONFIG.spectrogram(signal), atol=1e-5, rtol=0)


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=20000), min_size=1, max_size=30))
def test_slices_from_a_stream_equal_slices_from_the_file(sizes: list[int]) -> None:
    signal = _signal(11.0, seed=3)
    whole = CONFIG.spectrogram(signal)
    streams = build_streams({"musicnn": CONFIG}, VIEWS)
    got = []
    pos = 0
    i = 0
    while pos < signal.size:
        n = sizes[i % len(sizes)]
        for s in streams:
            got.extend(s.push(signal[pos:pos + n]))
        pos += n
        i += 1
    for s in streams:
        got.extend(s.finish())
    for view in VIEWS:
        mine = [s for s in got if s.view == view.name]
        starts = list(range(0, whole.shape[0] - view.window_frames + 1, view.hop_frames))
        if starts[-1] + view.window_frames < whole.shape[0]:
            starts.append(whole.shape[0] - view.window_frames)  # the end-aligned last window
        assert [s.start_frame for s in mine] == starts
        for s in mine:
            np.testing.assert_allclose(s.frames, whole[s.start_frame:s.start_frame + view.window_frames], atol=1e-5)


def test_track_shorter_than_a_window_gives_one_looped_slice_per_view() -> None:
    signal = _signal(1.0)
    whole = CONFIG.spectrogram(signal)
    (stream,) = build_streams({"musicnn": CONFIG}, VIEWS)
    slices = [*stream.push(signal), *stream.finish()]
    assert sorted(s.view for s in slices) == sorted(v.name for v in VIEWS)
    for s in slices:
        assert s.padded
        np.testing.assert_array_equal(s.frames[: whole.shape[0]], whole)
        np.testing.assert_array_equal(s.frames[whole.shape[0]: 2 * whole.shape[0]], whole)


def test_rolling_buffer_memory_is_bounded_for_a_long_stream() -> None:
    (stream,) = build_streams({"musicnn": CONFIG}, VIEWS)
    block = _signal(10.0)
    for _ in range(60):  # ten minutes
        stream.push(block)
    held = stream.frames.total - stream.frames.first
    assert stream.frames.total > 37000
    assert held <= 2 * max(v.window_frames + v.hop_frames for v in VIEWS)


@pytest.mark.parametrize("name", ["MSD_musicnn_real_gtzan_jazz00002", "MSD_musicnn_real_gtzan_metal00001",
                                  "MSD_musicnn_real_asc_frontiers"])
def test_front_end_reproduces_musicnn_librosa_logmel(name: str) -> None:
    ref = np.load(REFERENCE / f"{name}.npz")
    ours = CONFIG.spectrogram(ref["audio16k"])
    assert ours.shape == ref["logmel"].shape
    diff = np.abs(ours - ref["logmel"])
    # Only float16 rounding ties (float32 vs librosa's arithmetic) differ, by one float16 step.
    assert diff.mean() < 1e-6
    assert diff.max() < 1e-3


def test_float16_rounding_equals_numpy_conversion() -> None:
    # Every finite float16, the midpoints between neighbours (ties go to even) and the doubles just
    # either side of them, the overflow edge, subnormals, specials, and a million random magnitudes.
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16)
    grid = np.unique(halves[np.isfinite(halves)].astype(np.float64))
    mid = (grid[1:] + grid[:-1]) / 2
    rng = np.random.default_rng(0)
    values = np.concatenate([
        grid, mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf),
        65504.0 + np.array([15.999, 16.0, 16.001, 1e9]), [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324],
        rng.standard_normal(10**6) * np.exp(rng.uniform(-40.0, 12.0, 10**6)),
    ])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(round_to_float16(values), expected)


def test_slaney_and_htk_filterbanks_are_triangles_with_the_right_norm() -> None:
    slaney = mel_filterbank(16000, 512, 96, 0.0, 8000.0, "slaney", "slaney")
    assert slaney.shape == (96, 257)
    assert (slaney >= 0).all() and (slaney.sum(axis=1) > 0).all()
    htk = mel_filterbank(22050, 2048, 128, 0.0, 11025.0, "htk", None)
    assert np.isclose(htk.max(), 1.0, atol=0.05)


def test_invalid_front_end_parameters_are_rejected() -> None:
    doc = dataclasses.asdict(CONFIG)
    with pytest.raises(ValueError, match="mel_scale"):
        FrontEndConfig.from_dict({**doc, "mel_scale": "bark"})
    with pytest.raises(ValueError, match="unknown front-end keys"):
        FrontEndConfig.from_dict({**doc, "dither": 1})
    with pytest.raises(ValueError, match="fmax"):
        FrontEndConfig.from_dict({**doc, "fmax": 9000.0})
