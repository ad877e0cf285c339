"""PyTorch ports of musicnn's MSD_musicnn and MSD_vgg (Pons & Serra, 2019), loading the original weights.

The weights come from the TensorFlow checkpoints inside the musicnn 0.1.0 wheel (ISC licence,
Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019, code by Jordi Pons), read by
:mod:`training.tf_checkpoint`. Tensors are [batch, frames, 96 mel bands] log-mel patches as
musicnn's front end makes them (16 kHz, n_fft 512, hop 256, log10(10000·x + 1)).

Layouts: TF conv kernels [kh, kw, in, out] → torch [out, in, kh, kw]; dense kernels transpose;
every batch norm uses TF's epsilon 1e-3.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagger.frontend import FrontEndConfig
from tagger.model import FrameStage, ViewSpec
from training.tf_checkpoint import Checkpoint

TF_BN_EPS = 1e-3
MUSICNN_WHEEL = "musicnn==0.1.0"

MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
    "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
    "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s",
    "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
    "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
)
# The MSD tags that name genres or styles (decades, moods, voices and instruments left out).
MSD_GENRE_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz", "metal",
    "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk", "blues", "hard rock",
    "ambient", "experimental", "Hip-Hop", "country", "easy listening", "funk", "electro", "heavy metal",
    "Progressive rock", "rnb", "indie pop", "House",
)


def fetch_musicnn_wheel(cache_dir: str | Path | None = None) -> Path:
    """Path of the musicnn 0.1.0 wheel, downloaded with ``pip download --no-deps`` if not cached."""
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "genre-tagger"
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("musicnn-0.1.0-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", tmp, MUSICNN_WHEEL], check=True)
        wheel = next(Path(tmp).glob("musicnn-0.1.0-*.whl"))
        target = cache / wheel.name
        wheel.replace(target)
    return target


def load_checkpoint(name: str = "MSD_musicnn", wheel: str | Path | None = None) -> Checkpoint:
    """A musicnn checkpoint (``MSD_musicnn``, ``MSD_vgg``, ``MTT_musicnn``, ``MTT_vgg``) from the wheel."""
    return Checkpoint.from_zip(wheel or fetch_musicnn_wheel(), f"musicnn/{name}/")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=TF_BN_EPS)


def _bn1d(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=TF_BN_EPS)


def _load_bn(bn: nn.Module, ckpt: Checkpoint, name: str) -> None:
    bn.weight.data = torch.from_numpy(ckpt.tensor(f"{name}/gamma").copy())
    bn.bias.data = torch.from_numpy(ckpt.tensor(f"{name}/beta").copy())
    bn.running_mean.data = torch.from_numpy(ckpt.tensor(f"{name}/moving_mean").copy())
    bn.running_var.data = torch.from_numpy(ckpt.tensor(f"{name}/moving_variance").copy())


def _load_conv2d(conv: nn.Conv2d, ckpt: Checkpoint, name: str) -> None:
    conv.weight.data = torch.from_numpy(ckpt.tensor(f"{name}/kernel").transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(ckpt.tensor(f"{name}/bias").copy())


def _load_conv1d(conv: nn.Conv1d, ckpt: Checkpoint, name: str) -> None:
    kernel = ckpt.tensor(f"{name}/kernel")  # [k, in, 1, out]
    conv.weight.data = torch.from_numpy(kernel[:, :, 0, :].transpose(2, 1, 0).copy())
    conv.bias.data = torch.from_numpy(ckpt.tensor(f"{name}/bias").copy())


def _load_dense(linear: nn.Linear, ckpt: Checkpoint, name: str) -> None:
    linear.weight.data = torch.from_numpy(ckpt.tensor(f"{name}/kernel").T.copy())
    linear.bias.data = torch.from_numpy(ckpt.tensor(f"{name}/bias").copy())


class MusicnnBackbone(nn.Module):
    """MSD_musicnn up to the frame-level features: front end + mid-end, [B, T, 96] → [B, 753, T].

    The net is convolutional in time, so any T ≥ 1 runs; the temporal convolutions use TF 'same'
    padding (even kernels put the extra zero after).
    """

    FEATURES = 753
    N_MELS = 96
    # Receptive field in frames (before, after): the temporal convs reach 63 back and 64 ahead (TF
    # 'same' padding of a 128 kernel), and the three mid-end convs (kernel 7) 3 more each way each.
    CONTEXT = (63 + 9, 64 + 9)
    # The front end's parts and the mid-end on their own (see front_parts).
    TIMBRAL_CONTEXT = (3, 3)  # kernel 7 in time
    TEMPORAL_CONTEXT = (63, 64)  # kernels up to 128, TF 'same' padding
    MID_CONTEXT = (9, 9)  # three kernel-7 convolutions

    def __init__(self) -> None:
        super().__init__()
        self.input_bn = _bn(1)
        self.timbral = nn.ModuleList([nn.Conv2d(1, 204, (7, 38)), nn.Conv2d(1, 204, (7, 67))])
        self.timbral_bn = nn.ModuleList([_bn(204), _bn(204)])
        self.temporal = nn.ModuleList([nn.Conv2d(1, 51, (k, 1)) for k in (128, 64, 32)])
        self.temporal_bn = nn.ModuleList([_bn(51) for _ in range(3)])
        self.mid = nn.ModuleList([nn.Conv1d(561, 64, 7, padding=3), nn.Conv1d(64, 64, 7, padding=3),
                                  nn.Conv1d(64, 64, 7, padding=3)])
        self.mid_bn = nn.ModuleList([_bn1d(64) for _ in range(3)])

    def front(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, T, 96] → the 561 front-end channels [B, 561, T]."""
        return torch.cat(self.front_parts(mel), dim=1)

    def front_parts(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The front end's two parts: the 408 timbral channels [B, 408, T] and the 153 temporal ones.

        Each depends on the log-mel input alone: the timbral convolutions (about 80 % of the
        arithmetic) on ``TIMBRAL_CONTEXT`` frames around each frame, the temporal ones on
        ``TEMPORAL_CONTEXT``; a streaming runtime computes each once per frame as a stage of its own
        (:class:`tagger.model.FrameStage`) and the mid-end from them (``MID_CONTEXT``).
        """
        x = self.input_bn(mel.unsqueeze(1))
        padded = F.pad(x, (0, 0, 3, 3))
        timbral = torch.cat([self._conv_relu_bn_max(conv(padded), bn)
                             for conv, bn in zip(self.timbral, self.timbral_bn, strict=True)], dim=1)
        temporal = []
        for conv, bn in zip(self.temporal, self.temporal_bn, strict=True):
            k = conv.kernel_size[0]
            same = F.pad(x, (0, 0, (k - 1) // 2, k // 2))
            temporal.append(self._conv_relu_bn_max(conv(same), bn))
        return timbral, torch.cat(temporal, dim=1)

    def _conv_relu_bn_max(self, y: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        """max over mel of BN(ReLU(y)), y [B, C, T, M] → [B, C, T].

        In eval mode BN is a per-channel affine map and ReLU is monotonic, so the max over mel is
        BN(ReLU(max y)) where BN's scale is positive and BN(ReLU(min y)) where it is negative: the
        ReLU and BN run on [B, C, T] instead of [B, C, T, M] (a quarter of the exported graph's
        memory, and less time). Training keeps the literal order (batch statistics differ).
        """
        if self.training:
            return bn(F.relu(y)).amax(dim=3)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        extreme = torch.where((scale >= 0)[None, :, None], y.amax(dim=3), y.amin(dim=3))
        return bn(F.relu(extreme).unsqueeze(3)).squeeze(3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features_and_stages(mel)[0]

    def features_and_stages(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame features [B, 753, T], and the timbral [B, 408, T] and temporal [B, 153, T] parts they
        are computed from)."""
        timbral, temporal = self.front_parts(mel)
        front = torch.cat([timbral, temporal], dim=1)
        c1 = self.mid_bn[0](F.relu(self.mid[0](front)))
        r2 = self.mid_bn[1](F.relu(self.mid[1](c1))) + c1
        r3 = self.mid_bn[2](F.relu(self.mid[2](r2))) + r2
        return torch.cat([front, c1, r2, r3], dim=1), timbral, temporal

    def load_tf(self, ckpt: Checkpoint) -> MusicnnBackbone:
        _load_bn(self.input_bn, ckpt, "batch_normalization")
        for i, conv in enumerate([*self.timbral, *self.temporal]):
            _load_conv2d(conv, ckpt, "conv2d" if i == 0 else f"conv2d_{i}")
        for i, bn in enumerate([*self.timbral_bn, *self.temporal_bn]):
            _load_bn(bn, ckpt, f"batch_normalization_{i + 1}")
        for i, conv in enumerate(self.mid):
            _load_conv1d(conv, ckpt, f"conv2d_{i + 5}")
        for i, bn in enumerate(self.mid_bn):
            _load_bn(bn, ckpt, f"batch_normalization_{i + 6}")
        return self


def interleaved_pool(features: torch.Tensor) -> torch.Tensor:
    """Max and mean over time, interleaved [max0, mean0, max1, mean1, …]: [B, C, T] → [B, 2C]."""
    return torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)


