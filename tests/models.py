"""Tiny real models for tests, built in PyTorch and exported through training.export."""

from __future__ import annotations

from pathlib import Path

import torch

from tagger.frontend import FrontEndConfig
from tagger.model import ModelManifest, OutputSpec, ViewSpec

FRONT_END = FrontEndConfig(
    sample_rate=16000, n_fft=512, hop_length=256, win_length=512, window="hann", center=True, n_mels=48,
    fmin=0.0, fmax=8000.0, mel_scale="slaney", mel_norm="slaney", power=2.0, log="log10_1p",
    log_multiplier=10000.0,
)
GENRES = ("low", "mid", "high")
TAGS = ("bright", "dark", "busy", "calm")


def manifest(genres=GENRES, tags=TAGS, name: str = "tiny-test", version: str = "0.0.1") -> ModelManifest:
    return ModelManifest(
        name=name, version=version, input="mel", front_ends={"mel16k": FRONT_END},
        views=(ViewSpec("2.56s", "mel16k", 160, 80), ViewSpec("5.12s", "mel16k", 320, 160)),
        outputs=(OutputSpec("genre", "genre", "softmax", tuple(genres), "Genre"),
                 OutputSpec("tags", "tags", "sigmoid", tuple(tags), "Tags")),
        description="A tiny untrained-but-deterministic network for tests.", licence="MIT",
    )


class SpectralCentroidNet(torch.nn.Module):
    """Scores low/mid/high from where the energy sits on the mel axis; deterministic weights."""

    def __init__(self, n_mels: int = 48, n_genres: int = 3, n_tags: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(n_mels, 8, kernel_size=3, padding=1)
        self.genre = torch.nn.Linear(n_mels + 8, n_genres)
        self.tags = torch.nn.Linear(n_mels + 8, n_tags)
        torch.manual_seed(1234)
        for p in self.parameters():
            torch.nn.init.normal_(p, std=0.1)
        with torch.no_grad():
            position = torch.linspace(-1.0, 1.0, n_mels)
            weights = torch.zeros(n_genres, n_mels + 8)
            for g in range(n_genres):
                centre = -1.0 + 2.0 * g / max(1, n_genres - 1)
                weights[g, :n_mels] = 4.0 * (1.0 - (position - centre).abs())
            self.genre.weight.copy_(weights)
            self.genre.bias.zero_()

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        profile = mel.mean(dim=1)
        profile = profile / (profile.sum(dim=1, keepdim=True).abs() + 1e-3)
        texture = torch.relu(self.conv(mel.transpose(1, 2))).mean(dim=2)
        features = torch.cat([profile * 10.0, texture], dim=1)
        return torch.softmax(self.genre(features), dim=-1), torch.sigmoid(self.tags(features))


def export_tiny(path: Path, genres=GENRES, tags=TAGS, name: str = "tiny-test", version: str = "0.0.1") -> Path:
    from training.export import export_model

    net = SpectralCentroidNet(FRONT_END.n_mels, len(genres), len(tags))
    return export_model(net, manifest(genres, tags, name, version), path)


class LoudnessMusicNet(torch.nn.Module):
    """:class:`SpectralCentroidNet` plus a music detector that calls quiet input "no music": the
    probability of music rises with the slice's mean log-mel level (silence 0 → about 0.05)."""

    def __init__(self, n_mels: int = 48, n_genres: int = 3, n_tags: int = 4) -> None:
        super().__init__()
        self.net = SpectralCentroidNet(n_mels, n_genres, n_tags)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        genre, tags = self.net(mel)
        level = mel.mean(dim=(1, 2)).unsqueeze(1)
        return genre, tags, torch.sigmoid(6.0 * (level - 0.5))


def export_tiny_music(path: Path, name: str = "tiny-music") -> Path:
    """A tiny model with a music detector (``music`` output, threshold 0.5)."""
    from dataclasses import replace

    from tagger.model import MusicDetector
    from training.export import export_model

    base = manifest(name=name)
    spec = replace(base, outputs=(*base.outputs, OutputSpec("music", "music", "sigmoid", ("music",), "Music")),
                   music=MusicDetector("music", 0.5))
    return export_model(LoudnessMusicNet(FRONT_END.n_mels), spec, path)
