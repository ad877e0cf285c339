"""Each augmentation does what it says, measured on signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.augment import AudioAugment, gaussian_noise, mixup, pitch_shift, spec_augment, time_stretch, zoom_out

RATE = 16000


def tone(freq: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray) -> float:
    """Peak of a zero-padded, windowed spectrum of the middle second, parabolically interpolated."""
    middle = audio[len(audio) // 2 - RATE // 2: len(audio) // 2 + RATE // 2]
    n = 8 * len(middle)
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle)), n))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1: k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / n


def test_pitch_shift_by_3_semitones_moves_440_to_523_hz() -> None:
    shifted = pitch_shift(tone(440.0), RATE, 3.0)
    assert dominant_frequency(tone(440.0)) == pytest.approx(440.0, abs=0.5)
    assert dominant_frequency(shifted) == pytest.approx(440.0 * 2 ** (3 / 12), abs=2.0)  # 523.25 Hz
    assert len(shifted) == len(tone(440.0))  # tempo and length kept


def test_time_stretch_by_1_25_keeps_the_pitch_and_shortens_to_0_8() -> None:
    audio = tone(440.0, 4.0)
    stretched = time_stretch(audio, RATE, 1.25)
    assert len(stretched) / len(audio) == pytest.approx(0.8, rel=0.01)
    assert dominant_frequency(stretched) == pytest.approx(440.0, abs=2.0)


def test_gaussian_noise_has_the_asked_sigma_and_is_seeded() -> None:
    silence = np.zeros(RATE * 4, dtype=np.float32)
    noisy = gaussian_noise(silence, np.random.default_rng(1), sigma=0.01)
    assert noisy.std() == pytest.approx(0.01, rel=0.02)
    np.testing.assert_array_equal(noisy, gaussian_noise(silence, np.random.default_rng(1), sigma=0.01))
    drawn = gaussian_noise(silence, np.random.default_rng(2)).std()
    assert 0.001 * 0.95 < drawn < 0.015 * 1.05


def test_mixup_mixes_inputs_and_soft_labels_alike() -> None:
    rng = np.random.default_rng(3)
    x = np.arange(12, dtype=float).reshape(4, 3)
    y = np.eye(4)
    mixed_x, mixed_y, lam = mixup(x, y, rng, alpha=0.4)
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0)
    for i in range(4):  # each row is λ·own + (1-λ)·partner, in inputs and labels alike
        partner = int(np.argmax(mixed_y[i] - lam * y[i])) if lam < 1 else i
        np.testing.assert_allclose(mixed_x[i], lam * x[i] + (1 - lam) * x[partner])


def test_spec_augment_masks_bounded_bands_and_keeps_the_rest() -> None:
    spec = np.random.default_rng(4).normal(size=(160, 96)).astype(np.float32) + 5.0
    out = spec_augment(spec, np.random.default_rng(5), time_masks=1, max_time=20, freq_masks=1, max_freq=12, fill=0.0)
    masked_frames = np.where((out == 0).all(axis=1))[0]
    masked_bins = np.where((out == 0).all(axis=0))[0]
    assert len(masked_frames) <= 20 and len(masked_bins) <= 12
    assert (np.diff(masked_frames) == 1).all() and (np.diff(masked_bins) == 1).all()
    keep = np.ones_like(spec, dtype=bool)
    keep[masked_frames] = False
    keep[:, masked_bins] = False
    np.testing.assert_array_equal(out[keep], spec[keep])
    assert (out == 0).sum() > 0


def test_zoom_out_halves_the_frame_rate() -> None:
    spec = np.arange(20, dtype=float).reshape(10, 2)
    z = zoom_out(spec)
    assert z.shape == (5, 2)
    np.testing.assert_allclose(z[0], (spec[0] + spec[1]) / 2)


def test_random_audio_augment_is_reproducible() -> None:
    audio = tone(300.0)
    aug = AudioAugment(noise_p=1.0, pitch_p=1.0, stretch_p=1.0)
    a = aug(audio, RATE, np.random.default_rng(7))
    b = aug(audio, RATE, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert 0.75 * len(audio) <= len(a) <= 1.3 * len(audio)
