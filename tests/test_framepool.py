"""The frame-pooling fast path: exact chunking, and close to the per-window reference semantics."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest

from tagger import Tagger
from tagger.decode import decode_file
from tagger.framepool import FeatureStream, pool_windows


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    return Tagger()


def test_default_model_supports_the_fast_path(tagger: Tagger, tiny_model: Path) -> None:
    assert tagger.fast and tagger.manifest.frame_pooling.context == (72, 73)
    fp = tagger.manifest.frame_pooling
    assert [st.context for st in fp.stages] == [(3, 3), (63, 64)] and fp.stages_context == (9, 9)
    assert not Tagger(tiny_model).fast  # no frame_pooling in its manifest: per-window inference


def test_chunked_features_equal_one_whole_track_computation(tagger: Tagger, realworld: Path) -> None:
    audio = decode_file(realworld / "warzone2100-music" / "menu.opus", tagger.sample_rate)[: 40 * tagger.sample_rate]
    config = tagger.manifest.front_ends["musicnn"]
    spec = config.spectrogram(audio)
    whole = tagger.frame_runner.features(spec)
    stream = FeatureStream(tagger.frame_runner, config, tagger.views, chunk_frames=300)
    slices = []
    rng = np.random.default_rng(0)
    pos = 0
    while pos < audio.size:
        n = int(rng.integers(100, 30000))
        slices += stream.push(audio[pos:pos + n])
        pos += n
    slices += stream.finish()
    for view in tagger.views:
        mine = [s for s in slices if s.view == view.name]
        starts = [s.start_frame for s in mine]
        expected = pool_windows(whole, 0, starts, view.window_frames)
        np.testing.assert_allclose(np.stack([s.pooled for s in mine]), expected, atol=1e-4, rtol=1e-5)
        assert starts[-1] == spec.shape[0] - view.window_frames  # the end-aligned last window


@pytest.mark.parametrize("staged", [True, False])
def test_live_incremental_features_equal_one_whole_track_computation(tagger: Tagger, realworld: Path,
                                                                      staged: bool) -> None:
    # Live: 50 ms blocks, features computed as soon as they are final (a few frames per call), with the
    # stages computed once per frame, or without them (the whole receptive field every call).
    audio = decode_file(realworld / "asc-music" / "machine_wars.mp3", tagger.sample_rate)[: 20 * tagger.sample_rate]
    config = tagger.manifest.front_ends["musicnn"]
    spec = config.spectrogram(audio)
    whole = tagger.frame_runner.features(spec)
    runner = tagger.frame_runner
    if not staged:
        runner = copy.copy(runner)
        runner.stages = ()
        runner.features_session = ort.InferenceSession(
            onnx.utils.Extractor(onnx.load(str(tagger.engine.path))).extract_model(
                ["mel"], ["frame_features"]).SerializeToString(), providers=["CPUExecutionProvider"])
    stream = FeatureStream(runner, config, tagger.views, eager=True)
    block = tagger.sample_rate // 20
    calls = 0
    slices = []
    for pos in range(0, audio.size, block):
        before = stream._done
        slices += stream.push(audio[pos:pos + block])
        calls += stream._done > before
        # Final features trail the input by the receptive field (and the stage's lag) only.
        assert stream._total - stream._done <= 73 + 4
    slices += stream.finish()
    assert calls > 300  # incremental: a few frames per call, not windows
    for view in tagger.views:
        mine = [s for s in slices if s.view == view.name]
        expected = pool_windows(whole, 0, [s.start_frame for s in mine], view.window_frames)
        # float32 convolutions sum in a different order for a 3-frame call than for a whole track
        np.testing.assert_allclose(np.stack([s.pooled for s in mine]), expected, atol=1e-4, rtol=1e-4)


def test_fast_path_stays_close_to_the_naive_per_window_results(tagger: Tagger, realworld: Path) -> None:
    naive = Tagger(fast=False)
    worst = 0.0
    for path in [realworld / "asc-music" / "machine_wars.mp3", realworld / "singularity-music" / "Awakening.ogg"]:
        fast_result, naive_result = tagger.tag_file(path), naive.tag_file(path)
        for name, est in fast_result.outputs.items():
            reference = {s.label: s.score for s in naive_result.outputs[name].scores}
            worst = max(worst, max(abs(s.score - reference[s.label]) for s in est.scores))
            assert est.slices == naive_result.outputs[name].slices
    print(f"\nlargest track-level |fast - naive| probability: {worst:.4f}")
    assert worst < 0.1


def test_files_decoded_in_a_thread_give_the_same_result_as_blocks_fed_inline(tagger: Tagger,
                                                                             realworld: Path) -> None:
    # tag_file decodes in a read-ahead thread; feeding the decoded samples block by block in this
    # thread must give the same slices and estimate.
    from tagger.decode import decode_blocks

    track = realworld / "warzone2100-music" / "menu.opus"
    threaded = tagger.tag_file(track, keep_slices=True)
    stream = tagger.stream(eager=False, keep_slices=True, fast=True)
    for block in decode_blocks(track, tagger.sample_rate, tagger.block_seconds):
        stream.feed(block)
    inline = stream.finish()
    assert [(s.view, s.start_s) for s in threaded.slices] == [(s.view, s.start_s) for s in stream.slices]
    for name, out in inline.items():
        np.testing.assert_array_equal([s.score for s in threaded.outputs[name].scores], [s.score for s in out.scores])
    with pytest.raises(RuntimeError, match="after finish"):
        stream.feed(np.zeros(16, np.float32))
