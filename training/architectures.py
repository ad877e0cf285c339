"""The research's architectures as small configurable PyTorch modules, with the front end each expects.

Every network maps log-mel slices [batch, frames, n_mels] (what the product's runtime feeds) to
class logits [batch, classes]; :func:`build` returns it with an :class:`ArchSpec` that says which
front end and window it was designed for. Widths default small enough to train on a 2-core CPU;
each is a parameter.

- ``meza``: Meza & Nalianya 2018, 128×128 slices at 50 frames/s (2.56 s), zoomed out at 25 frames/s
  (5.12 s); 5 conv layers (kernel 7 four times, then 5), batch norm, average pooling, ReLU, dropout
  0.6 in the dense layers; trained with weight decay 5e-5 and learning rate 1e-4.
- ``meza3``: their 3-layer baseline CNN.
- ``choi_fcn``: Choi et al. 2016 fully convolutional CNN: 5 conv layers (3×3), max pools
  (2×4)-(2×4)-(2×4)-(3×5)-(4×4) (mel × time; time pools are capped at what a short slice has).
- ``choi_crnn``: Choi et al. 2017 CRNN: 4 conv blocks, then a 2-layer GRU summarising time.
- ``mfcc_cnn`` / ``mfcc_lstm``: 20 MFCCs (22050 Hz, n_fft 2048, hop 512; the DCT-II of the dB
  log-mel runs inside the network, so the runtime's log-mel front end feeds it).
- ``cheng``: Cheng et al.'s 5-layer CNN baseline, with their frequency positional encoding as an
  option (``freq_encoding=True``: a channel of sinusoidal mel-band positions added to the input).
- ``musicnn_transfer``: a head on the MSD-pretrained musicnn backbone (:mod:`training.musicnn`),
  frozen (feature extraction) or fine-tuned from a chosen layer up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from tagger.frontend import FrontEndConfig


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture expects.

    Attributes:
        name: the registry name.
        front_end: its log-mel front end (the 2.56 s view's).
        window_frames: slice length in frames (2.56 s at the front end's frame rate).
        zoom_out: also a 5.12 s view: the same number of frames at half the frame rate (hop doubled).
        dynamic_frames: the network runs on any slice length (global pooling over time).
        lr, weight_decay: the optimiser settings the paper used (AdamW).
        citation: where it comes from.
    """

    name: str
    front_end: FrontEndConfig
    window_frames: int
    zoom_out: bool = True
    dynamic_frames: bool = False
    lr: float = 1e-3
    weight_decay: float = 1e-4
    citation: str = ""
    options: dict = field(default_factory=dict)

    @property
    def zoomed_front_end(self) -> FrontEndConfig:
        """The 5.12 s view's front end: the hop doubled (half the frames per second)."""
        fe = self.front_end
        return replace(fe, hop_length=2 * fe.hop_length)


def _db_front_end(sample_rate: int, n_fft: int, hop: int, n_mels: int) -> FrontEndConfig:
    return FrontEndConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann",
                          center=True, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2, mel_scale="slaney",
                          mel_norm="slaney", power=2.0, log="db", log_floor=1e-10)


MEZA_FRONT_END = _db_front_end(22050, 2048, 441, 128)  # 50 frames/s, 128 bands: 128 frames = 2.56 s
CHOI_FRONT_END = _db_front_end(12000, 512, 256, 96)  # Choi et al.: 12 kHz, 96 bands, hop 256
MFCC_FRONT_END = _db_front_end(22050, 2048, 512, 128)  # the MFCC study: 22050 Hz, n_fft 2048, hop 512


def seconds_to_frames(fe: FrontEndConfig, seconds: float) -> int:
    return round(seconds * fe.sample_rate / fe.hop_length)


class InputNorm(nn.Module):
    """Batch norm over the whole input (one channel): dB values to roughly unit scale."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, T, M] → [B, 1, M, T] (mel as height, time as width), normalised."""
        return self.bn(mel.transpose(1, 2).unsqueeze(1))