class MusicnnBackend(nn.Module):
    """Pooled features [B, 1506] → (penultimate 200-d embedding, 50 tag logits)."""

    def __init__(self, n_tags: int = 50) -> None:
        super().__init__()
        self.pool_bn = _bn1d(2 * MusicnnBackbone.FEATURES)
        self.dense = nn.Linear(2 * MusicnnBackbone.FEATURES, 200)
        self.dense_bn = _bn1d(200)
        self.logits = nn.Linear(200, n_tags)

    def embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedding(pooled)
        return emb, self.logits(emb)

    def load_tf(self, ckpt: Checkpoint) -> MusicnnBackend:
        _load_bn(self.pool_bn, ckpt, "batch_normalization_9")
        _load_dense(self.dense, ckpt, "dense")
        _load_bn(self.dense_bn, ckpt, "batch_normalization_10")
        _load_dense(self.logits, ckpt, "dense_1")
        return self


class MSDMusicnn(nn.Module):
    """The whole MSD_musicnn tagger: [B, T, 96] log-mel → 50 MSD tag probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MusicnnBackbone()
        self.backend = MusicnnBackend()

    @classmethod
    def pretrained(cls, wheel: str | Path | None = None) -> MSDMusicnn:
        ckpt = load_checkpoint("MSD_musicnn", wheel)
        model = cls()
        model.backbone.load_tf(ckpt)
        model.backend.load_tf(ckpt)
        return model.eval()

    def intermediates(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named intermediate tensors, as musicnn's extractor names them (for the reference tests)."""
        feats = self.backbone(mel)
        pooled = interleaved_pool(feats)
        emb, logits = self.backend(pooled)
        return {"features": feats, "pooled": pooled, "penultimate": emb, "logits": logits,
                "prob": torch.sigmoid(logits), "max_pool": feats.amax(dim=2), "mean_pool": feats.mean(dim=2)}

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        _, logits = self.backend(interleaved_pool(self.backbone(mel)))
        return torch.sigmoid(logits)


