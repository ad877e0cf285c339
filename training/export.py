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
                 dynamic_frames: bool = True, check: bool = True, tolerance: float = 1e-5) -> Path:
    """Write ``module`` with ``manifest`` to ``path`` as a single ONNX file and return the path.

    Args:
        dynamic_frames: export the time axis as dynamic (a model that pools over time runs on any
            window length); otherwise the input is fixed to the first view's window length.
        check: run ONNX Runtime and PyTorch on each view's window shape and raise if any output
            differs by more than ``tolerance``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    view = manifest.views[0]
    n_mels = manifest.front_ends[view.front_end].n_mels
    example = torch.randn(2, view.window_frames, n_mels)
    output_names = [o.onnx_output for o in manifest.outputs]
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
        program = torch.onnx.export(module, (example,), input_names=[manifest.input], output_names=output_names,
                                    dynamic_shapes={arg_name: shapes}, dynamo=True, external_data=False,
                                    verbose=False)
    exporter_log.setLevel(level)
    proto = program.model_proto
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = MANIFEST_KEY
    entry.value = manifest.to_json()
    proto.producer_name = "genre-tagger"
    onnx.checker.check_model(proto)
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    tmp.replace(path)
    if check:
        verify_export(module, manifest, path, tolerance)
    return path


def _forward_args(module: torch.nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


def verify_export(module: torch.nn.Module, manifest: ModelManifest, path: Path, tolerance: float) -> float:
    """Largest |ONNX Runtime - PyTorch| over every output on each view's window shape; raises past tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for view in manifest.views:
        n_mels = manifest.front_ends[view.front_end].n_mels
        x = torch.randn(3, view.window_frames, n_mels, generator=generator)
        with torch.no_grad():
            expected = module(x)
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        got = session.run([o.onnx_output for o in manifest.outputs], {manifest.input: x.numpy()})
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))))
    if worst > tolerance:
        raise RuntimeError(f"ONNX export of {manifest.name} differs from PyTorch by {worst:.2e} > {tolerance:.0e}")
    return worst
