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
        diffs = verify_export(module, manifest, path, tolerance)
        logging.getLogger(__name__).info("ONNX Runtime vs PyTorch, max |diff| per output: %s", diffs)
    return path


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
