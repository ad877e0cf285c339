"""Graph rewrites of max-pooled convolutions (training/optimize.py), and the shipped int8 file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tagger.model import read_manifest
from tagger.pipeline import Tagger
from tagger.registry import DEFAULT_CPU_MODEL, DEFAULT_MODEL, resolve_model
from training.optimize import (
    _ChannelAnalysis,
    _restore_channels,
    calibrate,
    dead_filters,
    drop_constant_features,
    find_max_pooled_convs,
    prune_dead_filters,
    quantize_max_pooled_convs,
    rewrite_max_pooled_convs,
)

MELS = 24


def pooled_conv_graph(weights: list[np.ndarray], biases: list[np.ndarray], use_max: list[np.ndarray]
                      ) -> onnx.ModelProto:
    """mel [1, frames, MELS] → per convolution: Conv → ReduceMax/ReduceMin over mel → Where → Relu,
    the pattern musicnn's exported front end has; outputs ``out0``, ``out1``…"""
    nodes = [helper.make_node("Unsqueeze", ["mel", "axis1"], ["x"], name="unsqueeze")]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([3], np.int64), "axis3")]
    outputs = []
    for i, (w, b, m) in enumerate(zip(weights, biases, use_max, strict=True)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
                  numpy_helper.from_array(m.reshape(1, -1, 1), f"cond{i}")]
        pad = (w.shape[2] - 1) // 2
        nodes += [
            helper.make_node("Conv", ["x", f"w{i}", f"b{i}"], [f"y{i}"], name=f"conv{i}",
                             kernel_shape=list(w.shape[2:]), pads=[pad, 0, w.shape[2] - 1 - pad, 0]),
            helper.make_node("ReduceMax", [f"y{i}", "axis3"], [f"hi{i}"], name=f"max{i}", keepdims=0),
            helper.make_node("ReduceMin", [f"y{i}", "axis3"], [f"lo{i}"], name=f"min{i}", keepdims=0),
            helper.make_node("Where", [f"cond{i}", f"hi{i}", f"lo{i}"], [f"ext{i}"], name=f"where{i}"),
            helper.make_node("Relu", [f"ext{i}"], [f"out{i}"], name=f"relu{i}"),
        ]
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["batch", w.shape[0], "frames"]))
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("mel", TensorProto.FLOAT,
                                                                              ["batch", "frames", MELS])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def run(model: onnx.ModelProto, values: np.ndarray, name: str = "mel") -> list[np.ndarray]:
    """Every output of ``model`` for ``values`` fed to its input ``name``."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: values})


@pytest.fixture
def graph() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    weights = [rng.standard_normal((12, 1, 5, 9)), rng.standard_normal((6, 1, 9, 1))]
    biases = [rng.standard_normal(12), rng.standard_normal(6)]
    # Mostly minima, as in musicnn (170 of 204 timbral channels follow a negative batch-norm scale).
    use_max = [rng.random(12) < 0.3, rng.random(6) < 0.3]
    # A dead channel: weights ~1e-31 (the MSD checkpoint has such), a bias that must survive int8.
    weights[0][3] = 1e-31
    biases[0][3] = 0.75
    use_max[0][3] = True
    return pooled_conv_graph(weights, biases, use_max)


def music_like(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Log-mel-like input: non-negative, smooth over mel, varying over time."""
    base = np.abs(rng.standard_normal((frames, 1))) + 0.2 * np.abs(rng.standard_normal((frames, MELS)))
    return (base * np.linspace(1.5, 0.5, MELS))[None].astype(np.float32)


def test_patterns_are_found_and_within_restricts_them(graph: onnx.ModelProto) -> None:
    found = find_max_pooled_convs(graph)
    assert [p.conv.name for p in found] == ["conv0", "conv1"]
    assert found[0].pool_width == MELS - 9 + 1 and found[1].pool_width == MELS
    assert [p.conv.name for p in find_max_pooled_convs(graph, within="out1")] == ["conv1"]


