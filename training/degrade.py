"""The audio people really feed a tagger: the degradations the model card reports and training augments with.

Every function takes and returns mono float32 audio at ``sample_rate`` Hz, with the same length, and is
deterministic (noise takes its random generator). :data:`DEGRADATIONS` names the card's set:

- ``noise-20db``: white Gaussian noise 20 dB below the clip's RMS (a noisy line or a hissing tape).
- ``mp3-64k``: MP3 at 64 kbit/s, 44.1 kHz mono, LAME through FFmpeg (a low-bitrate stream).
- ``pitch+1`` / ``pitch-1``: ±1 semitone, tempo kept (a DJ's pitch fader; Rubber Band through pedalboard).
- ``telephone``: 8 kHz sampling and a 300–3400 Hz band-pass (4th-order Butterworth), as a phone line or
  an AM broadcast.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np

from training.augment import pitch_shift

NOISE_SNR_DB = 20.0
MP3_BIT_RATE = 64_000
MP3_SAMPLE_RATE = 44_100
TELEPHONE_RATE = 8_000
TELEPHONE_BAND_HZ = (300.0, 3400.0)


def white_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float = NOISE_SNR_DB) -> np.ndarray:
    """Add white Gaussian noise ``snr_db`` dB below the clip's RMS (silent clips stay silent)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    sigma = rms * 10 ** (-snr_db / 20)
    return (audio + rng.normal(0.0, sigma, audio.shape)).astype(np.float32)


def mp3_roundtrip(audio: np.ndarray, sample_rate: int, bit_rate: int = MP3_BIT_RATE,
                  codec_rate: int = MP3_SAMPLE_RATE) -> np.ndarray:
    """Encode as MP3 (``bit_rate`` bit/s, mono at ``codec_rate`` Hz) and decode back to ``sample_rate``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=codec_rate, layout="mono")
        stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format="s16p", layout="mono", rate=codec_rate)
        frame = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1)[None].astype(np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = sample_rate
        for part in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(part):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buffer.seek(0)
    decoded = []
    with av.open(buffer, "r") as inp:
        back = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in inp.decode(audio=0):
            decoded += [f.to_ndarray().reshape(-1) for f in back.resample(frame)]
        decoded += [f.to_ndarray().reshape(-1) for f in back.resample(None)]
    result = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    # The encoder adds a delay (about 1100 samples at 44.1 kHz) and pads the end: keep the length.
    return _same_length(result, audio.size)


def telephone(audio: np.ndarray, sample_rate: int, rate: int = TELEPHONE_RATE,
              band_hz: tuple[float, float] = TELEPHONE_BAND_HZ) -> np.ndarray:
    """Resample to ``rate`` Hz, band-pass to ``band_hz`` (4th-order Butterworth, zero phase) and back."""
    from math import gcd

    from scipy.signal import butter, resample_poly, sosfiltfilt

    g = gcd(rate, sample_rate)
    low = resample_poly(audio.astype(np.float64), rate // g, sample_rate // g)
    if low.size > 27:  # sosfiltfilt's padding needs a few samples
        low = sosfiltfilt(butter(4, band_hz, btype="bandpass", fs=rate, output="sos"), low)
    return _same_length(resample_poly(low, sample_rate // g, rate // g).astype(np.float32), audio.size)


def _same_length(audio: np.ndarray, n: int) -> np.ndarray:
    return audio[:n] if audio.size >= n else np.pad(audio, (0, n - audio.size))


Degradation = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

DEGRADATIONS: dict[str, Degradation] = {
    "noise-20db": lambda a, sr, rng: white_noise(a, rng),
    "mp3-64k": lambda a, sr, rng: mp3_roundtrip(a, sr),
    "pitch+1": lambda a, sr, rng: pitch_shift(a, sr, 1.0),
    "pitch-1": lambda a, sr, rng: pitch_shift(a, sr, -1.0),
    "telephone": lambda a, sr, rng: telephone(a, sr),
}


def degrade(audio: np.ndarray, name: str, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """``audio`` under the degradation ``name`` (``clean`` returns it unchanged)."""
    if name == "clean":
        return audio
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}: expected clean or one of {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[name](audio, sample_rate, rng)
