"""Faster graphs for a musicnn-style front end: dead filters dropped, float32 and int8 rewrites.

musicnn's timbral and temporal filters are convolutions over (time, mel) whose output is max-pooled
over the whole mel axis. Exported, each one is ``Conv → ReduceMax and ReduceMin over mel → Where(sign
of the following batch norm's scale, max, min)`` (see ``training.musicnn``).

Dead filters (:func:`dead_filters`): the MSD checkpoint's filters are mostly dead, their weights 1e-7
and smaller, so that their output is their bias (371 of 408 timbral, 126 of 153 temporal filters).
Every rewrite below computes the live filters only and restores the dead ones' outputs as constants
after the pooling (``Expand → Concat → Gather`` on the pooled tensor, 30-60× smaller than the
convolution's output); :func:`prune_dead_filters` does the same for plain convolutions (44 of the
first mid-end layer's 64 filters). On one core this cuts the front end's time per frame about 5×.
:func:`drop_constant_features` then leaves those constants out of the frame features (497 of 753
channels for the default model), so that they are neither copied, read by the mid-end, nor pooled.

:func:`rewrite_max_pooled_convs` (float32, exact up to the dead filters' 1e-7 weights): a channel whose
batch-norm scale is negative needs the *minimum* over mel; its filter and bias are negated
(min z = -max(-z)), so every channel takes a maximum: ``Conv → ReduceMax over mel → Mul(sign)``.

:func:`quantize_max_pooled_convs` (calibrated int8):

    QuantizeLinear(input) → QLinearConv (uint8 out) → MaxPool over mel (uint8) → DequantizeLinear → Mul → Add

with weights int8 per output channel and the input uint8 per tensor. Besides the sign trick, each
channel's filter and bias are scaled and shifted so that the per-frame maxima seen on the calibration
audio fill [0, 1] (plus ``margin`` on both sides): one uint8 output scale then serves every channel,
its 256 levels covering the range that matters. ``Mul``/``Add`` undo it after the pooling. The integer
accumulation is exact; the errors are the input's and weights' rounding and the output's 1/255 step
over each channel's calibrated range. The temporal filters (k × 1 over one input channel) run as a
polyphase QLinearConv (:func:`_polyphase_int8`). Measure speed and accuracy for any model you rewrite;
the default model's card reports both (``training/default_model.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import helper, numpy_helper

DEFAULT_MARGIN = 0.1  # fraction of each channel's calibrated range added on both sides
# A filter whose largest weight is below this fraction of its layer's largest is dead: its output is its
# bias. The MSD musicnn checkpoint has 371 of 408 timbral, 126 of 153 temporal and 44 of the first
# mid-end layer's 64 filters so (largest weights 2e-7 or less against 1e-3 and more for live ones; their
# outputs vary by 5e-10 at most over real audio).
DEAD_FILTER_TOLERANCE = 1e-5
# Drop dead filters from a plain convolution only when they are at least this share of it: restoring
# their constant outputs costs a copy of the output, more than the few filters save.
DEAD_SHARE_WORTH_PRUNING = 0.25


def dead_filters(weight: np.ndarray, tolerance: float = DEAD_FILTER_TOLERANCE) -> np.ndarray:
    """bool [output channels]: the filters of a convolution ``weight`` [out, in, *kernel] whose weights
    are all within ``tolerance`` × the layer's largest weight. One filter always stays live, so that
    the pruned convolution still gives the output its shape."""
    peak = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    dead = peak <= tolerance * peak.max()
    if dead.all():
        dead[0] = False
    return dead


def _restore_channels(prefix: str, live: str, output: str, dead: np.ndarray, values: np.ndarray, rank: int
                      ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes that make ``output`` [batch, channels, …] (rank ``rank``) from ``live`` (the live channels,
    in order) and the dead channels' constant ``values``."""
    order = np.concatenate([np.flatnonzero(~dead), np.flatnonzero(dead)])
    constants = values[dead].astype(np.float32).reshape((1, int(dead.sum())) + (1,) * (rank - 2))
    init = [numpy_helper.from_array(constants, f"{prefix}_dead_values"),
            numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_one"),
            numpy_helper.from_array(np.argsort(order).astype(np.int64), f"{prefix}_channel_order")]
    nodes = [
        helper.make_node("Shape", [live], [f"{prefix}_batch"], name=f"{prefix}_batch", start=0, end=1),
        helper.make_node("Shape", [live], [f"{prefix}_rest"], name=f"{prefix}_rest", start=2),
        helper.make_node("Concat", [f"{prefix}_batch", f"{prefix}_one", f"{prefix}_rest"], [f"{prefix}_dead_shape"],
                         name=f"{prefix}_dead_shape", axis=0),
        helper.make_node("Expand", [f"{prefix}_dead_values", f"{prefix}_dead_shape"], [f"{prefix}_dead"],
                         name=f"{prefix}_dead"),
        helper.make_node("Concat", [live, f"{prefix}_dead"], [f"{prefix}_stacked"], name=f"{prefix}_stack", axis=1),
        helper.make_node("Gather", [f"{prefix}_stacked", f"{prefix}_channel_order"], [output],
                         name=f"{prefix}_restore", axis=1),
    ]
    return nodes, init


@dataclass(frozen=True)
class MaxPooledConv:
    """One ``Conv → ReduceMax/ReduceMin over mel → Where`` pattern in a graph."""

    conv: onnx.NodeProto
    reduce_max: onnx.NodeProto
    reduce_min: onnx.NodeProto
    where: onnx.NodeProto
    pool_width: int  # mel positions the convolution produces (its output's last axis)
    use_max: np.ndarray  # bool [channels]: the Where takes the maximum (else the minimum)