def test_float_rewrite_is_bit_exact_and_drops_the_second_reduction(graph: onnx.ModelProto) -> None:
    rewritten = rewrite_max_pooled_convs(graph, find_max_pooled_convs(graph))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ReduceMin" not in ops and "Where" not in ops and ops.count("ReduceMax") == 2
    mel = music_like(np.random.default_rng(1), 300)
    for before, after in zip(run(graph, mel), run(rewritten, mel), strict=True):
        np.testing.assert_array_equal(before, after)
    assert find_max_pooled_convs(rewritten) == []
    # The dead filter is not computed: its output, its bias, is restored as a constant.
    weights = {i.name: i for i in rewritten.graph.initializer}
    conv0 = next(n for n in rewritten.graph.node if n.op_type == "Conv" and n.name.startswith("conv0"))
    assert weights[conv0.input[1]].dims[0] == 11


def test_int8_rewrite_stays_within_a_few_output_steps(graph: onnx.ModelProto) -> None:
    rng = np.random.default_rng(2)
    patterns = find_max_pooled_convs(graph)
    calibration = calibrate(graph, patterns, [{"mel": music_like(rng, 400)} for _ in range(4)])
    quantized = quantize_max_pooled_convs(graph, patterns, calibration, margin=0.1)
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QLinearConv") == 2 and "ReduceMin" not in ops and "Conv" not in ops
    mel = music_like(rng, 500)  # not the calibration input
    for i, (before, after) in enumerate(zip(run(graph, mel), run(quantized, mel), strict=True)):
        lo, hi = calibration.maxima[f"conv{i}"]
        step = (hi - lo) * 1.2 / 255  # one output level per channel, margin included
        err = np.abs(before - after)[0]  # [channels, frames]
        # Input and weight rounding add to the output's half step: allow a few steps, per channel.
        assert (err.max(axis=1) <= 4 * step + 1e-6).all(), (err.max(axis=1), step)
        assert err.mean() < 0.5 * step.mean()
    # The dead filter is dropped; its output is its bias, exactly.
    np.testing.assert_array_equal(run(quantized, mel)[0][0, 3], np.float32(0.75))
    weights = {i.name: i for i in quantized.graph.initializer}
    conv0 = next(n for n in quantized.graph.node if n.op_type == "QLinearConv" and n.name.startswith("conv0"))
    assert weights[conv0.input[3]].dims[0] == 11


@pytest.mark.parametrize("batch,frames", [(1, 500), (3, 37), (2, 5), (1, 16)])
def test_polyphase_int8_handles_any_batch_and_length(graph: onnx.ModelProto, batch: int, frames: int) -> None:
    # conv1 (kernel 9 × 1) runs as a polyphase QLinearConv: frames are folded 16 at a time, so lengths
    # that are not multiples of 16, shorter than 16, and batches must all come out frame for frame.
    rng = np.random.default_rng(3)
    patterns = find_max_pooled_convs(graph)
    calibration = calibrate(graph, patterns, [{"mel": music_like(rng, 400)} for _ in range(6)])
    quantized = quantize_max_pooled_convs(graph, patterns, calibration)
    polyphase = next(n for n in quantized.graph.node if n.op_type == "QLinearConv" and n.name.startswith("conv1"))
    weights = {i.name: i for i in quantized.graph.initializer}[polyphase.input[3]]
    assert list(weights.dims[:2]) == [16 * 6, 16]
    mel = np.concatenate([music_like(rng, frames) for _ in range(batch)])
    before, after = run(graph, mel)[1], run(quantized, mel)[1]
    assert after.shape == before.shape == (batch, 6, frames)
    lo, hi = calibration.maxima["conv1"]
    assert np.abs(before - after).max() <= 4 * ((hi - lo) * 1.2 / 255).max() + 1e-6
    # Each item of a batch is computed on its own, as the float graph does.
    np.testing.assert_array_equal(run(quantized, mel[:1])[1][0], after[0])


