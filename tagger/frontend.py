"""Streaming log-mel front end.

Turns a stream of mono sample blocks into log-mel frames, frame by frame exactly as a whole-file
computation would (centred frames with zero padding, as librosa >= 0.10 does). Every parameter comes
from the model file (:class:`FrontEndConfig`); nothing here has a default that a model relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np

MEL_SCALES = ("slaney", "htk")
LOG_KINDS = ("log10_1p", "db", "ln")


@dataclass(frozen=True)
class FrontEndConfig:
    """Parameters of a log-mel front end. All lengths in samples unless said otherwise.

    Attributes:
        sample_rate: audio rate the model expects, in Hz.
        n_fft: FFT length in samples.
        hop_length: samples between frame starts (a frame lasts ``hop_length / sample_rate`` s).
        win_length: analysis window length in samples (<= n_fft, centred in the FFT frame).
        window: ``"hann"`` (periodic, as scipy/librosa use for spectra).
        center: frames centred on ``t * hop_length`` with ``n_fft // 2`` zeros padded at both ends.
        n_mels: number of mel bands.
        fmin, fmax: mel filterbank edges in Hz.
        mel_scale: ``"slaney"`` (linear below 1 kHz, log above) or ``"htk"``.
        mel_norm: ``"slaney"`` (area normalisation) or ``None``.
        power: exponent on the magnitude spectrum (2.0 power, 1.0 magnitude).
        log: compression, ``"log10_1p"`` (log10(log_multiplier * x + 1)), ``"db"``
            (10 log10(max(x, log_floor))) or ``"ln"`` (ln(x + log_floor)).
        log_multiplier: multiplier inside ``log10_1p``.
        log_floor: floor for ``db`` and offset for ``ln``.
        round_float16: round the mel spectrogram to float16 before the log (musicnn's training did).
    """

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    window: str
    center: bool
    n_mels: int
    fmin: float
    fmax: float
    mel_scale: str
    mel_norm: str | None
    power: float
    log: str
    log_multiplier: float = 1.0
    log_floor: float = 1e-10
    round_float16: bool = False

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError("sample_rate, n_fft, hop_length and n_mels must be positive")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length {self.win_length} must be in 1..n_fft ({self.n_fft})")
        if self.window != "hann":
            raise ValueError(f"window {self.window!r} is not supported (only 'hann')")
        if self.mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale {self.mel_scale!r} is not one of {MEL_SCALES}")
        if self.mel_norm not in (None, "slaney"):
            raise ValueError(f"mel_norm {self.mel_norm!r} is not 'slaney' or null")
        if self.log not in LOG_KINDS:
            raise ValueError(f"log {self.log!r} is not one of {LOG_KINDS}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}..{self.fmax}")

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FrontEndConfig:
        if not isinstance(doc, dict):
            raise TypeError("front end must be an object")
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown front-end keys {sorted(unknown)}")
        return cls(**doc)

    @property
    def frame_seconds(self) -> float:
        """Time between frames, in seconds."""
        return self.hop_length / self.sample_rate

    def frames_for_samples(self, n_samples: int) -> int:
        """Number of frames a whole signal of ``n_samples`` yields."""
        if self.center:
            return 1 + n_samples // self.hop_length
        return 0 if n_samples < self.n_fft else 1 + (n_samples - self.n_fft) // self.hop_length

    @cached_property
    def analysis_window(self) -> np.ndarray:
        n = np.arange(self.win_length)
        win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.win_length)
        left = (self.n_fft - self.win_length) // 2
        padded = np.zeros(self.n_fft)
        padded[left:left + self.win_length] = win
        return padded

    @cached_property
    def mel_basis(self) -> np.ndarray:
        """Mel filterbank, float64 [n_fft // 2 + 1, n_mels] (transposed for a right multiply)."""
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax,
                              self.mel_scale, self.mel_norm).T.copy()

    def compress(self, mel: np.ndarray) -> np.ndarray:
        """Apply the log compression to a float64 mel spectrogram; return float32."""
        if self.round_float16:
            mel = round_to_float16(mel)
        if self.log == "log10_1p":
            out = np.log10(self.log_multiplier * mel + 1.0)
        elif self.log == "db":
            out = 10.0 * np.log10(np.maximum(mel, self.log_floor))
        else:
            out = np.log(mel + self.log_floor)
        return out.astype(np.float32)

    def spectrogram(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel of a whole signal in one call: float32 [frames, n_mels]."""
        fe = StreamingFrontEnd(self)
        return np.concatenate([fe.push(samples), fe.flush()])


FLOAT16_MAX = 65504.0


def round_to_float16(values: np.ndarray) -> np.ndarray:
    """float64 ``values`` rounded to the nearest float16 (ties to even, beyond ±65504 to ±inf), as
    ``values.astype(np.float16).astype(np.float64)`` gives, computed in float64: numpy converts to
    float16 one element at a time, which cost more than the FFTs (1.2 of 1.9 s for 11 tracks)."""
    _, exponent = np.frexp(values)
    # float16 keeps 11 significant bits; below its smallest normal (2**-14) the spacing is fixed at 2**-24.
    shift = np.maximum(exponent, -13) - 11
    rounded = np.ldexp(np.rint(np.ldexp(values, -shift)), shift)
    overflow = np.abs(rounded) > FLOAT16_MAX
    if overflow.any():
        rounded[overflow] = np.copysign(np.inf, rounded[overflow])
    return rounded


def hz_to_mel(hz: np.ndarray, scale: str) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = hz / f_sp
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, linear)


def mel_to_hz(mel: np.ndarray, scale: str) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   scale: str, norm: str | None) -> np.ndarray:
    """Triangular mel filters, float64 [n_mels, n_fft // 2 + 1] (the construction librosa uses)."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_edges = np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), n_mels + 2)
    hz_edges = mel_to_hz(mel_edges, scale)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (hz_edges[2:n_mels + 2] - hz_edges[:n_mels]))[:, None]
    return weights


class StreamingFrontEnd:
    """Incremental log-mel: push sample blocks of any size, get the frames they complete.

    The frames equal :meth:`FrontEndConfig.spectrogram` on the concatenated signal, whatever the
    block sizes (each frame is computed from the same samples by the same operations).
    """

    def __init__(self, config: FrontEndConfig) -> None:
        self.config = config
        pad = config.n_fft // 2 if config.center else 0
        self._pending = np.zeros(pad, dtype=np.float32)
        self._samples_in = 0
        self._frames_out = 0
        self._flushed = False

    @property
    def frames_out(self) -> int:
        """Frames emitted so far."""
        return self._frames_out

    @property
    def samples_in(self) -> int:
        """Samples pushed so far."""
        return self._samples_in

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add mono float samples; return the newly complete frames, float32 [n, n_mels]."""
        if self._flushed:
            raise RuntimeError("push() after flush()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._samples_in += samples.size
        self._pending = np.concatenate([self._pending, samples]) if self._pending.size else samples
        return self._emit(limit=None)

    def flush(self) -> np.ndarray:
        """End of signal: pad as a whole-file computation would and return the last frames."""
        if self._flushed:
            return np.zeros((0, self.config.n_mels), dtype=np.float32)
        self._flushed = True
        if self.config.center:
            pad = np.zeros(self.config.n_fft // 2, dtype=np.float32)
            self._pending = np.concatenate([self._pending, pad])
        total = self.config.frames_for_samples(self._samples_in)
        return self._emit(limit=total - self._frames_out)

    def _emit(self, limit: int | None) -> np.ndarray:
        cfg = self.config
        n = 0 if self._pending.size < cfg.n_fft else 1 + (self._pending.size - cfg.n_fft) // cfg.hop_length
        if limit is not None:
            n = max(0, min(n, limit))
        if n == 0:
            return np.zeros((0, cfg.n_mels), dtype=np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(self._pending, cfg.n_fft)
        frames = windows[: n * cfg.hop_length: cfg.hop_length]
        # float64 throughout: BLAS sums a 1-frame batch in another order than a 1000-frame one, and in
        # float32 that difference can flip a float16 rounding; in float64 it cannot in practice.
        spectrum = np.fft.rfft(frames * cfg.analysis_window, axis=1)
        power = spectrum.real**2 + spectrum.imag**2 if cfg.power == 2.0 else np.abs(spectrum) ** cfg.power
        mel = power @ cfg.mel_basis
        self._pending = self._pending[n * cfg.hop_length:].copy()
        self._frames_out += n
        return cfg.compress(mel)