def find_max_pooled_convs(model: onnx.ModelProto, within: str | None = None,
                          n_mels: int | None = None) -> list[MaxPooledConv]:
    """The patterns this module can rewrite, in graph order.

    Args:
        within: only those that ``within`` (a tensor name, such as a frame stage) depends on.
        n_mels: the graph input's mel bands (default: read from the input's static shape).
    """
    graph = model.graph
    initialisers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    if n_mels is None:
        n_mels = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    ancestors = _ancestors(producer, within) if within else None
    found = []
    for where in graph.node:
        if where.op_type != "Where" or where.input[0] not in initialisers:
            continue
        high, low = producer.get(where.input[1]), producer.get(where.input[2])
        if not (high and low and high.op_type == "ReduceMax" and low.op_type == "ReduceMin"
                and high.input[0] == low.input[0]):
            continue
        conv = producer.get(high.input[0])
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in initialisers:
            continue
        if ancestors is not None and conv.name not in ancestors:
            continue
        if {n.name for n in consumers[conv.output[0]]} != {high.name, low.name}:
            continue
        if any(len(consumers[n.output[0]]) != 1 for n in (high, low)):
            continue
        if not all(_reduces_last_axis(n, initialisers) for n in (high, low)):
            continue
        attrs = _attributes(conv)
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if (attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or list(attrs.get("strides", [1, 1])) != [1, 1] or list(attrs.get("dilations", [1, 1])) != [1, 1]
                or pads[1] or pads[3] or not n_mels):
            continue
        width = n_mels - int(attrs["kernel_shape"][1]) + 1
        use_max = numpy_helper.to_array(initialisers[where.input[0]]).reshape(-1).astype(bool)
        found.append(MaxPooledConv(conv, high, low, where, width, use_max))
    return found


def _ancestors(producer: dict[str, onnx.NodeProto], tensor: str) -> set[str]:
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            todo.extend(node.input)
    return seen


def _reduces_last_axis(node: onnx.NodeProto, initialisers: dict[str, onnx.TensorProto]) -> bool:
    attrs = _attributes(node)
    if attrs.get("keepdims", 1) != 0:
        return False
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] in initialisers:
        axes = numpy_helper.to_array(initialisers[node.input[1]]).reshape(-1).tolist()
    return axes is not None and list(axes) in ([3], [-1])


@dataclass
class Calibration:
    """Ranges seen on the calibration input: per convolution input tensor (min, max), and per
    convolution the per-channel range of max over mel of (sign · conv output) per frame."""

    inputs: dict[str, tuple[float, float]]
    maxima: dict[str, tuple[np.ndarray, np.ndarray]]


def calibrate(model: onnx.ModelProto, patterns: list[MaxPooledConv], feeds: Iterable[dict[str, np.ndarray]]
              ) -> Calibration:
    """Run the float model on ``feeds`` (``{input name: float32 [1, frames, mels]}``) and collect ranges."""
    import onnxruntime as ort

    inputs = sorted({p.conv.input[0] for p in patterns})
    names = inputs + [t for p in patterns for t in (p.reduce_max.output[0], p.reduce_min.output[0])]
    # The extractor needs the intermediate tensors' types (an exported graph has them, a built one may not).
    typed = onnx.shape_inference.infer_shapes(model)
    part = onnx.utils.Extractor(typed).extract_model([model.graph.input[0].name], names)
    session = ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"])
    calibration = Calibration({}, {})
    count = 0
    for feed in feeds:
        count += 1
        values = dict(zip(names, session.run(names, feed), strict=True))
        for name in inputs:
            lo, hi = calibration.inputs.get(name, (np.inf, -np.inf))
            calibration.inputs[name] = (min(lo, float(values[name].min())), max(hi, float(values[name].max())))
        for p in patterns:
            extreme = np.where(p.use_max[None, :, None], values[p.reduce_max.output[0]],
                               -values[p.reduce_min.output[0]])  # [batch, channels, frames]
            lo_c, hi_c = extreme.min(axis=(0, 2)), extreme.max(axis=(0, 2))
            if p.conv.name in calibration.maxima:
                old_lo, old_hi = calibration.maxima[p.conv.name]
                lo_c, hi_c = np.minimum(lo_c, old_lo), np.maximum(hi_c, old_hi)
            calibration.maxima[p.conv.name] = (lo_c, hi_c)
    if not count:
        raise ValueError("no calibration input")
    return calibration


