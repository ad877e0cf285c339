"""The TensorFlow-free checkpoint reader and the PyTorch ports, against TensorFlow's own outputs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REFERENCE

from training.musicnn import MSDMusicnn, MSDVgg, fetch_musicnn_wheel, load_checkpoint
from training.tf_checkpoint import Checkpoint, CheckpointError, masked_crc32c, read_index


@pytest.fixture(scope="module")
def wheel() -> Path:
    return fetch_musicnn_wheel()


@pytest.fixture(scope="module")
def musicnn(wheel: Path) -> MSDMusicnn:
    return MSDMusicnn.pretrained(wheel)


def test_reader_lists_every_variable_with_shapes(wheel: Path) -> None:
    ckpt = load_checkpoint("MSD_musicnn", wheel)
    assert ckpt.header == {"num_shards": 1, "endianness": 0}
    assert ckpt.entries["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert ckpt.entries["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert ckpt.entries["dense_1/kernel"].shape == (200, 50)
    tensors = ckpt.tensors()  # every tensor passes its CRC32C
    assert sum(t.size for t in tensors.values() if t.dtype == np.float32) > 700_000
    assert tensors["batch_normalization/moving_variance"].dtype == np.float32


def test_masked_crc_matches_leveldb_definition() -> None:
    # LevelDB's crc32c of 32 zero bytes is 0x8a9136aa; the mask rotates by 15 and adds 0xa282ead8.
    crc = 0x8A9136AA
    assert masked_crc32c(bytes(32)) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _index_and_data(wheel: Path) -> tuple[bytes, bytes]:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        return zf.read("musicnn/MSD_musicnn/.index"), zf.read("musicnn/MSD_musicnn/.data-00000-of-00001")


def test_corrupt_and_truncated_checkpoints_give_clear_errors(wheel: Path) -> None:
    index, data = _index_and_data(wheel)
    with pytest.raises(CheckpointError, match="shorter than its 48-byte footer"):
        read_index(index[:20])
    with pytest.raises(CheckpointError, match="no table magic"):
        read_index(index[:-1])
    flipped = bytearray(index)
    flipped[10] ^= 0xFF
    with pytest.raises(CheckpointError, match="CRC32C mismatch"):
        read_index(bytes(flipped))
    ckpt = Checkpoint(index, [data[: len(data) // 2]], "half")
    with pytest.raises(CheckpointError, match="runs past the end of its data shard"):
        ckpt.tensors()
    damaged = bytearray(data)
    entry = Checkpoint(index, [data]).entries["dense/kernel"]
    damaged[entry.offset + 5] ^= 0x01
    with pytest.raises(CheckpointError, match="'dense/kernel' fails its CRC32C check"):
        Checkpoint(index, [bytes(damaged)]).tensor("dense/kernel")
    assert struct.calcsize("<Q") == 8


def test_open_from_a_directory_prefix(wheel: Path, tmp_path: Path) -> None:
    index, data = _index_and_data(wheel)
    (tmp_path / "model.index").write_bytes(index)
    (tmp_path / "model.data-00000-of-00001").write_bytes(data)
    ckpt = Checkpoint.open(tmp_path / "model")
    assert ckpt.tensor("dense/bias").shape == (200,)
    (tmp_path / "model.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="missing data shard"):
        Checkpoint.open(tmp_path / "model")


def test_musicnn_port_matches_tensorflow_on_the_graph_reference(musicnn: MSDMusicnn) -> None:
    ref = np.load(REFERENCE / "MSD_musicnn_graph.npz")
    with torch.no_grad():
        out = {k: v.numpy() for k, v in musicnn.intermediates(torch.from_numpy(ref["inp"])).items()}
    np.testing.assert_allclose(out["prob"], ref["prob"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["logits"], ref["logits"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(out["penultimate"], ref["penultimate"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(out["max_pool"], ref["max_pool"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(out["mean_pool"], ref["mean_pool"], atol=1e-3, rtol=0)
    features = out["features"].transpose(0, 2, 1)
    np.testing.assert_allclose(features[..., :408], ref["timbral"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(features[..., 408:561], ref["temporal"], atol=1e-3, rtol=0)
    for i, name in enumerate(["cnn1", "cnn2", "cnn3"]):
        np.testing.assert_allclose(features[..., 561 + 64 * i: 625 + 64 * i], ref[name][..., 0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["real_gtzan_jazz00002", "real_gtzan_metal00001", "real_asc_frontiers"])
def test_musicnn_port_matches_tensorflow_on_real_music(musicnn: MSDMusicnn, name: str) -> None:
    ref = np.load(REFERENCE / f"MSD_musicnn_{name}.npz")
    with torch.no_grad():
        out = {k: v.numpy() for k, v in musicnn.intermediates(torch.from_numpy(ref["patches"])).items()}
    np.testing.assert_allclose(out["prob"], ref["taggram"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["max_pool"], ref["max_pool"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(out["mean_pool"], ref["mean_pool"], atol=1e-3, rtol=0)
    # musicnn 0.1.0's extractor (BATCH_SIZE 1) appends the FIRST batch's penultimate for every later
    # batch, so only row 0 of the reference embedding is real; the rest repeat it.
    np.testing.assert_allclose(out["penultimate"][0], ref["penultimate"][0], atol=1e-3, rtol=0)
    assert (ref["penultimate"] == ref["penultimate"][0]).all()


def test_musicnn_port_from_audio_matches_the_taggram(musicnn: MSDMusicnn) -> None:
    from training.default_model import MUSICNN_FRONT_END

    ref = np.load(REFERENCE / "MSD_musicnn_sig10s_16k.npz")
    import av

    with av.open(str(REFERENCE / "sig10s_16k.wav")) as c:
        audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)]).astype(np.float32)
    spec = MUSICNN_FRONT_END.spectrogram(audio / (1.0 if np.abs(audio).max() <= 1.0 else 32768.0))
    np.testing.assert_allclose(spec, ref["spec"], atol=2e-3)
    patches = torch.from_numpy(spec[: 3 * 187].reshape(3, 187, 96))
    with torch.no_grad():
        np.testing.assert_allclose(musicnn(patches).numpy(), ref["taggram"], atol=1e-4, rtol=0)


def test_vgg_port_matches_tensorflow(wheel: Path) -> None:
    vgg = MSDVgg.pretrained(wheel)
    ref = np.load(REFERENCE / "MSD_vgg_graph.npz")
    with torch.no_grad():
        np.testing.assert_allclose(vgg(torch.from_numpy(ref["inp"])).numpy(), ref["prob"], atol=1e-4, rtol=0)
        pool5 = vgg.pool5(torch.from_numpy(ref["inp"])).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(pool5, ref["pool5"], atol=1e-3, rtol=0)
    sig = np.load(REFERENCE / "MSD_vgg_sig10s_16k.npz")
    with torch.no_grad():
        np.testing.assert_allclose(vgg(torch.from_numpy(sig["batch"])).numpy(), sig["taggram"], atol=1e-4, rtol=0)


def test_onnx_export_equals_pytorch(musicnn: MSDMusicnn, tmp_path: Path) -> None:
    import onnxruntime as ort

    from tagger.model import ModelManifest, OutputSpec
    from training.default_model import MUSICNN_FRONT_END, VIEWS
    from training.export import export_model
    from training.musicnn import MSD_TAGS

    manifest = ModelManifest("msd-musicnn", "test", "mel", {"musicnn": MUSICNN_FRONT_END}, VIEWS,
                             (OutputSpec("tags", "tags", "sigmoid", MSD_TAGS),))
    path = export_model(musicnn, manifest, tmp_path / "msd.onnx", tolerance=1e-5)
    assert not [p for p in tmp_path.iterdir() if p != path]  # one file, no external weights
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = np.load(REFERENCE / "MSD_musicnn_graph.npz")
    for frames in (ref["inp"], np.random.default_rng(0).normal(size=(2, 500, 96)).astype(np.float32)):
        with torch.no_grad():
            expected = musicnn(torch.from_numpy(frames)).numpy()
        (got,) = session.run(None, {"mel": frames})
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_backbone_receptive_field_is_the_declared_context(musicnn: MSDMusicnn) -> None:
    from training.musicnn import MusicnnBackbone

    x = torch.randn(1, 600, 96, generator=torch.Generator().manual_seed(0))
    poked = x.clone()
    poked[0, 300] += 5.0
    with torch.no_grad():
        changed = (musicnn.backbone(x) - musicnn.backbone(poked)).abs().amax(dim=1)[0].numpy() > 0
    frames = np.where(changed)[0]
    before, after = MusicnnBackbone.CONTEXT
    # Output frame t depends on inputs t - before .. t + after: input 300 reaches outputs 300 - after .. 300 + before.
    assert (frames.min(), frames.max()) == (300 - after, 300 + before)


def test_stage_receptive_fields_are_the_declared_contexts(musicnn: MSDMusicnn) -> None:
    from training.musicnn import MusicnnBackbone

    x = torch.randn(1, 400, 96, generator=torch.Generator().manual_seed(1))
    poked = x.clone()
    poked[0, 200] += 5.0
    with torch.no_grad():
        features, timbral, temporal = musicnn.backbone.features_and_stages(x)
        _, timbral_poked, temporal_poked = musicnn.backbone.features_and_stages(poked)
        np.testing.assert_array_equal(features.numpy(), musicnn.backbone(x).numpy())
    for got, poked_got, (before, after) in ((timbral, timbral_poked, MusicnnBackbone.TIMBRAL_CONTEXT),
                                            (temporal, temporal_poked, MusicnnBackbone.TEMPORAL_CONTEXT)):
        frames = np.where((got - poked_got).abs().amax(dim=1)[0].numpy() > 0)[0]
        assert (frames.min(), frames.max()) == (200 - after, 200 + before)
    # The mid-end's own reach, added to the temporal stage's, is the whole backbone's.
    assert tuple(np.add(MusicnnBackbone.TEMPORAL_CONTEXT, MusicnnBackbone.MID_CONTEXT)) == MusicnnBackbone.CONTEXT
