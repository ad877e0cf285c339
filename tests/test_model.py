"""Model files: the manifest is validated against the graph at load, with one clear error each."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from models import FRONT_END, GENRES, TAGS, export_tiny, manifest
from tagger import Engine, ModelError, read_manifest
from tagger.model import MANIFEST_KEY, ModelManifest


def _rewrite_manifest(src: Path, dst: Path, edit) -> Path:
    proto = onnx.load(str(src))
    props = {p.key: p for p in proto.metadata_props}
    doc = json.loads(props[MANIFEST_KEY].value)
    edit(doc)
    props[MANIFEST_KEY].value = json.dumps(doc)
    onnx.save(proto, str(dst))
    return dst


def test_manifest_round_trips_and_describes_views_in_seconds(tiny_model: Path) -> None:
    m = read_manifest(tiny_model)
    assert m == ModelManifest.from_json(manifest().to_json())
    assert [m.view_seconds(v) for v in m.views] == [(2.56, 1.28), (5.12, 2.56)]
    engine = Engine(tiny_model)
    assert engine.provider == "CPUExecutionProvider"
    assert engine.manifest.output("genre").labels == GENRES


def test_wrong_label_count_is_caught_by_the_dry_run(tiny_model: Path, tmp_path: Path) -> None:
    bad = _rewrite_manifest(tiny_model, tmp_path / "bad.onnx",
                            lambda d: d["outputs"][0].update(labels=["a", "b", "c", "d", "e"]))
    with pytest.raises(ModelError, match=r"output 'genre' gives shape \[1, 3\].*lists 5 labels"):
        Engine(bad)


@pytest.mark.parametrize("key", ["front_ends", "views", "outputs", "input", "name"])
def test_missing_manifest_keys_are_named(tiny_model: Path, tmp_path: Path, key: str) -> None:
    bad = _rewrite_manifest(tiny_model, tmp_path / "bad.onnx", lambda d: d.pop(key))
    with pytest.raises(ModelError, match=f"lacks required key '{key}'"):
        Engine(bad)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["front_ends"]["mel16k"].update(n_mels=64), "input has 48 mel bands, front end 'mel16k' makes 64"),
    (lambda d: d["views"][0].update(front_end="nope"), "unknown front end 'nope'"),
    (lambda d: d["outputs"][1].update(kind="relu"), "kind 'relu' is not one of"),
    (lambda d: d["outputs"][1].update(onnx_output="missing"), "output 'missing' is not in the graph"),
    (lambda d: d.update(input="audio"), "manifest input 'audio' is not a graph input"),
    (lambda d: d.update(format=7), "format 7 is not supported"),
    (lambda d: d["outputs"][0].update(labels=["x", "x", "y"]), "duplicate labels"),
])
def test_inconsistent_manifests_are_rejected(tiny_model: Path, tmp_path: Path, edit, message: str) -> None:
    bad = _rewrite_manifest(tiny_model, tmp_path / "bad.onnx", edit)
    with pytest.raises(ModelError, match=message):
        Engine(bad)


def test_corrupt_empty_and_foreign_files(tiny_model: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    data = tiny_model.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        Engine(corrupt)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty model file"):
        Engine(empty)
    with pytest.raises(ModelError, match="no such model file"):
        Engine(tmp_path / "missing.onnx")
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ModelError, match="not a genre-tagger model"):
        Engine(foreign)
    notjson = _rewrite_manifest(tiny_model, tmp_path / "notjson.onnx", lambda d: None)
    proto = onnx.load(str(notjson))
    proto.metadata_props[0].value = "{not json"
    onnx.save(proto, str(notjson))
    with pytest.raises(ModelError, match="manifest is not valid JSON"):
        Engine(notjson)


def test_fixed_length_model_must_match_its_views(tmp_path: Path) -> None:
    import torch

    from training.export import export_model

    class Fixed(torch.nn.Module):
        def forward(self, mel):
            flat = mel.flatten(1)
            return torch.softmax(flat[:, :3], -1), torch.sigmoid(flat[:, :4])

    m = manifest()
    path = export_model(Fixed(), m, tmp_path / "fixed.onnx", dynamic_frames=False, check=False)
    with pytest.raises(ModelError, match=r"input takes 160 frames, view '5\.12s' is 320 frames"):
        Engine(path)
    assert FRONT_END.n_mels == 48 and TAGS


def test_device_cuda_fails_clearly_without_a_gpu(tiny_model: Path) -> None:
    import onnxruntime as ort

    from tagger.engine import EngineOptions

    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            engine = Engine(tiny_model, EngineOptions(device="cuda"))
        except ModelError as exc:
            assert "CUDA requested but unavailable" in str(exc)
        else:
            assert engine.provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(ModelError, match="CUDA requested but unavailable"):
            Engine(tiny_model, EngineOptions(device="cuda"))


def test_export_writes_one_file(tmp_path: Path) -> None:
    path = export_tiny(tmp_path / "one.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.onnx"]
    assert path.stat().st_size > 1000


def test_frame_pooling_stage_round_trips_and_a_bad_one_is_named(tmp_path: Path) -> None:
    from tagger import Tagger
    from tagger.model import FramePooling, FrameStage

    shipped = read_manifest(Path(__file__).resolve().parent.parent / "models" / "msd-musicnn-gtzan.onnx")
    assert shipped.frame_pooling.stages == (FrameStage("timbral_features", (3, 3)),
                                            FrameStage("temporal_features", (63, 64)))
    again = ModelManifest.from_json(shipped.to_json())
    assert again.frame_pooling == shipped.frame_pooling
    unstaged = FramePooling("f", "p", "max_mean_interleaved", (1, 1))
    assert ModelManifest.from_json(
        ModelManifest(**{**shipped.__dict__, "frame_pooling": unstaged}).to_json()).frame_pooling.stages == ()
    src = Path(__file__).resolve().parent.parent / "models" / "msd-musicnn-gtzan.onnx"
    bad = _rewrite_manifest(src, tmp_path / "bad.onnx", lambda d: d["frame_pooling"].update(stages=[{"tensor": "x"}]))
    with pytest.raises(ModelError, match="bad frame_pooling"):
        Engine(bad)
    missing = _rewrite_manifest(src, tmp_path / "missing.onnx",
                                lambda d: d["frame_pooling"]["stages"][0].update(tensor="no_such_tensor"))
    with pytest.raises(ModelError, match="cannot split the graph"):
        _ = Tagger(missing).frame_runner