@pytest.mark.parametrize("batch,frames", [(1, 500), (3, 37), (2, 5)])
def test_float_polyphase_rewrite_matches_the_direct_convolution(graph: onnx.ModelProto, batch: int,
                                                                 frames: int) -> None:
    # The int8 file keeps some (k × 1) convolutions in float32 as a polyphase Conv: the same products
    # summed in another order, so equal up to float32 rounding, for any batch and length.
    rewritten = rewrite_max_pooled_convs(graph, find_max_pooled_convs(graph), polyphase=True)
    poly = next(n for n in rewritten.graph.node if n.op_type == "Conv" and n.name.startswith("conv1"))
    weights = {i.name: i for i in rewritten.graph.initializer}[poly.input[1]]
    assert list(weights.dims[:2]) == [16 * 6, 16]
    rng = np.random.default_rng(5)
    mel = np.concatenate([music_like(rng, frames) for _ in range(batch)])
    for before, after in zip(run(graph, mel), run(rewritten, mel), strict=True):
        assert after.shape == before.shape
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_float_kernels_stay_float32_in_the_int8_file(graph: onnx.ModelProto, tmp_path: Path) -> None:
    from tagger.model import MANIFEST_KEY
    from training.optimize import quantize_model_file

    rng = np.random.default_rng(6)
    source = tmp_path / "m.onnx"
    model = onnx.ModelProto.FromString(graph.SerializeToString())
    manifest = read_manifest(resolve_model(DEFAULT_MODEL))
    from dataclasses import replace

    front_end = next(iter(manifest.front_ends.values()))
    small = replace(manifest, front_ends={k: replace(front_end, n_mels=MELS) for k in manifest.front_ends})
    model.metadata_props.add(key=MANIFEST_KEY, value=small.to_json())
    onnx.save(model, str(source))
    clip = [lambda sr: (0.3 * rng.standard_normal(sr * 3)).astype(np.float32)]
    info = quantize_model_file(source, tmp_path / "q.onnx", [], calibration_clips=clip, float_kernels=[(9, 1)])
    assert info["convolutions"] == ["conv0"] and info["float_convolutions"] == ["conv1"]
    assert info["calibration_clips"] == 1
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    ops = [(n.op_type, n.name) for n in quantized.graph.node if n.op_type in ("Conv", "QLinearConv")]
    assert [op for op, name in ops if name.startswith("conv1")] == ["Conv"]
    assert [op for op, name in ops if name.startswith("conv0")] == ["QLinearConv"]
    mel = music_like(rng, 200)
    np.testing.assert_allclose(run(quantized, mel)[1], run(graph, mel)[1], rtol=1e-5, atol=1e-5)


