"""The level of a track, gated so that silence does not count: one measure for training and runtime.

The log-mel front end is not level-invariant, so a model may state a level floor (``level_floor_dbfs`` in
its manifest, :mod:`tagger.model`): a file measured quieter than the floor is analysed raised to it by one
constant gain (:func:`floor_gain_db`), which keeps its dynamics.

The measure, in the spirit of EBU R128's integrated loudness without its K-filter (no weighting, plain
mean power of the samples, full scale 1.0):

- blocks of ``BLOCK_SECONDS`` (0.4 s) every ``STEP_SECONDS`` (0.1 s: 75 % overlap); a tail shorter than a
  block is left out;
- absolute gate: blocks whose mean power is below ``ABSOLUTE_GATE_DBFS`` (-70 dBFS) are dropped (digital
  silence, dither, a silent intro);
- relative gate: of those, blocks more than ``RELATIVE_GATE_DB`` (10 dB) below their mean power are dropped
  (pauses and fades between the music);
- the level is ``10·log10`` of the mean power of the blocks left, in dB relative to full scale (dBFS):
  a full-scale square wave reads 0 dBFS, a full-scale sine -3.01 dBFS, as :func:`service.live.level_dbfs`.

No block passes the absolute gate (digital silence, a file shorter than one block, a -75 dBFS hiss):
the level is None and no gain is ever applied.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_SECONDS = 0.4
STEP_SECONDS = 0.1
ABSOLUTE_GATE_DBFS = -70.0
RELATIVE_GATE_DB = 10.0
STEPS_PER_BLOCK = round(BLOCK_SECONDS / STEP_SECONDS)
DEFAULT_MAX_GAIN_DB = 30.0  # a model's floor without its own cap raises a track by at most this, dB
MAX_MAX_GAIN_DB = 60.0  # a cap above this would raise a -70 dBFS hiss to a normal level


class LevelMeter:
    """Measures the gated level (see the module) of samples pushed block by block, at ``sample_rate`` Hz.

    Memory is one float per 0.1 s of audio (the sub-blocks' mean powers), so a long track costs nothing.
    The result does not depend on how the samples are split into pushes.
    """

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate {sample_rate} must be positive")
        self.sample_rate = sample_rate
        self._step = max(1, round(sample_rate * STEP_SECONDS))
        self._partial_sum = 0.0  # sum of squares of the samples of the sub-block being filled
        self._partial_n = 0
        self._powers: list[float] = []  # mean power of each complete 0.1 s sub-block

    def push(self, samples: np.ndarray) -> None:
        """Add mono float samples (full scale 1.0)."""
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        i = 0
        if self._partial_n:
            take = min(self._step - self._partial_n, x.size)
            self._partial_sum += float(np.dot(x[:take], x[:take]))
            self._partial_n += take
            i = take
            if self._partial_n == self._step:
                self._powers.append(self._partial_sum / self._step)
                self._partial_sum, self._partial_n = 0.0, 0
        whole = (x.size - i) // self._step
        if whole:
            body = x[i:i + whole * self._step].reshape(whole, self._step)
            self._powers.extend(np.einsum("ij,ij->i", body, body) / self._step)
            i += whole * self._step
        if i < x.size:
            rest = x[i:]
            self._partial_sum += float(np.dot(rest, rest))
            self._partial_n += rest.size

    @property
    def level_dbfs(self) -> float | None:
        """The gated level in dBFS, None when no 0.4 s block passes the absolute gate."""
        return gated_level(np.asarray(self._powers, dtype=np.float64))


def gated_level(step_powers: np.ndarray) -> float | None:
    """The gated level in dBFS of consecutive 0.1 s sub-blocks' mean powers (see the module); None when
    no 0.4 s block passes the absolute gate."""
    if step_powers.size < STEPS_PER_BLOCK:
        return None
    kernel = np.ones(STEPS_PER_BLOCK) / STEPS_PER_BLOCK
    blocks = np.convolve(step_powers, kernel, mode="valid")
    blocks = blocks[blocks > 10.0 ** (ABSOLUTE_GATE_DBFS / 10.0)]
    if not blocks.size:
        return None
    blocks = blocks[blocks > blocks.mean() * 10.0 ** (-RELATIVE_GATE_DB / 10.0)]
    return 10.0 * math.log10(float(blocks.mean()))


def level_dbfs(audio: np.ndarray, sample_rate: int) -> float | None:
    """The gated level (see the module) of a whole mono float array at ``sample_rate`` Hz, in dBFS; None
    when no 0.4 s block passes the absolute gate."""
    meter = LevelMeter(sample_rate)
    meter.push(audio)
    return meter.level_dbfs


def floor_gain_db(level: float | None, floor_dbfs: float | None, max_gain_db: float) -> float:
    """The gain in dB that raises a track at ``level`` dBFS to ``floor_dbfs``, at most ``max_gain_db``; 0 when
    the model has no floor, the track is at or above it, or its level is None (silence)."""
    if floor_dbfs is None or level is None or level >= floor_dbfs:
        return 0.0
    return min(floor_dbfs - level, max_gain_db)