class MSDVgg(nn.Module):
    """MSD_vgg: five 3×3 conv blocks (128 filters) over 187-frame patches → 50 MSD tag probabilities."""

    POOLS = ((4, 1), (2, 2), (2, 2), (2, 2), (4, 4))
    STRIDES = ((2, 2), (2, 2), (2, 2), (2, 2), (4, 4))

    def __init__(self, filters: int = 128) -> None:
        super().__init__()
        self.input_bn = _bn(1)
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else filters, filters, 3, padding=1) for i in range(5)])
        self.bns = nn.ModuleList([_bn(filters) for _ in range(5)])
        self.dense = nn.Linear(2 * 1 * filters, 50)

    @classmethod
    def pretrained(cls, wheel: str | Path | None = None) -> MSDVgg:
        ckpt = load_checkpoint("MSD_vgg", wheel)
        model = cls()
        _load_bn(model.input_bn, ckpt, "batch_normalization")
        for i, (conv, bn) in enumerate(zip(model.convs, model.bns, strict=True)):
            _load_conv2d(conv, ckpt, f"{i + 1}CNN")
            _load_bn(bn, ckpt, f"batch_normalization_{i + 1}")
        _load_dense(model.dense, ckpt, "dense")
        return model.eval()

    def pool5(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(mel.unsqueeze(1))
        for conv, bn, pool, stride in zip(self.convs, self.bns, self.POOLS, self.STRIDES, strict=True):
            x = F.max_pool2d(bn(F.relu(conv(x))), pool, stride)
        return x  # [B, C, 2, 1]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # TF flattens NHWC: channels vary fastest.
        flat = self.pool5(mel).permute(0, 2, 3, 1).flatten(1)
        return torch.sigmoid(self.dense(flat))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# musicnn's front end, as its training used it (see the reference README): model files carry it.
MUSICNN_FRONT_END = FrontEndConfig(
    sample_rate=16000, n_fft=512, hop_length=256, win_length=512, window="hann", center=True, n_mels=96,
    fmin=0.0, fmax=8000.0, mel_scale="slaney", mel_norm="slaney", power=2.0, log="log10_1p",
    log_multiplier=10000.0, round_float16=True,
)
# The backbone's parts a streaming runtime computes once per frame (see tagger.model.FramePooling).
MUSICNN_STAGES = (FrameStage("timbral_features", MusicnnBackbone.TIMBRAL_CONTEXT),
                  FrameStage("temporal_features", MusicnnBackbone.TEMPORAL_CONTEXT))
# The default model's views: 2.56 s and 5.12 s windows (160 and 320 frames of 16 ms), half-window hops.
MUSICNN_VIEWS = (ViewSpec("2.56s", "musicnn", 160, 80), ViewSpec("5.12s", "musicnn", 320, 160))