def quantize_max_pooled_convs(model: onnx.ModelProto, patterns: list[MaxPooledConv], calibration: Calibration,
                              margin: float = DEFAULT_MARGIN) -> onnx.ModelProto:
    """A copy of ``model`` with every pattern in ``patterns`` rewritten in int8 (see the module doc)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initialisers = {i.name: i for i in graph.initializer}
    added: list[onnx.TensorProto] = []
    quantize_nodes = []
    input_scale = {}
    for name in sorted({p.conv.input[0] for p in patterns}):
        lo, hi = calibration.inputs[name]
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero (the convolution's padding) must be exact
        scale = (hi - lo) / 255 if hi > lo else 1.0
        zero = int(np.clip(round(-lo / scale), 0, 255))
        input_scale[name] = scale
        added += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_int8_scale"),
                  numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_int8_zero")]
        quantize_nodes.append(helper.make_node("QuantizeLinear", [name, f"{name}_int8_scale", f"{name}_int8_zero"],
                                               [f"{name}_int8"], name=f"{name}_quantize"))
    replacement: dict[str, list[onnx.NodeProto]] = {}
    removed: set[str] = set()
    for p in patterns:
        x = p.conv.input[0]
        lo, hi = calibration.maxima[p.conv.name]
        span = np.maximum(hi - lo, 1e-6 * max(float(np.max(hi - lo)), 1e-6))
        lo, span = lo - margin * span, span * (1 + 2 * margin)
        weight, float_bias = _weight_and_bias(p.conv, initialisers)
        live = ~dead_filters(weight)
        weight, bias = weight[live].astype(np.float64), float_bias[live].astype(np.float64)
        lo, span = lo[live], span[live]
        sign = np.where(p.use_max, 1.0, -1.0)[live]
        # z' = (sign · z - lo) / span: each channel's calibrated per-frame maxima fill [0, 1].
        weight = weight * (sign / span)[:, None, None, None]
        bias = (sign * bias - lo) / span
        w_scale = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) / 127
        # The bias is stored in units of input scale × weight scale: a filter with tiny weights and a large
        # bias gets a coarser weight scale, so that its bias fits in int32.
        w_scale = np.maximum(w_scale, np.abs(bias) / (input_scale[x] * 2.0**30))
        w_scale = np.where(w_scale > 0, w_scale, 1.0)
        w_int8 = np.clip(np.round(weight / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        b_int32 = np.round(bias / (input_scale[x] * w_scale)).astype(np.int32)
        out_scale = 1.0 / 255
        n = p.conv.name
        restore, restore_init = _pooled_output(f"{n}_int8", p, live, float_bias)
        added += [
            numpy_helper.from_array(np.array(out_scale, np.float32), f"{n}_int8_y_scale"),
            numpy_helper.from_array(np.array(0, np.uint8), f"{n}_int8_y_zero"),
            numpy_helper.from_array((sign * span).astype(np.float32)[None, :, None], f"{n}_int8_gain"),
            numpy_helper.from_array((sign * lo).astype(np.float32)[None, :, None], f"{n}_int8_offset"),
            numpy_helper.from_array(np.array([3], np.int64), f"{n}_int8_mel_axis"),
        ]
        if _is_temporal(p, weight):
            pooled, extra_init = _polyphase_int8(p, n, x, w_int8, w_scale, b_int32)
            added += extra_init
        else:
            added += [numpy_helper.from_array(w_int8, f"{n}_int8_w"),
                      numpy_helper.from_array(w_scale.astype(np.float32), f"{n}_int8_w_scale"),
                      numpy_helper.from_array(np.zeros(weight.shape[0], np.int8), f"{n}_int8_w_zero"),
                      numpy_helper.from_array(b_int32, f"{n}_int8_b")]
            conv = helper.make_node(
                "QLinearConv", [f"{x}_int8", f"{x}_int8_scale", f"{x}_int8_zero", f"{n}_int8_w",
                                f"{n}_int8_w_scale", f"{n}_int8_w_zero", f"{n}_int8_y_scale", f"{n}_int8_y_zero",
                                f"{n}_int8_b"], [f"{n}_int8_y"], name=f"{n}_int8")
            conv.attribute.extend(a for a in p.conv.attribute if a.name != "auto_pad")
            pooled = [conv, *_max_over_mel(f"{n}_int8", f"{n}_int8_y", p.pool_width, f"{n}_int8_max")]
        replacement[p.conv.name] = [
            *pooled,
            helper.make_node("DequantizeLinear", [f"{n}_int8_max", f"{n}_int8_y_scale", f"{n}_int8_y_zero"],
                             [f"{n}_int8_unit"], name=f"{n}_int8_dequantize"),
            helper.make_node("Mul", [f"{n}_int8_unit", f"{n}_int8_gain"], [f"{n}_int8_scaled"], name=f"{n}_int8_gain"),
            helper.make_node("Add", [f"{n}_int8_scaled", f"{n}_int8_offset"], [restore[0]],
                             name=f"{n}_int8_offset"),
            *restore[1],
        ]
        added += restore_init
        removed |= {p.reduce_max.name, p.reduce_min.name, p.where.name}
    # The QuantizeLinear nodes go ahead of the first rewritten convolution, after their input's producer.
    _splice(graph, replacement, removed, quantize_nodes, added)
    onnx.checker.check_model(model)
    return model


POLYPHASE = 16  # time steps folded into channels for the (k × 1) convolutions


def _time_pads(conv: onnx.NodeProto) -> tuple[int, int]:
    """The convolution's zero padding before and after the time axis, in frames."""
    attrs = _attributes(conv)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    return int(pads[0]), int(pads[2])


def _is_temporal(p: MaxPooledConv, weight: np.ndarray) -> bool:
    """Whether the pattern's convolution is (k × 1) over one input channel, 'same' in time: the form
    the polyphase rewrites take."""
    return (weight.shape[1] == 1 and weight.shape[3] == 1 and weight.shape[2] > 1
            and sum(_time_pads(p.conv)) == weight.shape[2] - 1)


