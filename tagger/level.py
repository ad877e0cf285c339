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

A file is raised by one constant gain (its whole level is known once it is decoded); live input cannot wait
for its end. :class:`RunningFloor` raises a stream causally: the same gated level over the last
``RUNNING_HORIZON_SECONDS`` of the input, and a gain towards the floor that moves at most
``RUNNING_MAX_DB_PER_SECOND``, so that it follows an input turned down without pumping with the music.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")

BLOCK_SECONDS = 0.4
STEP_SECONDS = 0.1
ABSOLUTE_GATE_DBFS = -70.0
RELATIVE_GATE_DB = 10.0
STEPS_PER_BLOCK = round(BLOCK_SECONDS / STEP_SECONDS)
DEFAULT_MAX_GAIN_DB = 30.0  # a model's floor without its own cap raises a track by at most this, dB
MAX_MAX_GAIN_DB = 60.0  # a cap above this would raise a -70 dBFS hiss to a normal level
# A stream's running floor (RunningFloor): chosen by python -m training.live_eval and a live level check
# (notes in training/level_check.py).
RUNNING_HORIZON_SECONDS = 15.0  # the running level is measured over the last this many seconds of input
RUNNING_MAX_DB_PER_SECOND = 3.0  # the gain moves by at most this many dB per second of input

_ABSOLUTE_GATE_POWER = 10.0 ** (ABSOLUTE_GATE_DBFS / 10.0)  # the absolute gate as a mean power (full scale 1.0)