class MezaCNN(nn.Module):
    """Meza & Nalianya's slice CNN: conv → BN → ReLU → 2×2 average pool, per layer; dense with dropout.

    Args:
        n_classes: output classes.
        widths: filters per conv layer (their number sets the depth).
        kernels: square kernel size per layer (the paper: 7, 7, 7, 7, 5).
        dense: units of the hidden dense layer.
        dropout: dropout before each dense layer (the paper: 0.6).
    """

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128, 128),
                 kernels: tuple[int, ...] = (7, 7, 7, 7, 5), dense: int = 128, dropout: float = 0.6) -> None:
        super().__init__()
        if len(widths) != len(kernels):
            raise ValueError("widths and kernels need one entry per conv layer")
        self.norm = InputNorm()
        layers: list[nn.Module] = []
        channels = 1
        for width, k in zip(widths, kernels, strict=True):
            layers += [nn.Conv2d(channels, width, k, padding=k // 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.AvgPool2d(2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, dense), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(dense, n_classes))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.norm(mel))
        return self.head(x.mean(dim=(2, 3), keepdim=True))


class Meza3Layer(MezaCNN):
    """Meza & Nalianya's 3-layer baseline CNN (3×3 kernels)."""

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (16, 32, 64), dense: int = 64,
                 dropout: float = 0.5) -> None:
        super().__init__(n_classes, widths, (3,) * len(widths), dense, dropout)


def _capped_pool(x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
    # Choi's time pools assume 29 s inputs; a 2.56 s slice runs out of frames, so cap at what is left.
    # The cap is computed from static shapes (the slice length is fixed at export).
    kernel = (min(pool[0], x.shape[2]), min(pool[1], x.shape[3]))
    return F.max_pool2d(x, kernel, ceil_mode=True)


class ChoiFCN(nn.Module):
    """Choi, Fazekas & Sandler 2016, FCN: 5 × (3×3 conv → BN → ReLU → max pool), then a dense layer."""

    POOLS = ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4))

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (32, 48, 64, 96, 128), dropout: float = 0.3) -> None:
        super().__init__()
        self.norm = InputNorm()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        channels = 1
        for width in widths:
            self.convs.append(nn.Conv2d(channels, width, 3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(width))
            channels = width
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(channels, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.norm(mel)
        for conv, bn, pool in zip(self.convs, self.bns, self.POOLS, strict=False):
            x = _capped_pool(F.relu(bn(conv(x))), pool)
        return self.out(self.dropout(x.amax(dim=(2, 3))))


class ChoiCRNN(nn.Module):
    """Choi et al. 2017, CRNN: 4 conv blocks shrink the mel axis, a 2-layer GRU summarises time."""

    def __init__(self, n_classes: int, widths: tuple[int, ...] = (32, 48, 64, 64), gru: int = 64,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.norm = InputNorm()
        pools = ((2, 2), (3, 2), (4, 2), (4, 1))
        layers: list[nn.Module] = []
        channels = 1
        for width, pool in zip(widths, pools, strict=True):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ELU(),
                       nn.MaxPool2d(pool), nn.Dropout(0.1)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.gru = nn.GRU(channels, gru, num_layers=2, batch_first=True, dropout=dropout)
        self.out = nn.Linear(gru, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.norm(mel))  # [B, C, M', T']
        x = x.amax(dim=2).transpose(1, 2)  # [B, T', C]
        _, hidden = self.gru(x)
        return self.out(hidden[-1])


def dct_matrix(n_mfcc: int, n_mels: int) -> torch.Tensor:
    """Orthonormal DCT-II [n_mfcc, n_mels] (what librosa's mfcc applies to the dB mel spectrogram)."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class MFCC(nn.Module):
    """dB log-mel [B, T, M] → MFCCs [B, T, n_mfcc], standardised per coefficient by a batch norm."""

    def __init__(self, n_mels: int, n_mfcc: int = 20) -> None:
        super().__init__()
        self.register_buffer("dct", dct_matrix(n_mfcc, n_mels))
        self.norm = nn.BatchNorm1d(n_mfcc)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.norm((mel @ self.dct.T).transpose(1, 2)).transpose(1, 2)


class MFCCCNN(nn.Module):
    """A CNN on 20 MFCCs (1-D convolutions over time, coefficients as channels), global pooling."""

    def __init__(self, n_classes: int, n_mels: int = 128, n_mfcc: int = 20, widths: tuple[int, ...] = (64, 64, 128),
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.mfcc = MFCC(n_mels, n_mfcc)
        layers: list[nn.Module] = []
        channels = n_mfcc
        for width in widths:
            layers += [nn.Conv1d(channels, width, 5, padding=2, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                       nn.MaxPool1d(2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels, n_classes))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.mfcc(mel).transpose(1, 2))
        return self.out(torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1))


class MFCCLSTM(nn.Module):
    """A 2-layer LSTM on 20 MFCCs; the last hidden state classifies."""

    def __init__(self, n_classes: int, n_mels: int = 128, n_mfcc: int = 20, hidden: int = 64,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.mfcc = MFCC(n_mels, n_mfcc)
        self.lstm = nn.LSTM(n_mfcc, hidden, num_layers=2, batch_first=True, dropout=dropout)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.mfcc(mel))
        return self.out(hidden[-1])


def frequency_encoding(n_mels: int, channels: int = 1) -> torch.Tensor:
    """Sinusoidal encodings of the mel-band index [channels, n_mels, 1] (broadcast over time)."""
    position = torch.arange(n_mels, dtype=torch.float32)
    rows = [torch.sin(position * math.pi * (c + 1) / n_mels) for c in range(channels)]
    return torch.stack(rows)[:, :, None]


class ChengCNN(nn.Module):
    """Cheng et al.'s 5-layer CNN (3×3 conv → BN → ReLU → 2×2 max pool), global pooling, dense.

    Args:
        freq_encoding: add their frequency positional encoding: ``encoding_channels`` sinusoids of the
            mel-band index, concatenated to the input as extra channels, so convolutions (shift-invariant
            along frequency) know where in the spectrum they are.
    """

    def __init__(self, n_classes: int, n_mels: int = 128, widths: tuple[int, ...] = (16, 32, 64, 64, 128),
                 freq_encoding: bool = False, encoding_channels: int = 4, dropout: float = 0.3) -> None:
        super().__init__()
        self.norm = InputNorm()
        self.freq_encoding = freq_encoding
        if freq_encoding:
            self.register_buffer("encoding", frequency_encoding(n_mels, encoding_channels))
        layers: list[nn.Module] = []
        channels = 1 + (encoding_channels if freq_encoding else 0)
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, n_classes))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.norm(mel)
        if self.freq_encoding:
            x = torch.cat([x, self.encoding.expand(x.shape[0], -1, -1, x.shape[3])], dim=1)
        return self.out(self.convs(x).amax(dim=(2, 3)))


class MusicnnTransfer(nn.Module):
    """A head on the MSD-pretrained musicnn backbone: log-mel [B, T, 96] → pooled features → head → logits.

    Args:
        head: "linear" (a logistic regression) or "mlp" (one hidden layer of 256, dropout 0.5).
        finetune_from: None keeps the backbone frozen (feature extraction); "backend" also trains the
            pretrained dense layer; "mid" the mid-end convolutions as well; "front" everything.
        pretrained: load the musicnn weights (False only for tests that need no download).
    """

    LAYERS = ("front", "mid", "backend")

    def __init__(self, n_classes: int, head: str = "mlp", finetune_from: str | None = None,
                 pretrained: bool = True) -> None:
        super().__init__()
        from training.musicnn import MSDMusicnn, MusicnnBackbone

        net = MSDMusicnn.pretrained() if pretrained else MSDMusicnn()
        self.backbone = net.backbone
        self.pool_bn = net.backend.pool_bn
        width = 2 * MusicnnBackbone.FEATURES
        if head == "linear":
            self.head: nn.Module = nn.Linear(width, n_classes)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(width, 256), nn.ReLU(), nn.Dropout(0.5),
                                      nn.Linear(256, n_classes))
        else:
            raise ValueError(f"head {head!r} is not 'linear' or 'mlp'")
        if finetune_from not in (None, *self.LAYERS):
            raise ValueError(f"finetune_from {finetune_from!r} is not None or one of {self.LAYERS}")
        self.finetune_from = finetune_from
        trainable = {None: (), "backend": ("pool_bn",), "mid": ("pool_bn", "backbone.mid"),
                     "front": ("pool_bn", "backbone")}[finetune_from]
        for name, p in self.named_parameters():
            if not name.startswith("head"):
                p.requires_grad = any(name.startswith(prefix) for prefix in trainable)

    def train(self, mode: bool = True) -> MusicnnTransfer:
        super().train(mode)
        if self.finetune_from is None:  # frozen: keep the pretrained batch-norm statistics
            self.backbone.eval()
            self.pool_bn.eval()
        return self

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """Frame features [B, 753, T]."""
        return self.backbone(mel)

    def pooled_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the pooled (max, mean interleaved) features [B, 1506]."""
        return self.head(self.pool_bn(pooled))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        from training.musicnn import interleaved_pool

        return self.pooled_logits(interleaved_pool(self.features(mel)))


@dataclass(frozen=True)
class Architecture:
    spec: ArchSpec
    make: Callable[..., nn.Module]


def _musicnn_front_end() -> FrontEndConfig:
    from training.musicnn import MUSICNN_FRONT_END

    return MUSICNN_FRONT_END


ARCHITECTURES: dict[str, Callable[[], Architecture]] = {
    "meza": lambda: Architecture(ArchSpec("meza", MEZA_FRONT_END, 128, lr=1e-4, weight_decay=5e-5,
                                          citation="Meza & Nalianya 2018"), MezaCNN),
    "meza3": lambda: Architecture(ArchSpec("meza3", MEZA_FRONT_END, 128, lr=1e-3, weight_decay=5e-5,
                                           citation="Meza & Nalianya 2018 (baseline)"), Meza3Layer),
    "choi_fcn": lambda: Architecture(ArchSpec("choi_fcn", CHOI_FRONT_END, seconds_to_frames(CHOI_FRONT_END, 2.56),
                                              citation="Choi, Fazekas & Sandler 2016 (FCN-5)"), ChoiFCN),
    "choi_crnn": lambda: Architecture(ArchSpec("choi_crnn", CHOI_FRONT_END, seconds_to_frames(CHOI_FRONT_END, 2.56),
                                               citation="Choi, Fazekas, Sandler & Cho 2017 (CRNN)"), ChoiCRNN),
    "mfcc_cnn": lambda: Architecture(ArchSpec("mfcc_cnn", MFCC_FRONT_END, seconds_to_frames(MFCC_FRONT_END, 2.56),
                                              citation="CNN on 20 MFCCs"),
                                     lambda n, **o: MFCCCNN(n, MFCC_FRONT_END.n_mels, **o)),
    "mfcc_lstm": lambda: Architecture(ArchSpec("mfcc_lstm", MFCC_FRONT_END, seconds_to_frames(MFCC_FRONT_END, 2.56),
                                               citation="LSTM on 20 MFCCs"),
                                      lambda n, **o: MFCCLSTM(n, MFCC_FRONT_END.n_mels, **o)),
    "cheng": lambda: Architecture(ArchSpec("cheng", MFCC_FRONT_END, seconds_to_frames(MFCC_FRONT_END, 2.56),
                                           citation="Cheng et al. (5-layer CNN baseline)"),
                                  lambda n, **o: ChengCNN(n, MFCC_FRONT_END.n_mels, **o)),
    "cheng_freq": lambda: Architecture(ArchSpec("cheng_freq", MFCC_FRONT_END, seconds_to_frames(MFCC_FRONT_END, 2.56),
                                                citation="Cheng et al. + frequency positional encoding"),
                                       lambda n, **o: ChengCNN(n, MFCC_FRONT_END.n_mels,
                                                               **{"freq_encoding": True, **o})),
    "musicnn_transfer": lambda: Architecture(
        ArchSpec("musicnn_transfer", _musicnn_front_end(), 160, zoom_out=False, dynamic_frames=True, lr=1e-3,
                 weight_decay=1e-3, citation="Pons & Serra 2019 (MSD musicnn), frozen; MLP head"),
        MusicnnTransfer),
}


def build(name: str, n_classes: int, **options) -> tuple[nn.Module, ArchSpec]:
    """A fresh network (seed torch first for reproducible weights) and its spec."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]()
    try:
        net = arch.make(n_classes, **options)
    except TypeError as exc:  # an option the module does not take
        raise ValueError(f"architecture {name!r}: {exc}") from None
    return net, replace(arch.spec, options=dict(options))