def plain_conv_graph(weights: list[np.ndarray]) -> onnx.ModelProto:
    """x [batch, channels, frames] → Conv1d ('same') → Relu per weight, chained."""
    nodes, inits, name = [], [], "x"
    for i, w in enumerate(weights):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.linspace(-1, 1, w.shape[0]).astype(np.float32), f"b{i}")]
        pad = (w.shape[2] - 1) // 2
        nodes += [helper.make_node("Conv", [name, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   kernel_shape=[w.shape[2]], pads=[pad, w.shape[2] - 1 - pad]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        name = f"r{i}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights[0].shape[1], "frames"])
    y = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", weights[-1].shape[0], "frames"])
    graph = helper.make_graph(nodes, "plain", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_dead_filters_of_plain_convolutions_are_dropped_when_they_are_many() -> None:
    rng = np.random.default_rng(4)
    first, second = rng.standard_normal((12, 8, 5)), rng.standard_normal((8, 12, 7))
    first[[0, 2, 3, 7, 8, 11]] *= 1e-30  # half dead: dropped
    second[5] *= 1e-30  # one in eight: not worth a restore
    assert dead_filters(first).sum() == 6 and dead_filters(second).sum() == 1
    graph = plain_conv_graph([first, second])
    pruned, dropped = prune_dead_filters(graph)
    assert dropped == 6
    weights = {i.name: i for i in pruned.graph.initializer}
    convs = [n for n in pruned.graph.node if n.op_type == "Conv"]
    assert [weights[n.input[1]].dims[0] for n in convs] == [6, 8]
    for batch, frames in ((1, 300), (3, 4)):
        x = rng.standard_normal((batch, 8, frames)).astype(np.float32)
        (before,), (after,) = run(graph, x, "x"), run(pruned, x, "x")
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert prune_dead_filters(pruned)[1] == 0


def features_graph(front_reader: str = "Conv") -> onnx.ModelProto:
    """x [batch, 6, frames] → a front stage of 7 channels, 4 of them constants restored as the dead-filter
    rewrites restore them (then Relu, batch norm) → a 'same' convolution (or an Add, ``front_reader``)
    → features = both concatenated → pooled (max, mean interleaved) → a batch-normed softmax head and
    a plain linear one."""
    rng = np.random.default_rng(11)
    dead = np.array([True, False, True, True, False, True, False])
    f32 = np.float32
    inits = [numpy_helper.from_array(rng.standard_normal((3, 6, 3)).astype(f32), "w_front"),
             numpy_helper.from_array(rng.standard_normal((7, 7, 3)).astype(f32), "w_mid"),
             *(numpy_helper.from_array(v.astype(f32), n) for n, v in (
                 ("bn_scale", rng.standard_normal(7)), ("bn_bias", rng.standard_normal(7)),
                 ("bn_mean", rng.standard_normal(7)), ("bn_var", rng.random(7) + 0.5),
                 ("head_scale", rng.standard_normal(28)), ("head_bias", rng.standard_normal(28)),
                 ("head_mean", rng.standard_normal(28)), ("head_var", rng.random(28) + 0.5),
                 ("w_head", rng.standard_normal((4, 28))), ("b_head", rng.standard_normal(4)),
                 ("w_plain", rng.standard_normal((3, 28))), ("b_plain", rng.standard_normal(3)))),
             numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array([-1, 28], np.int64), "pooled_shape")]
    restore, restore_init = _restore_channels("front", "front_live", "front_restored", dead,
                                              rng.standard_normal(7) + 0.5, rank=3)
    mid = (helper.make_node("Conv", ["front", "w_mid"], ["mid"], name="mid", kernel_shape=[3], pads=[1, 1])
           if front_reader == "Conv" else helper.make_node("Add", ["front", "front"], ["mid"], name="mid"))
    nodes = [
        helper.make_node("Conv", ["x", "w_front"], ["front_live"], name="front_conv", kernel_shape=[3], pads=[1, 1]),
        *restore,
        helper.make_node("Relu", ["front_restored"], ["front_relu"], name="front_relu"),
        helper.make_node("BatchNormalization", ["front_relu", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                         ["front"], name="front_bn"),
        mid,
        helper.make_node("Concat", ["front", "mid"], ["features"], name="features", axis=1),
        helper.make_node("ReduceMax", ["features", "axis2"], ["fmax"], name="fmax", keepdims=1),
        helper.make_node("ReduceMean", ["features", "axis2"], ["fmean"], name="fmean", keepdims=1),
        helper.make_node("Concat", ["fmax", "fmean"], ["stack"], name="stack", axis=2),
        helper.make_node("Reshape", ["stack", "pooled_shape"], ["pooled"], name="pooled"),
        helper.make_node("BatchNormalization", ["pooled", "head_scale", "head_bias", "head_mean", "head_var"],
                         ["normed"], name="head_bn"),
        helper.make_node("Gemm", ["normed", "w_head", "b_head"], ["logits"], name="head", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax"),
        helper.make_node("Gemm", ["pooled", "w_plain", "b_plain"], ["plain"], name="plain", transB=1),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "features", [info("x", TensorProto.FLOAT, ["batch", 6, "frames"])],
        [info("probs", TensorProto.FLOAT, ["batch", 4]), info("plain", TensorProto.FLOAT, ["batch", 3]),
         info("features", TensorProto.FLOAT, ["batch", 14, "frames"]),
         info("pooled", TensorProto.FLOAT, ["batch", 28])],
        inits + restore_init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_constant_feature_channels_are_left_out_with_the_same_outputs() -> None:
    graph = features_graph()
    lean, dropped = drop_constant_features(graph, "features", "pooled")
    assert dropped == 4
    constant = np.array([True, False, True, True, False, True, False] + [False] * 7)
    rng = np.random.default_rng(5)
    # Short inputs too: there the zero padding of the convolution reading the constants matters.
    for batch, frames in ((1, 200), (2, 5), (1, 1)):
        x = rng.standard_normal((batch, 6, frames)).astype(np.float32)
        before = dict(zip(["probs", "plain", "features", "pooled"], run(graph, x, "x"), strict=True))
        after = dict(zip(["probs", "plain", "features", "pooled"], run(lean, x, "x"), strict=True))
        np.testing.assert_allclose(after["probs"], before["probs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after["plain"], before["plain"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(after["features"], before["features"][:, ~constant], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(after["pooled"], before["pooled"][:, np.repeat(~constant, 2)], rtol=1e-6, atol=1e-6)
    assert drop_constant_features(lean, "features", "pooled")[1] == 0
    # Read by an op that cannot take the constants in (an Add), the channels stay.
    assert drop_constant_features(features_graph(front_reader="Add"), "features", "pooled")[1] == 0


def test_a_broadcast_constant_is_constant_on_every_channel_shapes_give() -> None:
    # Expand of one value to a known shape: every channel constant; to a shape known only at run time:
    # the channel count is unknown, so the analysis claims nothing.
    f32 = np.float32
    inits = [numpy_helper.from_array(np.full((1, 1, 1), 0.5, f32), "value"),
             numpy_helper.from_array(np.array([2, 3, 4], np.int64), "known_shape")]
    nodes = [helper.make_node("Expand", ["value", "known_shape"], ["known"], name="known"),
             helper.make_node("Shape", ["x"], ["x_shape"], name="x_shape"),
             helper.make_node("Expand", ["value", "x_shape"], ["unknown"], name="unknown")]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "expand", [info("x", TensorProto.FLOAT, ["batch", "channels", "frames"])],
                              [info("known", TensorProto.FLOAT, None), info("unknown", TensorProto.FLOAT, None)],
                              inits)
    analysis = _ChannelAnalysis(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    known = analysis.channels("known")
    assert known is not None and known.mask.tolist() == [True] * 3 and known.values.tolist() == [0.5] * 3
    assert analysis.channels("unknown") is None


def test_shipped_files_pool_no_constant_features() -> None:
    for path in (resolve_model(DEFAULT_MODEL), resolve_model(DEFAULT_CPU_MODEL)):
        fp = read_manifest(path).frame_pooling
        model = onnx.load(str(path))
        assert drop_constant_features(model, fp.features, fp.pooled)[1] == 0, path
        (features,) = [o for o in model.graph.output if o.name == fp.features]
        assert features.type.tensor_type.shape.dim[1].dim_value == 256  # of 753: 497 were constants


def test_shipped_files_compute_no_dead_filters() -> None:
    # Only the two later mid-end layers keep theirs (3 and 1 of 64, below the share worth restoring).
    for path in (resolve_model(DEFAULT_MODEL), resolve_model(DEFAULT_CPU_MODEL)):
        model = onnx.load(str(path))
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        dead = sum(int(dead_filters(weights[n.input[1 if n.op_type == "Conv" else 3]]).sum())
                   for n in model.graph.node if n.op_type in ("Conv", "QLinearConv"))
        assert dead == 4, path


def test_shipped_int8_file_matches_the_float32_model(realworld: Path) -> None:
    float32, int8 = resolve_model(DEFAULT_MODEL), resolve_model(DEFAULT_CPU_MODEL)
    a, b = read_manifest(float32), read_manifest(int8)
    assert b.name == f"{a.name}-int8"
    assert (a.front_ends, a.views, a.outputs, a.frame_pooling) == (b.front_ends, b.views, b.outputs, b.frame_pooling)
    assert b.metrics["quantization"]["convolutions"]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QLinearConv" in ops
    track = realworld / "warzone2100-music" / "menu.opus"
    ra, rb = Tagger(float32).tag_file(track), Tagger(int8).tag_file(track)
    for name, out in ra.outputs.items():
        before = {s.label: s.score for s in out.scores}
        after = {s.label: s.score for s in rb.outputs[name].scores}
        assert max(abs(before[k] - after[k]) for k in before) < 0.03
        assert out.top == rb.outputs[name].top


def test_cpu_runs_the_int8_file_unless_a_model_is_named() -> None:
    from threadpoolctl import threadpool_info

    from tagger.engine import EngineOptions

    default = Tagger(engine_options=EngineOptions(device="cpu"))
    assert default.engine.path == resolve_model(DEFAULT_CPU_MODEL)
    assert default.manifest.name == DEFAULT_CPU_MODEL
    named = Tagger(DEFAULT_MODEL, engine_options=EngineOptions(device="cpu"))
    assert named.engine.path == resolve_model(DEFAULT_MODEL)
    # Loading an engine keeps numpy's BLAS to one thread (its spinning threads slowed ONNX Runtime).
    assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
