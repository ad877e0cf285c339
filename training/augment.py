"""Seeded, on-the-fly augmentations from the research the product stands on.

Audio (mono float32 at ``sample_rate`` Hz): Gaussian noise, pitch shift (tempo kept) and time stretch
(pitch kept), the last two with Spotify's pedalboard (Rubber Band). Spectrograms ([frames, mels]):
SpecAugment time and frequency masks, and the "zoomed-out" view of Meza & Nalianya (a window twice as
long at half the frame rate). Batches: mixup with soft labels. Every function takes its random
generator, so a seed reproduces a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_SIGMA_RANGE = (0.001, 0.015)
PITCH_RANGE_SEMITONES = (-4.0, 4.0)


def gaussian_noise(audio: np.ndarray, rng: np.random.Generator, sigma: float | None = None) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` (drawn from 0.001–0.015 if None)."""
    if sigma is None:
        sigma = float(rng.uniform(*NOISE_SIGMA_RANGE))
    return (audio + rng.normal(0.0, sigma, audio.shape)).astype(np.float32)


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift the pitch by ``semitones`` (±4 in the research), keeping the tempo and the length."""
    from pedalboard import PitchShift

    return PitchShift(semitones=semitones)(audio[None, :].astype(np.float32), sample_rate)[0]


def time_stretch(audio: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (the clip becomes 1/factor as long), keeping the pitch."""
    from pedalboard import time_stretch as stretch

    return stretch(audio[None, :].astype(np.float32), sample_rate, stretch_factor=factor)[0]


def spec_augment(spec: np.ndarray, rng: np.random.Generator, time_masks: int = 2, max_time: int = 20,
                 freq_masks: int = 2, max_freq: int = 12, fill: float | None = None) -> np.ndarray:
    """SpecAugment: ``time_masks`` bands of up to ``max_time`` frames and ``freq_masks`` bands of up to
    ``max_freq`` mel bins set to ``fill`` (the spectrogram's mean if None). Returns a copy."""
    out = spec.copy()
    value = float(spec.mean()) if fill is None else fill
    frames, mels = spec.shape
    for _ in range(time_masks):
        width = int(rng.integers(0, min(max_time, frames) + 1))
        start = int(rng.integers(0, frames - width + 1))
        out[start:start + width] = value
    for _ in range(freq_masks):
        width = int(rng.integers(0, min(max_freq, mels) + 1))
        start = int(rng.integers(0, mels - width + 1))
        out[:, start:start + width] = value
    return out


def zoom_out(spec: np.ndarray) -> np.ndarray:
    """The "zoomed-out" slice: half the frame rate by averaging frame pairs, so a window of 2·N frames
    (5.12 s at 50 frames/s) becomes N columns (25 frames/s), as Meza & Nalianya's augmentation."""
    frames = spec.shape[0] - spec.shape[0] % 2
    return spec[:frames].reshape(frames // 2, 2, spec.shape[1]).mean(axis=1)


def mixup(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, alpha: float = 0.2
          ) -> tuple[np.ndarray, np.ndarray, float]:
    """Mix a batch with a shuffled copy of itself: λ·x + (1-λ)·x[perm], likewise the one-hot or soft
    labels ``y``; λ ~ Beta(alpha, alpha). Returns (x, y, λ)."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam


@dataclass(frozen=True)
class AudioAugment:
    """A random audio augmentation per call: each effect with its probability, parameters drawn from
    the research's ranges. ``seed`` makes the sequence reproducible."""

    noise_p: float = 0.5
    pitch_p: float = 0.3
    stretch_p: float = 0.3
    pitch_range: tuple[float, float] = PITCH_RANGE_SEMITONES
    stretch_range: tuple[float, float] = (0.8, 1.25)

    def __call__(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.pitch_p:
            audio = pitch_shift(audio, sample_rate, float(rng.uniform(*self.pitch_range)))
        if rng.random() < self.stretch_p:
            audio = time_stretch(audio, sample_rate, float(rng.uniform(*self.stretch_range)))
        if rng.random() < self.noise_p:
            audio = gaussian_noise(audio, rng)
        return audio