class LevelMeter:
    """Measures the gated level (see the module) of samples pushed block by block, at ``sample_rate`` Hz.

    Memory is one float per 0.1 s of audio (the sub-blocks' mean powers), so a long track costs nothing.
    The result does not depend on how the samples are split into pushes.

    Args:
        sample_rate: the samples' rate, Hz.
        horizon_seconds: None (default) measures everything pushed; else only the newest complete 0.1 s
            sub-blocks covering this many seconds (a running level for a stream, :class:`RunningFloor`).
    """

    def __init__(self, sample_rate: int, horizon_seconds: float | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate {sample_rate} must be positive")
        if horizon_seconds is not None and horizon_seconds < BLOCK_SECONDS:
            raise ValueError(f"level horizon {horizon_seconds} s is shorter than one {BLOCK_SECONDS} s block")
        self.sample_rate = sample_rate
        self._step = max(1, round(sample_rate * STEP_SECONDS))
        self._partial_sum = 0.0  # sum of squares of the samples of the sub-block being filled
        self._partial_n = 0
        self._horizon_steps = None if horizon_seconds is None else round(horizon_seconds / STEP_SECONDS)
        # Mean power of each complete 0.1 s sub-block (the newest ones only, with a horizon).
        self._powers: list[float] | deque[float] = [] if self._horizon_steps is None else \
            deque(maxlen=self._horizon_steps)

    @property
    def step_samples(self) -> int:
        """The samples of one 0.1 s sub-block: the level changes only when one completes."""
        return self._step

    @property
    def pending_samples(self) -> int:
        """The samples pushed into the sub-block not yet complete."""
        return self._partial_n

    @property
    def horizon_full(self) -> bool:
        """True when the sub-blocks measured span the whole horizon (each new one drops the oldest); always False
        without a horizon."""
        return self._horizon_steps is not None and len(self._powers) == self._horizon_steps

    @property
    def last_step_audible(self) -> bool:
        """True when the newest complete 0.1 s sub-block's mean power is over the absolute gate
        (``ABSOLUTE_GATE_DBFS``, -70 dBFS); False before the first one completes."""
        return bool(self._powers) and bool(self._powers[-1] > _ABSOLUTE_GATE_POWER)

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
    blocks = blocks[blocks > _ABSOLUTE_GATE_POWER]
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


@dataclass(frozen=True)
class FloorPasses(Generic[T]):
    """What :func:`analyse_floored` returns.

    Attributes:
        result: the last pass's result (the raised one when ``gain_db`` > 0).
        level_dbfs: the gated level of the audio as decoded, before any gain, dBFS (None: silence).
        gain_db: the constant gain the returned pass's audio was raised by, dB (0: not raised).
    """

    result: T
    level_dbfs: float | None
    gain_db: float


def analyse_floored(one_pass: Callable[[Callable[[np.ndarray], np.ndarray]], T], sample_rate: int,
                    floor_dbfs: float | None, max_gain_db: float = DEFAULT_MAX_GAIN_DB) -> FloorPasses[T]:
    """Analyse a file, raised to the level floor when it is quieter: the one place a file's two passes live.

    ``one_pass(prepare)`` decodes the file anew, passes every mono float block of samples (full scale 1.0, at
    ``sample_rate`` Hz) through ``prepare`` and analyses what ``prepare`` returns. The first pass measures the
    gated level while it goes (``prepare`` returns the block itself). When :func:`floor_gain_db` of that level
    is above 0 (a floor, a level under it), ``one_pass`` runs a second time with a ``prepare`` that returns each
    block times ``10**(gain_db / 20)``: one constant gain, so the dynamics are kept. Only quiet files pay the
    second decode; keeping every file's samples in memory instead would cost all of them.

    Args:
        one_pass: decodes and analyses the file once, every block through the ``prepare`` it is given.
        sample_rate: the rate of the blocks, Hz.
        floor_dbfs: the model's ``level_floor_dbfs``, dBFS; None (no floor): one pass, never raised.
        max_gain_db: the most a file is raised, dB (the model's ``level_max_gain_db``; default
            ``DEFAULT_MAX_GAIN_DB``).
    """
    meter = LevelMeter(sample_rate)

    def measured(block: np.ndarray) -> np.ndarray:
        meter.push(block)
        return block

    measured_result = one_pass(measured)
    level = meter.level_dbfs
    gain_db = floor_gain_db(level, floor_dbfs, max_gain_db)
    if gain_db <= 0.0:
        return FloorPasses(measured_result, level, gain_db)
    # The measured pass's result (a long track's features) is let go before the raised pass builds its own, so a
    # quiet file never holds both.
    del measured_result
    gain = np.float32(10.0 ** (gain_db / 20.0))

    def raised(block: np.ndarray) -> np.ndarray:
        return block * gain

    return FloorPasses(one_pass(raised), level, gain_db)


class RunningFloor:
    """Raises a stream quieter than ``floor_dbfs`` towards it, causally: the live counterpart of the constant
    gain a quiet file is analysed raised by (:func:`floor_gain_db`).

    The running level is the gated level (see the module, the same measure as a file's) of the last
    ``horizon_seconds`` of the input as it came in (never of the raised samples: no feedback). At the start of
    each 0.1 s sub-block the gain's target is :func:`floor_gain_db` of that level (0 when it is at or above the
    floor, at most ``max_gain_db``); over the sub-block the gain moves towards the target in a straight line (in
    dB, sample by sample) by at most ``max_db_per_second`` per second, so that it never pumps with the music.
    Until ``horizon_seconds`` of input have come in since the first audible 0.1 s sub-block (one over the
    -70 dBFS gate: a capture that starts on silence starts counting when the sound does) the target is scaled
    by the share heard so far: a level measured on a few seconds is not yet the stream's (a quiet first bar
    before a louder piece, gtzan jazz.00001: raised, then lowered once the louder part came, the genre said
    twice). A whole horizon of silence (the running level knows nothing of the sound before it) starts the
    count over: sound after minutes of silence is a new start too. While the running level is None (nothing
    over -70 dBFS in the horizon: silence) the gain is 0 at once: silence is never raised. The gain depends only
    on the samples before each sub-block, never on how the stream is split into blocks.

    Args:
        sample_rate: the samples' rate, Hz.
        floor_dbfs: the model's level floor (``level_floor_dbfs``), dBFS.
        max_gain_db: the most the input is raised, dB (``level_max_gain_db``).
        horizon_seconds: the running level's span, seconds (default ``RUNNING_HORIZON_SECONDS``).
        max_db_per_second: how fast the gain may move, dB per second of input (default
            ``RUNNING_MAX_DB_PER_SECOND``).
    """

    def __init__(self, sample_rate: int, floor_dbfs: float, max_gain_db: float = DEFAULT_MAX_GAIN_DB,
                 horizon_seconds: float = RUNNING_HORIZON_SECONDS,
                 max_db_per_second: float = RUNNING_MAX_DB_PER_SECOND) -> None:
        if max_db_per_second <= 0:
            raise ValueError(f"gain rate {max_db_per_second} dB/s must be positive")
        self.floor_dbfs = floor_dbfs
        self.max_gain_db = max_gain_db
        self.horizon_seconds = horizon_seconds
        self.meter = LevelMeter(sample_rate, horizon_seconds)
        self._step = self.meter.step_samples
        self._max_move_db = max_db_per_second * self._step / sample_rate  # per sub-block
        self._start_db = 0.0  # the gain at the current sub-block's start, dB
        self._end_db = 0.0  # ... and at its end
        self._full_trust = max(1, round(horizon_seconds / STEP_SECONDS))  # sub-blocks heard for the whole target
        # Sub-blocks since the first audible one (that one included; counted up to _full_trust); back to 0 after a
        # whole horizon of silence.
        self._heard = 0

    @property
    def level_dbfs(self) -> float | None:
        """The running gated level of the input as it came in, dBFS (None: silence, or under one block yet)."""
        return self.meter.level_dbfs

    @property
    def trust(self) -> float:
        """The share of the target gain applied (0..1): the input since the sound started (the first audible
        sub-block, or the first after a whole horizon of silence) over the horizon, at most 1."""
        return self._heard / self._full_trust

    @property
    def gain_db(self) -> float:
        """The gain the next sample is raised by, dB (0: not raised)."""
        done = self.meter.pending_samples
        return self._start_db + (self._end_db - self._start_db) * done / self._step

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """The mono float32 ``samples`` raised by the running gain: the very same array while the gain is 0."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        out: np.ndarray | None = None
        i = 0
        while i < x.size:
            done = self.meter.pending_samples
            if done == 0:  # a sub-block starts: its gain's course, from the level of the samples before it
                self._start_db = self._end_db
                level = self.meter.level_dbfs
                if level is None:
                    self._start_db = self._end_db = 0.0
                    if self.meter.horizon_full:
                        # A whole horizon of silence: what comes next starts the stream over (trust from 0).
                        self._heard = 0
                else:
                    target = floor_gain_db(level, self.floor_dbfs, self.max_gain_db) * self.trust
                    move = min(max(target - self._start_db, -self._max_move_db), self._max_move_db)
                    self._end_db = self._start_db + move
            n = min(self._step - done, x.size - i)
            part = x[i:i + n]
            self.meter.push(part)
            if done + n == self._step and self._heard < self._full_trust \
                    and (self._heard or self.meter.last_step_audible):
                self._heard += 1
            if self._start_db or self._end_db:
                if out is None:
                    out = x.copy()
                ramp = self._start_db + (self._end_db - self._start_db) * np.arange(done + 1, done + n + 1) / self._step
                out[i:i + n] = part * (10.0 ** (ramp / 20.0)).astype(np.float32)
            i += n
        return x if out is None else out