def _polyphase_weights(weight: np.ndarray) -> np.ndarray:
    """(k × 1) filters [F, 1, k, 1] rearranged for the polyphase convolution: [S·F, S, Q, 1], output
    phase r, filter f is channel r·F + f; input phase c, tap q meets the filter's tap S·q + c - r
    (zero outside the filter)."""
    filters, _, k, _ = weight.shape
    S = POLYPHASE
    taps = -(-(k - 1) // S) + 1
    poly = np.zeros((S, filters, S, taps), weight.dtype)
    for r in range(S):
        for c in range(S):
            for q in range(taps):
                j = S * q + c - r
                if 0 <= j < k:
                    poly[r, :, c, q] = weight[:, 0, j, 0]
    return poly.reshape(S * filters, S, taps, 1)


def _polyphase_layout(i: str, source: str, pad_value: str | None, before: int, taps: int, filters: int
                      ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes around a polyphase convolution named ``i``: those that pad ``source`` [B, 1, T, M] (with
    ``pad_value``, a scalar tensor's name, or zeros) and fold it into ``{i}_phased`` [B, S, V, M], and
    those that unfold the pooled ``{i}_phase_max`` [B, S·F, U] into ``{i}_max`` [B, F, T]."""
    S = POLYPHASE
    init = [
        numpy_helper.from_array(np.array([2], np.int64), f"{i}_time_axis"),
        numpy_helper.from_array(np.array([3], np.int64), f"{i}_time_end"),
        numpy_helper.from_array(np.array([0], np.int64), f"{i}_zero_i64"),
        numpy_helper.from_array(np.array([S - 1], np.int64), f"{i}_round_up"),
        numpy_helper.from_array(np.array([S], np.int64), f"{i}_phases"),
        numpy_helper.from_array(np.array([taps - 1], np.int64), f"{i}_extra_taps"),
        numpy_helper.from_array(np.array([before], np.int64), f"{i}_pad_before"),
        numpy_helper.from_array(np.array([0, 0, before, 0, 0, 0], np.int64), f"{i}_pads_head"),
        numpy_helper.from_array(np.array([0, -1, S, 0], np.int64), f"{i}_fold"),
        numpy_helper.from_array(np.array([0, S, filters, -1], np.int64), f"{i}_split"),
        numpy_helper.from_array(np.array([0, filters, -1], np.int64), f"{i}_unfold"),
    ]
    fold = [
        # frames T; outputs computed U·S ≥ T (U = ceil(T / S)); padded input S·(U + taps - 1) frames.
        helper.make_node("Shape", [source], [f"{i}_shape"], name=f"{i}_shape"),
        helper.make_node("Slice", [f"{i}_shape", f"{i}_time_axis", f"{i}_time_end"], [f"{i}_frames"],
                         name=f"{i}_frames"),
        helper.make_node("Add", [f"{i}_frames", f"{i}_round_up"], [f"{i}_frames_up"], name=f"{i}_frames_up"),
        helper.make_node("Div", [f"{i}_frames_up", f"{i}_phases"], [f"{i}_steps"], name=f"{i}_steps"),
        helper.make_node("Add", [f"{i}_steps", f"{i}_extra_taps"], [f"{i}_in_steps"], name=f"{i}_in_steps"),
        helper.make_node("Mul", [f"{i}_in_steps", f"{i}_phases"], [f"{i}_in_frames"], name=f"{i}_in_frames"),
        helper.make_node("Add", [f"{i}_frames", f"{i}_pad_before"], [f"{i}_used"], name=f"{i}_used"),
        helper.make_node("Sub", [f"{i}_in_frames", f"{i}_used"], [f"{i}_pad_after"], name=f"{i}_pad_after"),
        helper.make_node("Concat", [f"{i}_pads_head", f"{i}_pad_after", f"{i}_zero_i64"], [f"{i}_pads"],
                         name=f"{i}_pads", axis=0),
        helper.make_node("Pad", [source, f"{i}_pads", *([pad_value] if pad_value else [])], [f"{i}_padded"],
                         name=f"{i}_pad"),
        # [B, 1, S·V, M] → [B, V, S, M] → [B, S, V, M]: phase c of step v is frame S·v + c.
        helper.make_node("Reshape", [f"{i}_padded", f"{i}_fold"], [f"{i}_folded"], name=f"{i}_fold"),
        helper.make_node("Transpose", [f"{i}_folded"], [f"{i}_phased"], name=f"{i}_phase", perm=[0, 2, 1, 3]),
    ]
    unfold = [
        # [B, S·F, U] → [B, S, F, U] → [B, F, U, S] → [B, F, U·S] → the first T frames.
        helper.make_node("Reshape", [f"{i}_phase_max", f"{i}_split"], [f"{i}_split_phases"], name=f"{i}_split"),
        helper.make_node("Transpose", [f"{i}_split_phases"], [f"{i}_interleaved"], name=f"{i}_interleave",
                         perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{i}_interleaved", f"{i}_unfold"], [f"{i}_all"], name=f"{i}_unfold"),
        helper.make_node("Slice", [f"{i}_all", f"{i}_zero_i64", f"{i}_frames", f"{i}_time_axis"], [f"{i}_max"],
                         name=f"{i}_trim"),
    ]
    return fold, unfold, init


def _polyphase_int8(p: MaxPooledConv, n: str, x: str, w_int8: np.ndarray, w_scale: np.ndarray,
                    b_int32: np.ndarray) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A (k × 1) convolution over one input channel, 'same' in time, as a polyphase QLinearConv.

    S = POLYPHASE consecutive frames become S input channels and S·F output channels (output frame
    u·S + r, filter f is channel r·F + f); the kernel's k taps become Q = ceil((k - 1) / S) + 1. With
    one input channel ONNX Runtime's im2col copies k values per output; here S·Q per S outputs. The
    same int8 weights, rearranged (taps outside the filter are zero): the same sums with 1.1-1.3× the
    multiplications, and on one core 4-5× faster than the direct form (musicnn's temporal filters,
    128/64/32 × 1: 32 → 9 µs per frame)."""
    filters = w_int8.shape[0]
    poly = _polyphase_weights(w_int8)
    S = POLYPHASE
    i = f"{n}_int8"
    fold, unfold, init = _polyphase_layout(i, f"{x}_int8", f"{x}_int8_zero", _time_pads(p.conv)[0], poly.shape[2],
                                           filters)
    init += [
        numpy_helper.from_array(poly, f"{i}_w"),
        numpy_helper.from_array(np.tile(w_scale, S).astype(np.float32), f"{i}_w_scale"),
        numpy_helper.from_array(np.zeros(S * filters, np.int8), f"{i}_w_zero"),
        numpy_helper.from_array(np.tile(b_int32, S), f"{i}_b"),
    ]
    conv = helper.make_node("QLinearConv", [f"{i}_phased", f"{x}_int8_scale", f"{x}_int8_zero", f"{i}_w",
                                            f"{i}_w_scale", f"{i}_w_zero", f"{i}_y_scale", f"{i}_y_zero", f"{i}_b"],
                            [f"{i}_y"], name=i, kernel_shape=[poly.shape[2], 1])
    return [*fold, conv, *_max_over_mel(i, f"{i}_y", p.pool_width, f"{i}_phase_max"), *unfold], init


def _polyphase_float(p: MaxPooledConv, n: str, weight: np.ndarray, bias: np.ndarray
                     ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The float32 polyphase form of a (k × 1) convolution (see :func:`_polyphase_int8`), each channel's
    maximum over mel in ``{n}_poly_max`` [B, F, T]: the same products as the direct form, summed in
    another order (float32 rounding apart, the same values), without the direct form's im2col copies."""
    filters = weight.shape[0]
    poly = _polyphase_weights(weight.astype(np.float32))
    i = f"{n}_poly"
    fold, unfold, init = _polyphase_layout(i, p.conv.input[0], None, _time_pads(p.conv)[0], poly.shape[2], filters)
    init += [numpy_helper.from_array(poly, f"{i}_w"),
             numpy_helper.from_array(np.tile(bias.astype(np.float32), POLYPHASE), f"{i}_b"),
             numpy_helper.from_array(np.array([3], np.int64), f"{i}_mel_axis")]
    conv = helper.make_node("Conv", [f"{i}_phased", f"{i}_w", f"{i}_b"], [f"{i}_y"], name=i,
                            kernel_shape=[poly.shape[2], 1])
    pool = helper.make_node("ReduceMax", [f"{i}_y", f"{i}_mel_axis"], [f"{i}_phase_max"], name=f"{i}_max",
                            keepdims=0)
    return [*fold, conv, pool, *unfold], init


def rewrite_max_pooled_convs(model: onnx.ModelProto, patterns: list[MaxPooledConv], polyphase: bool = False
                             ) -> onnx.ModelProto:
    """A copy of ``model`` with every pattern in float32 as ``Conv (channels that need the minimum
    negated) → ReduceMax over mel → Mul(sign)``: the same values, bit for bit (negation is exact, so
    min z = -max(-z)), with one reduction instead of a ReduceMax and a ReduceMin.

    Args:
        polyphase: the (k × 1) convolutions as a float32 polyphase ``Conv`` (:func:`_polyphase_float`):
            faster on one core, equal up to float32 rounding (not bit for bit). Default False."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initialisers = {i.name: i for i in graph.initializer}
    added: list[onnx.TensorProto] = []
    replacement: dict[str, list[onnx.NodeProto]] = {}
    removed: set[str] = set()
    for p in patterns:
        n = p.conv.name
        weight, bias = _weight_and_bias(p.conv, initialisers)
        live = ~dead_filters(weight)
        sign = np.where(p.use_max, 1.0, -1.0).astype(np.float32)[live]
        added += [numpy_helper.from_array((weight[live] * sign[:, None, None, None]).astype(np.float32),
                                          f"{n}_signed_w"),
                  numpy_helper.from_array((bias[live] * sign).astype(np.float32), f"{n}_signed_b"),
                  numpy_helper.from_array(sign[None, :, None], f"{n}_sign"),
                  numpy_helper.from_array(np.array([3], np.int64), f"{n}_mel_axis")]
        restore, restore_init = _pooled_output(n, p, live, bias)
        if polyphase and _is_temporal(p, weight):
            pooled, poly_init = _polyphase_float(p, n, weight[live] * sign[:, None, None, None], bias[live] * sign)
            added += poly_init
            maxima = f"{n}_poly_max"
        else:
            conv = helper.make_node("Conv", [p.conv.input[0], f"{n}_signed_w", f"{n}_signed_b"], [f"{n}_signed_y"],
                                    name=f"{n}_signed")
            conv.attribute.extend(p.conv.attribute)
            pooled = [conv, helper.make_node("ReduceMax", [f"{n}_signed_y", f"{n}_mel_axis"], [f"{n}_signed_max"],
                                             name=f"{n}_max", keepdims=0)]
            maxima = f"{n}_signed_max"
        replacement[p.conv.name] = [
            *pooled,
            helper.make_node("Mul", [maxima, f"{n}_sign"], [restore[0]], name=f"{n}_unsign"),
            *restore[1],
        ]
        added += restore_init
        removed |= {p.reduce_max.name, p.reduce_min.name, p.where.name}
    _splice(graph, replacement, removed, [], added)
    onnx.checker.check_model(model)
    return model


def prune_dead_filters(model: onnx.ModelProto, min_share: float = DEAD_SHARE_WORTH_PRUNING
                       ) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` in which every plain ``Conv`` with at least ``min_share`` dead filters
    (:func:`dead_filters`) computes its live filters only; the dead ones' outputs, their biases at
    every position, are restored as constants. Returns the model and how many filters were dropped."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initialisers = {i.name: i for i in graph.initializer}
    added: list[onnx.TensorProto] = []
    replacement: dict[str, list[onnx.NodeProto]] = {}
    dropped = 0
    for node in graph.node:
        # Nodes are replaced by name: an unnamed one (a hand-built graph may have them) is left alone.
        if node.op_type != "Conv" or not node.name or node.input[1] not in initialisers or (
                len(node.input) > 2 and node.input[2] not in initialisers):
            continue
        attrs = _attributes(node)
        if attrs.get("group", 1) != 1:
            continue
        weight, bias = _weight_and_bias(node, initialisers)
        dead = dead_filters(weight)
        if dead.mean() < min_share:
            continue
        n = node.name
        added += [numpy_helper.from_array(weight[~dead], f"{n}_live_w"),
                  numpy_helper.from_array(bias[~dead], f"{n}_live_b")]
        conv = helper.make_node("Conv", [node.input[0], f"{n}_live_w", f"{n}_live_b"], [f"{n}_live"],
                                name=f"{n}_live")
        conv.attribute.extend(node.attribute)
        restore, restore_init = _restore_channels(n, f"{n}_live", node.output[0], dead, bias, rank=weight.ndim)
        replacement[n] = [conv, *restore]
        added += restore_init
        dropped += int(dead.sum())
    if replacement:
        _splice(graph, replacement, set(), [], added)
        onnx.checker.check_model(model)
    return model, dropped


@dataclass(frozen=True)
class ConstantChannels:
    """Which channels (axis 1) of a tensor hold one value at every position, and those values."""

    mask: np.ndarray  # bool [channels]
    values: np.ndarray  # float64 [channels], meaningful where ``mask``


class _ChannelAnalysis:
    """Follows constant channels from the ``Expand``-ed constants of the dead-filter rewrites through
    the ops that keep channels apart (Concat and Gather on axis 1, Relu, BatchNormalization, Unsqueeze
    and Squeeze after the channel axis). Any other op's channels count as varying: the analysis may
    miss a constant channel, never invent one."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
        self.channel_counts = {
            info.name: dims[1].dim_value for info in infos
            if len(dims := info.type.tensor_type.shape.dim) >= 2 and dims[1].HasField("dim_value")}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self._memo: dict[str, ConstantChannels | None] = {}

    def channels(self, tensor: str) -> ConstantChannels | None:
        """``tensor``'s constant channels, or None when its channel count is unknown."""
        if tensor not in self._memo:
            self._memo[tensor] = self._follow(tensor)
        return self._memo[tensor]

    def _varying(self, tensor: str) -> ConstantChannels | None:
        count = self.channel_counts.get(tensor)
        return None if count is None else ConstantChannels(np.zeros(count, bool), np.zeros(count))

    def _follow(self, tensor: str) -> ConstantChannels | None:
        node = self.producer.get(tensor)
        if node is None:
            return self._varying(tensor)
        attrs = _attributes(node)
        const = self.constants
        if node.op_type == "Expand" and node.input[0] in const:
            value = const[node.input[0]]
            # Expand keeps a constant's channels, or broadcasts a single one to the count shapes give.
            count = value.shape[1] if value.ndim >= 2 and value.shape[1] > 1 else self.channel_counts.get(tensor)
            if value.ndim >= 2 and count and all(d == 1 for axis, d in enumerate(value.shape) if axis != 1):
                values = np.broadcast_to(value.reshape(-1).astype(np.float64), count)
                return ConstantChannels(np.ones(count, bool), values.copy())
        elif node.op_type == "Concat" and attrs.get("axis") == 1:
            parts = [self.channels(name) for name in node.input]
            if all(part is not None for part in parts):
                return ConstantChannels(np.concatenate([p.mask for p in parts]),  # type: ignore[union-attr]
                                        np.concatenate([p.values for p in parts]))  # type: ignore[union-attr]
        elif node.op_type == "Gather" and attrs.get("axis", 0) == 1 and node.input[1] in const:
            source, index = self.channels(node.input[0]), const[node.input[1]]
            if source is not None and index.ndim == 1:
                return ConstantChannels(source.mask[index], source.values[index])
        elif node.op_type == "Relu":
            source = self.channels(node.input[0])
            if source is not None:
                return ConstantChannels(source.mask, np.maximum(source.values, 0.0))
        elif node.op_type in ("Unsqueeze", "Squeeze") and len(node.input) == 2 and node.input[1] in const:
            if all(axis >= 2 for axis in const[node.input[1]].reshape(-1)):  # the channel axis stays 1
                return self.channels(node.input[0])
        elif node.op_type == "BatchNormalization" and len(node.output) == 1 and all(
                name in const for name in node.input[1:5]):
            source = self.channels(node.input[0])
            if source is not None:
                return ConstantChannels(source.mask, _batch_norm(node, source.values, const))
        return self._varying(tensor)


def drop_constant_features(model: onnx.ModelProto, features: str, pooled: str) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose frame features ``features`` leave out constant channels (the dead
    filters' outputs: a constant's max and mean over any window are the constant), so that nothing
    downstream copies, pools or multiplies them. Returns the model and how many channels were left out.

    The graph must be ``features = Concat(axis 1)``, ``pooled`` [batch, 2·channels] interleaving each
    channel's max and mean (``Reshape`` to [-1, 2·channels]) read by ``Gemm`` layers, each behind an
    optional ``BatchNormalization``: a head's bias takes the constant part of its input. A part of the
    concatenation loses its constant channels when plain convolutions are all that read it besides: a
    convolution keeps one constant channel, weighted for all of them, so the zero padding at a track's
    edges counts as before. Anything else leaves the model as it is (0 channels).
    """
    analysis = _ChannelAnalysis(model)
    producer, constants = analysis.producer, analysis.constants
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    concat, reshape = producer.get(features), producer.get(pooled)
    if (concat is None or concat.op_type != "Concat" or analysis.channels(features) is None
            or reshape is None or reshape.op_type != "Reshape" or reshape.input[1] not in constants):
        return model, 0
    replacement: dict[str, list[onnx.NodeProto]] = {}
    added: list[onnx.TensorProto] = []
    parts, dropped, values = [], [], []
    for name in concat.input:
        part = analysis.channels(name)
        assert part is not None  # the concatenation's analysis needed every part
        convs = [_conv_without_constant_inputs(user, part, constants) if part.mask.any() else None
                 for user in consumers[name] if user is not concat]
        values.append(part.values)
        if not part.mask.any() or any(conv is None for conv in convs):
            parts.append(name)
            dropped.append(np.zeros(part.mask.size, bool))
            continue
        for conv in convs:
            replacement[conv[0][1].name] = conv[0]  # type: ignore[index]
            added += conv[1]  # type: ignore[index]
        varying = np.flatnonzero(~part.mask).astype(np.int64)
        added.append(numpy_helper.from_array(varying, f"{name}_varying_channels"))
        replacement.setdefault(concat.name, []).append(helper.make_node(
            "Gather", [name, f"{name}_varying_channels"], [f"{name}_varying"], name=f"{name}_varying", axis=1))
        parts.append(f"{name}_varying")
        dropped.append(part.mask)
    drop = np.concatenate(dropped)
    if not drop.any() or constants[reshape.input[1]].tolist() != [-1, 2 * drop.size]:
        return model, 0
    keep = np.repeat(~drop, 2)  # pooled interleaves [max, mean] per channel
    pooled_values = np.repeat(np.concatenate(values), 2)
    for user in consumers.get(pooled, []):
        head = _head_without_constant_inputs(user, consumers, constants, keep, pooled_values)
        if head is None:
            return model, 0
        replacement.update(head[0])
        added += head[1]
    replacement.setdefault(concat.name, []).append(
        helper.make_node("Concat", parts, [features], name=concat.name, axis=1))
    added.append(numpy_helper.from_array(np.array([-1, int(keep.sum())], np.int64), f"{reshape.name}_kept_shape"))
    shaped = helper.make_node("Reshape", [reshape.input[0], f"{reshape.name}_kept_shape"], list(reshape.output),
                              name=reshape.name)
    shaped.attribute.extend(reshape.attribute)
    replacement[reshape.name] = [shaped]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _splice(model.graph, replacement, set(), [], added)
    for output in model.graph.output:
        if output.name in (features, pooled):
            size = keep.sum() if output.name == pooled else (~drop).sum()
            output.type.tensor_type.shape.dim[1].dim_value = int(size)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model, int(drop.sum())


def _conv_without_constant_inputs(conv: onnx.NodeProto, part: ConstantChannels,
                                  constants: dict[str, np.ndarray]
                                  ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]] | None:
    """A plain convolution of ``conv.input[0]`` (whose constant channels ``part`` describes) that reads
    its varying channels and one constant channel carrying every constant channel's weight × value."""
    attrs = _attributes(conv)
    if conv.op_type != "Conv" or not conv.name or attrs.get("group", 1) != 1 or conv.input[1] not in constants or (
            len(conv.input) > 2 and conv.input[2] not in constants):
        return None
    weight = constants[conv.input[1]]
    varying, fixed = np.flatnonzero(~part.mask), np.flatnonzero(part.mask)
    carrier = fixed[np.argmax(np.abs(part.values[fixed]))]
    channels, weights = varying, weight[:, varying]
    if part.values[carrier] != 0:  # all-zero constants add nothing anywhere
        scaled = np.tensordot(weight[:, fixed].astype(np.float64), part.values[fixed], axes=([1], [0]))
        carried = (scaled / part.values[carrier])[:, None].astype(weight.dtype)
        channels, weights = np.append(varying, carrier), np.concatenate([weight[:, varying], carried], axis=1)
    n = conv.name
    init = [numpy_helper.from_array(channels.astype(np.int64), f"{n}_read_channels"),
            numpy_helper.from_array(np.ascontiguousarray(weights), f"{n}_read_w")]
    read = helper.make_node("Gather", [conv.input[0], f"{n}_read_channels"], [f"{n}_read"], name=f"{n}_read", axis=1)
    node = helper.make_node("Conv", [f"{n}_read", f"{n}_read_w", *conv.input[2:]], list(conv.output), name=n)
    node.attribute.extend(conv.attribute)
    return [read, node], init


def _head_without_constant_inputs(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
                                  constants: dict[str, np.ndarray], keep: np.ndarray, values: np.ndarray
                                  ) -> tuple[dict[str, list[onnx.NodeProto]], list[onnx.TensorProto]] | None:
    """``[BatchNormalization →] Gemm`` reading the kept pooled inputs only, the constant ones' part in
    the Gemm's bias; None for another pattern."""
    replacement: dict[str, list[onnx.NodeProto]] = {}
    init: list[onnx.TensorProto] = []
    gemm = node
    if not node.name:  # nodes are replaced by name
        return None
    if node.op_type == "BatchNormalization":
        users = consumers.get(node.output[0], [])
        if len(node.output) != 1 or len(users) != 1 or not all(name in constants for name in node.input[1:5]):
            return None
        gemm = users[0]
        params = [constants[name] for name in node.input[1:5]]
        values = _batch_norm(node, values, constants)
        names = [f"{node.name}_kept_{i}" for i in range(4)]
        init += [numpy_helper.from_array(p[keep], name) for p, name in zip(params, names, strict=True)]
        kept = helper.make_node("BatchNormalization", [node.input[0], *names], list(node.output), name=node.name)
        kept.attribute.extend(node.attribute)
        replacement[node.name] = [kept]
    attrs = _attributes(gemm)
    if (gemm.op_type != "Gemm" or not gemm.name or len(gemm.input) != 3 or gemm.input[1] not in constants
            or gemm.input[2] not in constants or attrs.get("transA", 0) != 0 or attrs.get("transB", 0) != 1
            or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
        return None
    weight, bias = constants[gemm.input[1]], constants[gemm.input[2]]
    folded = bias.astype(np.float64) + weight[:, ~keep].astype(np.float64) @ values[~keep]
    init += [numpy_helper.from_array(np.ascontiguousarray(weight[:, keep]), f"{gemm.name}_kept_w"),
             numpy_helper.from_array(folded.astype(bias.dtype), f"{gemm.name}_kept_b")]
    kept_gemm = helper.make_node("Gemm", [gemm.input[0], f"{gemm.name}_kept_w", f"{gemm.name}_kept_b"],
                                 list(gemm.output), name=gemm.name)
    kept_gemm.attribute.extend(gemm.attribute)
    replacement[gemm.name] = [kept_gemm]
    return replacement, init


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _batch_norm(node: onnx.NodeProto, values: np.ndarray, constants: dict[str, np.ndarray]) -> np.ndarray:
    """The inference ``BatchNormalization`` ``node`` (its parameters in ``constants``) applied to one
    value per channel, in float64."""
    scale, bias, mean, var = (constants[name].astype(np.float64) for name in node.input[1:5])
    return (values - mean) / np.sqrt(var + _attributes(node).get("epsilon", 1e-5)) * scale + bias


def _weight_and_bias(conv: onnx.NodeProto, initialisers: dict[str, onnx.TensorProto]
                     ) -> tuple[np.ndarray, np.ndarray]:
    weight = numpy_helper.to_array(initialisers[conv.input[1]])
    bias = (numpy_helper.to_array(initialisers[conv.input[2]]) if len(conv.input) > 2
            else np.zeros(weight.shape[0], weight.dtype))
    return weight, bias


def _pooled_output(prefix: str, p: MaxPooledConv, live: np.ndarray, bias: np.ndarray
                   ) -> tuple[tuple[str, list[onnx.NodeProto]], list[onnx.TensorProto]]:
    """Where the live channels' pooled values [batch, live, frames] go, and the nodes that complete
    them into the pattern's output: a dead filter's output is its bias at every mel position, so its
    maximum and minimum over mel are that bias."""
    if live.all():
        return (p.where.output[0], []), []
    nodes, init = _restore_channels(prefix, f"{prefix}_live", p.where.output[0], ~live, bias, rank=3)
    return (f"{prefix}_live", nodes), init


def _max_over_mel(prefix: str, tensor: str, width: int, output: str) -> list[onnx.NodeProto]:
    # uint8: MaxPool, not ReduceMax. ONNX Runtime pools uint8 in NHWC, QLinearConv's own layout
    # (2.7 µs per frame against 7.7 for ReduceMax; for float32 its NCHWc MaxPool is the slower one).
    return [helper.make_node("MaxPool", [tensor], [f"{prefix}_pooled"], name=f"{prefix}_pool",
                             kernel_shape=[1, width]),
            helper.make_node("Squeeze", [f"{prefix}_pooled", f"{prefix}_mel_axis"], [output],
                             name=f"{prefix}_squeeze")]


def _splice(graph: onnx.GraphProto, replacement: dict[str, list[onnx.NodeProto]], removed: set[str],
            before_first: list[onnx.NodeProto], added: list[onnx.TensorProto]) -> None:
    """Replace nodes by name (``before_first`` goes ahead of the first replacement), drop ``removed``
    and unused initialisers, add ``added``."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in removed:
            continue
        if node.name in replacement:
            nodes += before_first
            before_first = []
            nodes += replacement[node.name]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)


def calibration_feeds(paths: Iterable[Path], front_end, input_name: str, chunk_frames: int = 4096,
                      clips: Iterable[Callable[[int], np.ndarray]] = ()) -> Iterable[dict[str, np.ndarray]]:
    """Log-mel feeds ``{input_name: float32 [1, frames, mels]}`` from audio files, then from ``clips``
    (each a function of the sample rate in Hz returning mono float samples in [-1, 1]), ``chunk_frames``
    at a time. A file that cannot be decoded raises :class:`tagger.errors.DecodeError`."""
    from tagger.decode import decode_file

    audio = [*(lambda sr, path=path: decode_file(path, sr) for path in paths), *clips]
    for make in audio:
        mel = front_end.spectrogram(make(front_end.sample_rate))
        for start in range(0, mel.shape[0], chunk_frames):
            part = mel[start:start + chunk_frames]
            if part.shape[0] >= 16:
                yield {input_name: part[None].astype(np.float32)}


def optimize_model_file(path: Path) -> tuple[int, int]:
    """Rewrite the genre-tagger model file ``path`` in place with :func:`rewrite_max_pooled_convs` and
    :func:`prune_dead_filters`; return how many max-pooled convolutions were rewritten and how many
    dead filters of plain convolutions were dropped."""
    from training.export import save_onnx

    model = onnx.load(str(path))
    patterns = find_max_pooled_convs(model)
    if patterns:
        model = rewrite_max_pooled_convs(model, patterns)
    model, dropped = prune_dead_filters(model)
    if patterns or dropped:
        save_onnx(model, path)
    return len(patterns), dropped


def drop_constant_features_file(path: Path, tolerance: float = 1e-5) -> int:
    """Rewrite the genre-tagger model file ``path`` in place with :func:`drop_constant_features` (at its
    manifest's frame features and pooled tensor); return how many channels were left out. The
    manifest's outputs must stay within ``tolerance`` of the file's before on random windows of each
    view's length and a short one (raises ``ValueError`` otherwise, leaving the file as it was)."""
    import onnxruntime as ort

    from tagger.model import read_manifest
    from training.export import save_onnx

    manifest = read_manifest(path)
    if manifest.frame_pooling is None:
        return 0
    model = onnx.load(str(path))
    rewritten, dropped = drop_constant_features(model, manifest.frame_pooling.features, manifest.frame_pooling.pooled)
    if not dropped:
        return 0
    names = [o.onnx_output for o in manifest.outputs]
    before, after = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                     for m in (model, rewritten))
    rng = np.random.default_rng(0)
    n_mels = next(iter(manifest.front_ends.values())).n_mels
    for frames in sorted({*(v.window_frames for v in manifest.views), 31}):
        mel = (3 * rng.random((2, frames, n_mels))).astype(np.float32)
        for name, old, new in zip(names, before.run(names, {manifest.input: mel}),
                                  after.run(names, {manifest.input: mel}), strict=True):
            if (worst := float(np.max(np.abs(old - new)))) > tolerance:
                raise ValueError(f"{path}: leaving out constant features changes {name} by {worst:.2e}")
    save_onnx(rewritten, path)
    return dropped


def quantize_model_file(source: Path, target: Path, calibration_audio: list[Path], within: str | None = None,
                        name: str | None = None, margin: float = DEFAULT_MARGIN,
                        calibration_clips: Sequence[Callable[[int], np.ndarray]] = (),
                        float_kernels: Collection[tuple[int, ...]] = ()) -> dict:
    """Write ``target``: the genre-tagger model ``source`` with its max-pooled convolutions (those
    ``within`` depends on, or all) in int8, calibrated on ``calibration_audio`` (files) and
    ``calibration_clips`` (see :func:`calibration_feeds`), and the others rewritten in float32
    (:func:`rewrite_max_pooled_convs`, the (k × 1) ones in polyphase form). The manifest is kept, renamed
    ``name`` (default ``<name>-int8``), with a ``quantization`` entry in its metrics, which is also returned.

    Args:
        float_kernels: kernel shapes (time, mel) of max-pooled convolutions that stay float32 although
            ``within`` reaches them: those whose int8 rounding moves the outputs most (measure it, as
            ``training/shipped.py`` did for its ``INT8_FLOAT_KERNELS``). Default none.
    """
    from tagger.model import MANIFEST_KEY, read_manifest
    from training.export import save_onnx

    manifest = read_manifest(source)
    front_end = next(iter(manifest.front_ends.values()))
    model = onnx.load(str(source))
    kept = {tuple(k) for k in float_kernels}
    patterns = [p for p in find_max_pooled_convs(model, within, front_end.n_mels)
                if tuple(_attributes(p.conv)["kernel_shape"]) not in kept]
    if not patterns:
        raise ValueError(f"{source}: no max-pooled convolution to quantise" + (f" within {within!r}" if within else ""))
    calibration = calibrate(model, patterns, calibration_feeds(calibration_audio, front_end, manifest.input,
                                                               clips=calibration_clips))
    quantized = quantize_max_pooled_convs(model, patterns, calibration, margin)
    others = find_max_pooled_convs(quantized, None, front_end.n_mels)
    if others:
        quantized = rewrite_max_pooled_convs(quantized, others, polyphase=True)
    quantized, dropped = prune_dead_filters(quantized)
    initialisers = {i.name: i for i in model.graph.initializer}
    dead = sum(int(dead_filters(numpy_helper.to_array(initialisers[p.conv.input[1]])).sum()) for p in patterns)
    info = {"method": "int8 max-pooled convolutions, dead filters dropped (training.optimize)",
            "convolutions": [p.conv.name for p in patterns], "within": within, "margin": margin,
            "float_convolutions": [p.conv.name for p in others],
            "float_kernels": sorted(list(k) for k in kept),
            "calibration_files": len(calibration_audio), "calibration_clips": len(calibration_clips),
            "dead_filters_dropped": dead + dropped}
    from dataclasses import replace

    renamed = replace(manifest, name=name or f"{manifest.name}-int8",
                      metrics={**manifest.metrics, "quantization": info})
    for entry in quantized.metadata_props:
        if entry.key == MANIFEST_KEY:
            entry.value = renamed.to_json()
    save_onnx(quantized, target)
    return info
