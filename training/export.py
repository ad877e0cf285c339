"""Export a PyTorch module to a self-describing genre-tagger ONNX file (one file, manifest inside).

The module takes float32 log-mel slices [batch, frames, n_mels] and returns one probability tensor
[batch, labels] per manifest output, in manifest order.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from tagger.model import MANIFEST_KEY, ModelManifest


def export_model(module: torch.nn.Module, manifest: ModelManifest, path: str | Path,
                 dynamic_frames: bool = True, check: bool = True, tolerance: float = 1e-5,
                 extra_outputs: tuple[str, ...] = ()) -> Path:
    """Write ``module`` with ``manifest`` to ``path`` as a single ONNX file and return the path.

    Args:
        dynamic_frames: export the time axis as dynamic (a model that pools over time runs on any
            window length); otherwise the input is fixed to the first view's window length.
        check: run ONNX Runtime and PyTorch on each view's window shape and raise if any output
            differs by more than ``tolerance``.
        extra_outputs: names of further tensors the module returns after the manifest's outputs
            (intermediate features a faster runtime path can use, such as frame-level features).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    view = manifest.views[0]
    n_mels = manifest.front_ends[view.front_end].n_mels
    example = torch.randn(2, view.window_frames, n_mels)
    output_names = [o.onnx_output for o in manifest.outputs] + list(extra_outputs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: dict[int, object] = {0: batch}
    if dynamic_frames:
        shapes[1] = torch.export.Dim("frames", min=16, max=1_000_000)
    arg_name = next(iter(_forward_args(module)))
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns that torchvision (never used here) is absent
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for attempt in (1, 2):
            try:
                program = torch.onnx.export(module, (example,), input_names=[manifest.input],
                                            output_names=output_names, dynamic_shapes={arg_name: shapes}, dynamo=True,
                                            external_data=False, verbose=False)
                break
            except SystemError as exc:
                # CPython 3.11 before 3.11.8 (gh-106905): ast.parse, which the exporter runs over torchlib's
                # sources, can fail spuriously while another thread of the process builds an AST. Nothing about
                # this module is wrong, so the export runs once more.
                if attempt == 2 or "AST constructor recursion depth mismatch" not in str(exc):
                    raise
    exporter_log.setLevel(level)
    proto = program.model_proto
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = MANIFEST_KEY
    entry.value = manifest.to_json()
    proto.producer_name = "genre-tagger"
    onnx.checker.check_model(proto)
    save_onnx(proto, path)
    if check:
        diffs = verify_export(module, manifest, path, tolerance)
        logging.getLogger(__name__).info("ONNX Runtime vs PyTorch, max |diff| per output: %s", diffs)
    return path


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` to ``path`` as one file, atomically (a reader never sees half a model)."""
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    tmp.replace(path)


def _forward_args(module: torch.nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


def verify_export(module: torch.nn.Module, manifest: ModelManifest, path: Path, tolerance: float) -> dict[str, float]:
    """Largest |ONNX Runtime - PyTorch| per graph output, on each view's window shape.

    The manifest's outputs (probabilities) must agree within ``tolerance``; extra outputs (features of
    any magnitude) within ``tolerance`` relative to their largest absolute value. Raises otherwise.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    probabilities = {o.onnx_output for o in manifest.outputs}
    worst: dict[str, float] = dict.fromkeys(names, 0.0)
    scale: dict[str, float] = dict.fromkeys(names, 1.0)
    generator = torch.Generator().manual_seed(0)
    for view in manifest.views:
        n_mels = manifest.front_ends[view.front_end].n_mels
        x = torch.randn(3, view.window_frames, n_mels, generator=generator)
        with torch.no_grad():
            expected = module(x)
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        got = session.run(None, {manifest.input: x.numpy()})
        for name, e, g in zip(names, expected, got, strict=True):
            worst[name] = max(worst[name], float(np.max(np.abs(e.numpy() - g))))
            if name not in probabilities:
                scale[name] = max(scale[name], float(np.max(np.abs(e.numpy()))))
    for name in names:
        if worst[name] > tolerance * scale[name]:
            kind = "" if name in probabilities else f" (relative to its scale {scale[name]:.3g})"
            raise RuntimeError(f"ONNX export of {manifest.name}: output {name!r} differs from PyTorch by "
                               f"{worst[name]:.2e} > {tolerance:.0e}{kind}")
    return worst


class ProbabilityModel(torch.nn.Module):
    """A trained classifier as the runtime runs it: log-mel slices → softmax probabilities."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(mel), dim=1)


class TransferProbabilityModel(torch.nn.Module):
    """A musicnn transfer model with the tensors the runtime's fast and incremental paths use."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from training.musicnn import interleaved_pool

        features, timbral, temporal = self.net.backbone.features_and_stages(mel)
        pooled = interleaved_pool(features)
        return torch.softmax(self.net.pooled_logits(pooled), dim=1), features, pooled, timbral, temporal


def export_trained(net: torch.nn.Module, spec, labels: tuple[str, ...], path: str | Path, name: str,
                   version: str = "0.1.0", metrics: dict | None = None, description: str = "",
                   training_data: str = "", check: bool = True) -> Path:
    """Write a network trained by :mod:`training.train` as a genre-tagger model file.

    The manifest carries the architecture's front end(s) and views (2.56 s, and 5.12 s zoomed out or
    twice as long), the labels, the metrics and where the model came from.
    """
    from tagger.model import FramePooling, OutputSpec, ViewSpec
    from training.architectures import MusicnnTransfer
    from training.train import model_views

    views = model_views(spec)
    front_ends: dict[str, object] = {}
    view_specs = []
    for v in views:
        fe_name = next((k for k, fe in front_ends.items() if fe == v.front_end), None)
        if fe_name is None:
            fe_name = f"mel{round(v.front_end.sample_rate / v.front_end.hop_length)}fps"
            front_ends[fe_name] = v.front_end
        view_specs.append(ViewSpec(v.name, fe_name, v.window_frames, v.hop_frames))
    transfer = isinstance(net, MusicnnTransfer)
    frame_pooling = None
    if transfer:
        from training.musicnn import MUSICNN_STAGES, MusicnnBackbone

        frame_pooling = FramePooling("frame_features", "pooled", "max_mean_interleaved", MusicnnBackbone.CONTEXT,
                                     MUSICNN_STAGES, MusicnnBackbone.MID_CONTEXT)
    manifest = ModelManifest(
        name=name, version=version, input="mel", front_ends=front_ends, views=tuple(view_specs),
        outputs=(OutputSpec("genre", "genre", "softmax", tuple(labels), "Genre"),),
        description=description or f"{spec.name} ({spec.citation}) trained by genre-tagger",
        licence="musicnn weights: ISC (c) Music Technology Group, UPF 2019; the rest: MIT" if transfer else "MIT",
        provenance=f"training.train, architecture {spec.name}, options {spec.options}",
        training_data=training_data, metrics=metrics or {}, frame_pooling=frame_pooling,
    )
    module = TransferProbabilityModel(net) if transfer else ProbabilityModel(net)
    extra = ("frame_features", "pooled", "timbral_features", "temporal_features") if transfer else ()
    return export_model(module.eval(), manifest, path, dynamic_frames=spec.dynamic_frames, check=check,
                        extra_outputs=extra, tolerance=1e-4)


def rewrite_manifest(path: str | Path, manifest: ModelManifest) -> dict[str, str]:
    """Replace the manifest of the model file at ``path`` with ``manifest``, leaving every other byte of
    meaning alone (graph, opset, producer): metadata only, no re-export. Checks that the graph's
    serialised bytes are the same before and after, and raises otherwise; returns the sha1 of the graph
    bytes and of the file before and after."""
    import hashlib

    path = Path(path)
    before = path.read_bytes()
    proto = onnx.load_model_from_string(before)
    graph = proto.graph.SerializeToString()
    del proto.metadata_props[:]
    proto.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    save_onnx(proto, path)
    after = path.read_bytes()
    graph_after = onnx.load_model_from_string(after).graph.SerializeToString()
    if graph_after != graph or graph not in after:
        raise RuntimeError(f"{path}: the graph's bytes changed while rewriting the manifest")
    return {"graph_sha1": hashlib.sha1(graph).hexdigest(), "file_sha1_before": hashlib.sha1(before).hexdigest(),
            "file_sha1_after": hashlib.sha1(after).hexdigest()}
