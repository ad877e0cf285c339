"""Live audio: PortAudio capture into a ring buffer, a consumer that tags it, and genre-change events.

The PortAudio callback only copies samples into a preallocated ring buffer: it never blocks, never
allocates and never runs inference. A consumer thread downmixes, resamples to the model's rate (FFmpeg's
swresample through PyAV), feeds a :class:`tagger.TagStream` with a recent horizon, and hands its sink
(the daemon's :class:`service.sinks.SinkHub`) a :class:`service.events.LiveUpdate` for every hop and a
:class:`service.events.GenreChanged` when :class:`ChangeDetector` finds that the music changed (genre, or to
and from "no music").
A lost or failing device is reopened with exponential backoff; after a short gap it goes on where it was: its
running ensemble, change detector and level floor (:class:`LiveSource`). A device that delivers no audio for
``STALL_S`` (a suspended PulseAudio sink, a hung driver) is reported stalled at once (``status.stalled_s``) and
reopened; its stream is aborted, never drained, and a close that still hangs is left to a daemon thread after
``CLOSE_WAIT_S`` (``status.hung_closes``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import av
import numpy as np

from service.events import GenreChanged, LiveUpdate
from tagger.ensemble import NO_MUSIC, apply_aliases
from tagger.level import RUNNING_HORIZON_SECONDS, RunningFloor
from tagger.pipeline import SliceResult, Tagger

if TYPE_CHECKING:
    import sounddevice

log = logging.getLogger(__name__)
# The longest quiet passage of the current genre (``quiet_dbfs``) that is not weighed as evidence for "no music",
# seconds: past it a quiet stretch counts again (dead air after a song whose genre the model still hears in it).
QUIET_PASSAGE_S = 10.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# A capture whose device delivers no audio for this long, seconds, is stalled: the status says so at once (not running,
# ``stalled_s``, no gain) and the stream is closed and reopened until audio comes again.
STALL_S = 5.0
# The longest the capture's thread waits for PortAudio to close a stream, seconds; a close that takes longer (a hung
# driver) is left to finish in a daemon thread, counted in ``status.hung_closes``, and the device reopened.
CLOSE_WAIT_S = 2.0
# The longest gap, seconds, after which the same input reopened goes on where it was (its running ensemble, change
# detector and level floor): the running floor's horizon, after which the floor would start over anyway (a whole
# horizon of silence), and a gap long enough for the music to have changed under it.
RESUME_GAP_S = RUNNING_HORIZON_SECONDS


class RingBuffer:
    """Single-producer, single-consumer ring of float32 frames [capacity, channels].

    ``write`` (the audio callback) and ``read`` (the consumer) touch disjoint index variables; under
    CPython's GIL an int assignment is atomic, so no lock is needed and the writer never waits.
    """

    def __init__(self, capacity_frames: int, channels: int) -> None:
        self.data = np.zeros((capacity_frames, channels), dtype=np.float32)
        self.capacity = capacity_frames
        self.written = 0  # frames ever written (only the writer changes it)
        self.consumed = 0  # frames ever read (only the reader changes it)
        self.overflows = 0  # blocks dropped because the reader fell a whole buffer behind
        self.last_write_time = 0.0

    def write(self, block: np.ndarray) -> None:
        n = block.shape[0]
        if self.written - self.consumed + n > self.capacity:
            self.overflows += 1
            return
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.data[start:start + first] = block[:first]
        if first < n:
            self.data[: n - first] = block[first:]
        self.last_write_time = time.monotonic()
        self.written += n

    def read(self) -> np.ndarray:
        """Everything written since the last read, [frames, channels] (a copy)."""
        end = self.written
        n = end - self.consumed
        if n <= 0:
            return self.data[:0].copy()
        start = self.consumed % self.capacity
        first = min(n, self.capacity - start)
        out = np.concatenate([self.data[start:start + first], self.data[: n - first]]) if first < n \
            else self.data[start:start + n].copy()
        self.consumed = end
        return out


class StreamResampler:
    """Mono float32 blocks at ``rate_in`` → mono float32 at ``rate_out`` (swresample, stateful)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self._resampler = None if rate_in == rate_out else av.AudioResampler(format="flt", layout="mono",
                                                                              rate=rate_out)
        self._pts = 0

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        if self._resampler is None or mono.size == 0:
            return mono.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate = self.rate_in
        frame.pts = self._pts
        self._pts += mono.size
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class Window(NamedTuple):
    """One window the live path completed, as :class:`ChangeDetector` weighs it."""

    view: str
    end_s: float  # where it ends in the stream, seconds
    probabilities: np.ndarray  # the genre output's probabilities (the detector's labels, in order)
    music: float | None = None  # the music detector's probability of music; None without a detector
    # The window's RMS level of the input as it came in (before any running floor's gain), dB relative to full
    # scale; None when unknown.
    level_dbfs: float | None = None


def level_dbfs(audio: np.ndarray) -> float:
    """The RMS level of ``audio`` (float samples, full scale 1.0) in dBFS; -200 for digital silence or nothing."""
    power = float(np.mean(np.square(audio, dtype=np.float64))) if audio.size else 0.0
    return max(-200.0, 10.0 * float(np.log10(power))) if power > 0 else -200.0


@dataclass(frozen=True)
class ChangeSettings:
    """How a live source decides that the music changed (``[live]`` in the daemon's config).

    Attributes:
        horizon_seconds: the running ensemble's span, seconds (None: the whole stream); the live display
            and the "no music" test average over it.
        hysteresis: when there is no current genre to weigh against (the first label, the first genre after
            "no music"): the music windows in a row over which a genre must be decided, or the consecutive
            updates the running ensemble's decided top (or "no music") must hold; with ``evidence_nats`` 0,
            the updates every change must hold; otherwise also the updates in a row a genre the running
            ensemble decides must hold to replace the current genre without evidence.
        evidence_nats: how much evidence (natural log units of the probability ratio, summed over windows)
            a challenger needs against the current genre before a change is announced; 0 turns the
            evidence test off (a change then only needs the running ensemble's top to hold), and with it both
            uncertain announcements (music back after "no music", a withdrawn genre).
        drift_nats: subtracted from every window's evidence, so that evidence decays while the current genre
            holds and chance disagreements do not add up.
        cap_nats: the most evidence one window can add or take away (one odd window cannot decide alone
            unless ``cap_nats`` ≥ ``evidence_nats``).
        evidence_views: the views whose windows count as evidence: "shortest" (the shortest window, clean
            soonest after a switch) or "all".
        music_evidence_nats: the evidence (log-odds of no music over the music detector's threshold, per
            window of the evidence views, capped as above, less ``music_drift_nats``) that "no music" needs
            while a genre is current (above ``cap_nats`` less ``music_drift_nats``: one silent window, a pause
            in a song, is not enough), and that music needs after "no music" to be announced (as its
            likeliest genre, uncertain) before a genre is decided; 0: "no music" is announced once the running
            ensemble's music probability has been below the threshold for ``hysteresis`` updates, and music
            only with a decided genre.
        music_drift_nats: as ``drift_nats``, for the music evidence (a window's music log-odds are smaller
            than the genres' ratios: a calibrated 0.07 past a 0.35 threshold is 2 nats).
        withdraw_nats: the evidence (the current genre's log-odds below the threshold's, per music window of
            the evidence views, capped and drifting as above) after which a current genre that no challenger
            has replaced yet is withdrawn: the likeliest other genre is announced as uncertain (a sink never
            writes it), until a genre is decided, the current one again included; 0 = never withdrawn. With
            ``evidence_nats`` 0 there is no withdrawal, nor any uncertain announcement (both weigh windows).
        quiet_dbfs: a window of the evidence views quieter than this (RMS, dBFS) whose genre probabilities still
            decide the current genre is a quiet passage of the music (a fade-out, a pianissimo): no evidence for
            "no music", for up to ``QUIET_PASSAGE_S`` seconds in a row; 0 = off. Talk, noise and hum are
            louder, and the model hears no genre in silence, so neither waits for it.
    """

    # Chosen by python -m training.live_eval on the tuning half of its streams (see service/config.py).
    horizon_seconds: float | None = 4.0
    hysteresis: int = 3
    evidence_nats: float = 4.0
    drift_nats: float = 1.0
    cap_nats: float = 6.0
    evidence_views: str = "shortest"
    music_evidence_nats: float = 6.0
    music_drift_nats: float = 0.25
    withdraw_nats: float = 0.0
    quiet_dbfs: float = -45.0


class ChangeDetector:
    """Decide when a live source's label changes, and to what.

    Two tests. While a genre is current, each new window of the evidence views adds its log-probability
    ratio of every other genre against the current one (capped at ``cap_nats``, less ``drift_nats``) to
    that challenger's evidence, which never falls below zero (a CUSUM test); a challenger is announced once
    its evidence reaches ``evidence_nats`` and it is decided: its mean probability over the windows since
    its evidence last stood at zero (where the change most likely began) is at or above the threshold, or
    it is the update's label. With ``music_evidence_nats``, the same windows' music log-odds past the music
    detector's threshold add up to the evidence for "no music" (but for windows of a quiet passage of the
    current genre, ``quiet_dbfs``: a fade-out is not "no music"; and a window that is more likely not music
    is no evidence for a genre). With no current genre (the start, or "no music"), a genre is announced once
    it is decided over the last ``hysteresis`` or more music windows in a row of the evidence views. And in
    every case without evidence (or with ``evidence_nats`` 0), a label is announced once it has been the
    update's label for ``hysteresis`` consecutive updates. The
    update's label is the running ensemble's decided top genre, "no music", or None (uncertain: it breaks a
    run and never becomes a change, contract §3).

    Music that comes back without a decided genre must not stay "no music": while "no music" is current,
    the evidence views' music log-odds past the threshold add up (capped and drifting as above) to the
    evidence for music, and at ``music_evidence_nats`` the likeliest genre is announced as *uncertain*
    (:attr:`uncertain`; music, but no genre a sink may present as fact). From there a decided genre is
    announced as from the start, and "no music" as from a genre.

    A decided genre the music has left before another one is decided is withdrawn (``withdraw_nats``): the
    likeliest other genre is announced as uncertain, and the windows go on being weighed against the withdrawn
    genre. From there the first of: a challenger that passes the evidence test; the withdrawn genre, once the
    running ensemble decides it again; a genre the running ensemble decides for ``hysteresis`` updates in a
    row (whose evidence may never grow: rock at 0.65 over a withdrawn jazz at 0.3 is decided, but no evidence
    with 1 nat of drift); or "no music" on its evidence. An uncertain genre is never announced twice in a row.
    Likewise a decided genre gives way to a genre the running ensemble decides for ``hysteresis`` updates in
    a row, evidence or not.

    Args:
        settings: the thresholds (:class:`ChangeSettings`).
        labels: the genre output's labels, in the order of the windows' probability vectors.
        threshold: the probability a genre needs to be decided.
        views: the model's view names, shortest window first (for ``evidence_views``).
        music_threshold: the music detector's threshold (for ``music_evidence_nats``).
    """

    def __init__(self, settings: ChangeSettings | None = None, labels: Sequence[str] = (),
                 threshold: float = 0.6, views: Sequence[str] = (), music_threshold: float = 0.5) -> None:
        self.settings = settings or ChangeSettings()
        self.labels = tuple(labels)
        self.threshold = threshold
        self.current: str | None = None
        # True while the current label is only the likeliest genre: of music that came back undecided after
        # "no music", or after the decided genre was withdrawn.
        self.uncertain = False
        # The decided genre every window's evidence is weighed against (its index); None without one.
        self._reference: int | None = None
        self._withdraw = 0.0  # evidence that the reference genre no longer holds
        self._withdraw_sum = np.zeros(len(self.labels))  # genre probabilities over the windows since it was 0
        self._withdraw_windows = 0
        self._music_back = 0.0  # evidence for music while "no music" is current
        self._back_sum = np.zeros(len(self.labels))  # genre probabilities over the windows since it was 0
        self._back_windows = 0
        # The announced label's probability over the windows that decided it (None: the update's own).
        self.confidence: float | None = None
        self._candidate: str | None = None
        self._count = 0
        self._evidence = np.zeros(len(self.labels))
        self._sums = np.zeros(len(self.labels))  # each challenger's probability summed since its evidence was 0
        self._windows = np.zeros(len(self.labels))
        self._no_music = 0.0  # evidence for "no music"
        self._quiet_since: float | None = None  # where the current quiet passage's first window ends, seconds
        self._music_sum = 0.0  # the music probability summed over the windows since that evidence was 0
        self._music_windows = 0
        self.music_threshold = music_threshold
        self._run_sum = np.zeros(len(self.labels))  # genre probabilities over the current run of music windows
        self._run_windows = 0
        self._music_prior = float(np.log((1 - music_threshold) / music_threshold))
        if self.settings.evidence_views not in ("shortest", "all"):
            raise ValueError(f"evidence_views {self.settings.evidence_views!r} is not 'shortest' or 'all'")
        # None: every view counts.
        self._views = set(views[:1]) if self.settings.evidence_views == "shortest" and views else None

    def _reset_evidence(self) -> None:
        self._evidence[:] = 0.0
        self._sums[:] = 0.0
        self._windows[:] = 0.0
        self._no_music = 0.0
        self._music_sum, self._music_windows = 0.0, 0

    def _announce(self, label: str, confidence: float | None = None, uncertain: bool = False
                  ) -> tuple[str | None, str]:
        previous, self.current, self.confidence, self.uncertain = self.current, label, confidence, uncertain
        self._reference = self.labels.index(label) if label in self.labels and not uncertain else None
        self._withdraw, self._withdraw_sum[:], self._withdraw_windows = 0.0, 0.0, 0
        self._music_back, self._back_sum[:], self._back_windows = 0.0, 0.0, 0
        self._candidate, self._count = None, 0
        self._quiet_since = None
        self._reset_evidence()
        if not uncertain:  # undecided music goes on counting towards its decided genre
            self._run_sum[:], self._run_windows = 0.0, 0
        return previous, label

    def update(self, top: str | None, windows: Sequence[Window | tuple] = ()) -> tuple[str | None, str] | None:
        """Feed one update: its label (the decided top genre, "no music", or None when uncertain) and the
        windows it completed (:class:`Window`, or a tuple of its fields: view, end in seconds, genre
        probabilities, music probability or None without a music detector, level in dBFS or None); return
        (previous, new) when a change is announced."""
        s = self.settings
        windows = [w if isinstance(w, Window) else Window(*w) for w in windows]
        if self._reference is not None and s.evidence_nats > 0 and (top != NO_MUSIC or s.music_evidence_nats > 0):
            # A decided genre, or one withdrawn: every window weighed against it, and the running ensemble's
            # decided top counted (see _weigh).
            return self._weigh(windows, top)
        if self.uncertain:
            # Undecided music after "no music": "no music" on its evidence; a genre (its own label too) once
            # decided, as from the start.
            change = self._undecided(windows)
            if change is not None:
                return change
        if not self.uncertain and (top == NO_MUSIC or self.current not in self.labels):
            self._reset_evidence()
        if s.evidence_nats > 0 and (self.current not in self.labels or self.uncertain):
            start = self._start(windows)
            if start is not None:
                return start
            if self.current == NO_MUSIC and s.music_evidence_nats > 0:
                back = self._music_returns(windows)
                if back is not None:
                    return back
        if self.uncertain and top == NO_MUSIC and s.music_evidence_nats > 0:
            top = None  # from music, "no music" needs its evidence (above), as from a genre
        if top is None or (top == self.current and not self.uncertain):
            self._candidate, self._count = None, 0
            return None
        if top == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = top, 1
        if self._count >= s.hysteresis:
            return self._announce(top)
        return None

    def _start(self, windows: Sequence[Window]) -> tuple[str | None, str] | None:
        """No genre yet, or "no music": a genre decided over the last ``hysteresis`` or more consecutive
        music windows of the evidence views (quicker than the running ensemble, which still holds the talk's
        windows after talk)."""
        for view, _end, probs, music, _level in windows:
            if self._views is not None and view not in self._views:
                continue
            if music is not None and music < self.music_threshold:
                self._run_sum[:], self._run_windows = 0.0, 0
                continue
            self._run_sum += np.asarray(probs, dtype=np.float64)
            self._run_windows += 1
        if self._run_windows < self.settings.hysteresis:
            return None
        mean = self._run_sum / self._run_windows
        best = int(np.argmax(mean))
        return self._announce(self.labels[best], float(mean[best])) if mean[best] >= self.threshold else None

    def _music_step(self, music: float) -> float:
        """One window's evidence for "no music" (nats, capped): its log-odds of no music past the threshold's."""
        m = min(max(music, 1e-9), 1 - 1e-9)
        return float(np.clip(np.log((1 - m) / m) - self._music_prior, -self.settings.cap_nats, self.settings.cap_nats))

    def _music_returns(self, windows: Sequence[Window]
                       ) -> tuple[str | None, str] | None:
        """While "no music" is current: music evidence from the evidence views; at ``music_evidence_nats``,
        the likeliest genre of the music windows since it last stood at zero, announced as uncertain."""
        s = self.settings
        for view, _end, probs, music, _level in windows:
            if music is None or (self._views is not None and view not in self._views):
                continue
            self._music_back += -self._music_step(music) - s.music_drift_nats
            if self._music_back <= 0.0:
                self._music_back, self._back_sum[:], self._back_windows = 0.0, 0.0, 0
                continue
            self._back_sum += np.asarray(probs, dtype=np.float64)
            self._back_windows += 1
            if self._music_back >= s.music_evidence_nats:
                mean = self._back_sum / self._back_windows
                best = int(np.argmax(mean))
                return self._announce(self.labels[best], float(mean[best]), uncertain=True)
        return None

    def _no_music_evidence(self, music: float) -> tuple[str | None, str] | None:
        """Add one evidence window's music probability to the evidence for "no music" (capped, less
        ``music_drift_nats``, never below 0); announce "no music" once it reaches ``music_evidence_nats``."""
        s = self.settings
        m = min(max(music, 1e-9), 1 - 1e-9)
        self._no_music = max(0.0, self._no_music + self._music_step(m) - s.music_drift_nats)
        if self._no_music == 0.0:
            self._music_sum, self._music_windows = 0.0, 0
        else:
            self._music_sum += m
            self._music_windows += 1
        if self._no_music >= s.music_evidence_nats:
            return self._announce(NO_MUSIC, 1.0 - self._music_sum / self._music_windows)
        return None

    def _undecided(self, windows: Sequence[Window]
                   ) -> tuple[str | None, str] | None:
        """The current genre is uncertain: "no music" on its evidence, as from a genre."""
        for view, _end, _probs, music, _level in windows:
            if (self.settings.music_evidence_nats <= 0 or music is None
                    or (self._views is not None and view not in self._views)):
                continue
            change = self._no_music_evidence(music)
            if change is not None:
                return change
        return None

    def _quiet_passage(self, end_s: float, level: float | None, current: float) -> bool:
        """Whether a window (ending at ``end_s``, at ``level`` dBFS, with ``current`` the current genre's
        probability) is part of a quiet passage of the current genre no longer than ``QUIET_PASSAGE_S``
        (then it is weighed as music, not as evidence for "no music")."""
        quiet = (self.settings.quiet_dbfs < 0 and level is not None and level < self.settings.quiet_dbfs
                 and current >= self.threshold)
        if not quiet:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = end_s
        return end_s - self._quiet_since < QUIET_PASSAGE_S

    def _weigh(self, windows: Sequence[Window], top: str | None
               ) -> tuple[str | None, str] | None:
        s = self.settings
        current = self._reference
        assert current is not None
        withdraw_prior = float(np.log((1 - self.threshold) / self.threshold))
        for view, end, probs, music, level in windows:
            if self._views is not None and view not in self._views:
                continue
            if s.music_evidence_nats > 0 and music is not None and not self._quiet_passage(end, level, probs[current]):
                change = self._no_music_evidence(music)
                if change is not None:
                    return change
                if self._music_step(music) > 0:  # the window is more likely not music: its genres are no evidence
                    continue
            p = np.clip(np.asarray(probs, dtype=np.float64), 1e-9, 1.0)
            log_p = np.log(p)
            step = np.clip(log_p - log_p[current], -s.cap_nats, s.cap_nats) - s.drift_nats
            evidence = self._evidence + step
            restart = evidence <= 0.0
            self._evidence = np.maximum(evidence, 0.0)
            self._sums = np.where(restart, 0.0, self._sums + p)
            self._windows = np.where(restart, 0.0, self._windows + 1)
            self._evidence[current] = 0.0
            kept = min(float(p[current]), 1 - 1e-9)
            own = float(np.clip(np.log((1 - kept) / kept) - withdraw_prior, -s.cap_nats, s.cap_nats))
            self._withdraw = max(0.0, self._withdraw + own - s.drift_nats)
            if self._withdraw == 0.0:
                self._withdraw_sum[:], self._withdraw_windows = 0.0, 0
            else:
                self._withdraw_sum += p
                self._withdraw_windows += 1
        mean = np.divide(self._sums, self._windows, out=np.zeros_like(self._sums), where=self._windows > 0)
        decided = mean >= self.threshold
        if top in self.labels:
            decided[self.labels.index(top)] = True
        ready = (self._evidence >= s.evidence_nats) & decided
        if ready.any():
            best = int(np.argmax(np.where(ready, self._evidence, -1.0)))
            return self._announce(self.labels[best], float(mean[best]))
        # A genre the running ensemble decides, held for ``hysteresis`` updates in a row, even when its evidence cannot
        # grow (its probability under e^drift_nats times the current genre's: rock at 0.62 over a current jazz at
        # 0.38 would leave jazz shown as decided, or "uncertain", for as long as rock plays). A withdrawn genre is
        # back once the running ensemble decides it again. Measured on the live_eval recordings: a longer hold
        # while a genre is decided (2 to 1000 times ``hysteresis``, all the same) kept a wrong first genre to the
        # end of two streams (a disco clip left as reggae; a jazz clip first called classical) and changed nothing else.
        if top == self.labels[current]:
            if self.uncertain:
                return self._announce(top)
            self._candidate, self._count = None, 0
        elif top in self.labels:
            self._count = self._count + 1 if top == self._candidate else 1
            self._candidate = top
            if self._count >= s.hysteresis:
                return self._announce(top)
        else:
            self._candidate, self._count = None, 0
        if self.uncertain:
            return None
        if s.withdraw_nats > 0 and self._withdraw >= s.withdraw_nats:
            # The likeliest other genre over the windows that withdrew it, announced as uncertain; the
            # evidence goes on against the withdrawn genre.
            heard = self._withdraw_sum / self._withdraw_windows
            best = int(np.argmax(np.where(np.arange(len(self.labels)) == current, -1.0, heard)))
            previous, self.current, self.uncertain = self.current, self.labels[best], True
            self.confidence = float(heard[best])
            return previous, self.current
        return None


@dataclass
class LiveStatus:
    running: bool = False
    device: str = ""
    overflows: int = 0
    restarts: int = 0
    error: str = ""
    updates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # The running level floor's gain now, dB (0: not raised, as while stopped); None: no running floor (turned off with
    # [live] level_floor = false, or the model states no level floor).
    gain_db: float | None = None
    # time.monotonic() when the device last delivered audio (or the stream opened), while it is stalled (none for
    # STALL_S); None: not stalled.
    stalled_since: float | None = None
    hung_closes: int = 0  # streams whose close hung past CLOSE_WAIT_S, left to a daemon thread

    @property
    def stalled_s(self) -> float | None:
        """Seconds since a stalled device last delivered audio; None when not stalled."""
        return None if self.stalled_since is None else time.monotonic() - self.stalled_since

    def as_dict(self) -> dict:
        d = {"running": self.running, "device": self.device, "overflows": self.overflows, "restarts": self.restarts}
        if self.error:
            d["error"] = self.error
        if self.gain_db is not None:
            d["gain_db"] = round(self.gain_db, 2)
        if self.stalled_s is not None:
            d["stalled_s"] = round(self.stalled_s, 1)
        if self.hung_closes:
            d["hung_closes"] = self.hung_closes
        return d


class LiveSink(Protocol):
    """What a live source reports to: a :class:`service.sinks.Sink` or the daemon's hub."""

    def live(self, event: LiveUpdate) -> None: ...

    def genre_changed(self, event: GenreChanged) -> None: ...


class LiveTagger:
    """Tag an endless stream of (possibly multichannel) blocks; report updates and changes to ``sink``.

    Independent of PortAudio, so files, sockets or tests can drive it too.

    The stream is eager, so a model with a level floor raises input whose running level is under it (a DJ
    mixer's record output or a radio line-in turned down: :class:`tagger.level.RunningFloor`) unless
    ``level_floor`` is False (``[live] level_floor`` in the daemon's config); the windows' levels that
    ``quiet_dbfs`` weighs are those of the input as it came in, never raised.
    """

    def __init__(self, tagger: Tagger, source: str, rate_in: int, changes: ChangeSettings | None,
                 sink: LiveSink, top_k: int = 5, level_floor: bool = True) -> None:
        self.tagger = tagger
        self.source = source
        settings = changes or ChangeSettings()
        self.horizon_seconds = settings.horizon_seconds
        # Incremental inference where the model allows it: per block, only the new frames' features.
        self.stream = tagger.stream(horizon_seconds=self.horizon_seconds, eager=True, fast=tagger.fast,
                                    level_floor=level_floor)
        self.resample = StreamResampler(rate_in, tagger.sample_rate)
        self._genre = tagger.manifest.genre_outputs[0]
        # The detector weighs the labels the user sees (aliases merged), as the estimates name them.
        names, _ = apply_aliases(self._genre.labels, np.zeros(len(self._genre.labels)), self._genre.multi_label,
                                 tagger.aliases)
        views = [v.name for v in sorted(tagger.views, key=lambda v: v.window_frames)]
        music = tagger.manifest.music
        self._music_output = music.output if music is not None else None
        self.changes = ChangeDetector(settings, names, tagger.threshold, views,
                                      music.threshold if music is not None else 0.5)
        self.sink = sink
        self.top_k = top_k
        self.labels = {o.name: tuple(o.labels) for o in tagger.manifest.outputs}
        # The newest resampled samples (at least the longest window and the receptive field's delay, and then
        # some), for each window's level: ``_recent[:_recent_n]`` starts at stream sample ``_recent_start``. Twice
        # that is allocated once, so that a block is one copy and the kept tail moves only when it is full.
        longest = max((tagger.manifest.view_seconds(v)[0] for v in tagger.views), default=0.0)
        self._recent_keep = int((longest + 10.0) * tagger.sample_rate)
        self._recent = np.zeros(2 * self._recent_keep, dtype=np.float32)
        self._recent_n = 0
        self._recent_start = 0

    @property
    def floor(self) -> RunningFloor | None:
        """The running level floor raising the input (None: none)."""
        return self.stream.floor

    @property
    def gain_db(self) -> float | None:
        """The running level floor's gain now, dB (0: not raised); None without a running floor."""
        return None if self.stream.floor is None else self.stream.floor.gain_db

    def feed(self, block: np.ndarray, captured_at: float | None = None) -> list[SliceResult]:
        """Add frames [n] or [n, channels] at the input rate; report to the sink if slices completed.

        ``captured_at``: :func:`time.monotonic` when the newest frame was captured (for ``latency_ms``)."""
        mono = self.resample(block.mean(axis=1) if block.ndim == 2 else block)
        self._remember(mono)
        results = self.stream.feed(mono)
        if results:
            self._publish(results, captured_at)
        return results

    def _remember(self, samples: np.ndarray) -> None:
        """Append resampled samples to the recent ones, dropping the oldest past twice ``_recent_keep``."""
        n, keep = samples.size, self._recent_keep
        if n >= keep:  # a block longer than all that is kept: its own tail
            self._recent[:keep] = samples[-keep:]
            self._recent_start += self._recent_n + n - keep
            self._recent_n = keep
            return
        if self._recent_n + n > self._recent.size:
            tail = keep - n  # the newest samples kept beside the block
            self._recent[:tail] = self._recent[self._recent_n - tail:self._recent_n]
            self._recent_start += self._recent_n - tail
            self._recent_n = tail
        self._recent[self._recent_n:self._recent_n + n] = samples
        self._recent_n += n

    def _level(self, start_s: float, end_s: float) -> float | None:
        """The RMS level (dBFS) of the stream from ``start_s`` to ``end_s`` seconds, as it came in (resampled,
        before the running floor's gain: ``quiet_dbfs`` weighs raw levels); None when those samples are no
        longer kept."""
        rate = self.tagger.sample_rate
        a, b = round(start_s * rate) - self._recent_start, round(end_s * rate) - self._recent_start
        return level_dbfs(self._recent[a:min(b, self._recent_n)]) if a >= 0 and b > a else None

    def _publish(self, results: list[SliceResult], captured_at: float | None) -> None:
        update = LiveUpdate(
            source=self.source, stream_s=self.stream.seconds_in, horizon_s=self.horizon_seconds,
            slices=tuple(results), estimates=self.stream.estimate(), labels=self.labels, top_k=self.top_k,
            music=self.stream.music(), music_probability=self.stream.music_probability(),
            latency_ms=1000 * (time.monotonic() - captured_at) if captured_at is not None else None)
        self.sink.live(update)
        genre, aliases = self._genre, self.tagger.aliases
        windows = [Window(r.view, r.end_s, apply_aliases(genre.labels, r.probabilities[genre.name], genre.multi_label,
                                                         aliases)[1],
                          float(r.probabilities[self._music_output][0]) if self._music_output else None,
                          self._level(r.start_s, r.end_s)) for r in results]
        # Only a decided genre, or "no music", can be announced: an uncertain top is no news.
        was_uncertain = self.changes.uncertain
        change = self.changes.update(update.top if not update.music or not update.uncertain else None, windows)
        if change:
            previous, current = change
            confidence = self.changes.confidence if self.changes.confidence is not None else update.confidence
            self.sink.genre_changed(GenreChanged(
                source=self.source, stream_s=update.stream_s, previous=previous, current=current,
                confidence=confidence, uncertain=self.changes.uncertain, music=current != NO_MUSIC,
                previous_uncertain=was_uncertain))


class LiveUnavailable(Exception):
    """A live input that cannot work here until the user acts (a missing package): not retried."""


class LiveSource:
    """A live input driving a :class:`LiveTagger` from its own thread, restarted after each failure with a
    growing pause (``BACKOFF_START_S`` doubling to ``BACKOFF_MAX_S``; back to the start after a good run).

    Subclasses say how to play the input once (:meth:`_once`) and how to report a failure (:meth:`_failed`).

    An input reopened after a short gap (under ``RESUME_GAP_S``, 15 s, since it was last fed) goes on where it was:
    the same :class:`LiveTagger`, so its running level floor (gain and trust), running ensemble and change detector
    go on, and the stream's seconds (``stream_s``) go on from where they were (the gap is not counted). A glitch of
    a second must neither un-raise a quiet source for the floor's horizon while it measures the level anew, nor
    announce the genre again from scratch (a new ``genre_changed`` from nothing, and a new detector's first
    decisions): the music after it is weighed against the genre shown, as any change is. It starts over when the
    input was opened otherwise (another device, rate or channels) or after a longer gap.

    Args:
        source: the name in topics (``live.<source>``).
        changes: the running ensemble's span and how changes are decided (:class:`ChangeSettings`; None:
            its defaults).
        block_seconds: the block handed to the live path at a time, seconds.
        top_k: labels per output in the messages.
        level_floor: raise input quieter than the model's level floor (:class:`tagger.level.RunningFloor`;
            nothing when the model states none); False analyses the input as it comes. The gain is in
            ``status.gain_db``.
    """

    def __init__(self, tagger: Tagger, sink: LiveSink, source: str, changes: ChangeSettings | None = None,
                 block_seconds: float = 0.05, top_k: int = 5, level_floor: bool = True) -> None:
        self.tagger = tagger
        self.level_floor = level_floor
        self.sink = sink
        self.source = source
        self.changes = changes or ChangeSettings()
        self.block_seconds = block_seconds
        self.top_k = top_k
        self.status = LiveStatus()
        if level_floor and tagger.manifest.level_floor_dbfs is not None:
            self.status.gain_db = 0.0  # a running floor: its gain is shown from the start
        self.finished = threading.Event()  # set when the thread has ended (stopped, or the input ended for good)
        self._thread: threading.Thread | None = None
        # The live tagger of the input last opened, how it was opened, and time.monotonic() when it was last fed: what
        # a reopened input goes on with (see the class).
        self._last: LiveTagger | None = None
        self._last_opened_as: tuple = ()
        self._fed_at = 0.0

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(stop,), name=f"live-{self.source}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def _tagger(self, rate_in: int, opened_as: tuple = ()) -> LiveTagger:
        """A live tagger for the input just opened at ``rate_in`` Hz. ``opened_as``: what identifies how it was
        opened (device, rate, channels); the same as last time, after a gap shorter than ``RESUME_GAP_S``, the last
        live tagger goes on (see the class)."""
        if (self._last is not None and opened_as == self._last_opened_as
                and time.monotonic() - self._fed_at < RESUME_GAP_S):
            return self._last
        self._last = LiveTagger(self.tagger, self.source, rate_in, self.changes, self.sink, self.top_k,
                                self.level_floor)
        self._last_opened_as = opened_as
        return self._last

    def _feed(self, live: LiveTagger, block: np.ndarray, captured_at: float | None) -> None:
        """Feed ``block`` to ``live``; the status shows the running floor's gain after it."""
        live.feed(block, captured_at)
        self._fed_at = time.monotonic()
        self.status.gain_db = live.gain_db

    def _once(self, stop: threading.Event) -> bool:
        """Play the input until it stops or fails (raises); True when it ended for good (no restart)."""
        raise NotImplementedError

    def _failed(self, exc: Exception, backoff: float) -> None:
        """Record and log a failure (``status.error``); the next try comes in ``backoff`` seconds."""
        raise NotImplementedError

    def _run(self, stop: threading.Event) -> None:
        backoff = BACKOFF_START_S
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if self._once(stop):
                        break
                except LiveUnavailable as exc:
                    self.status.error = str(exc)
                    log.error("live input %s: %s", self.source, self.status.error)
                    return  # nothing to retry until the user acts
                except Exception as exc:  # a vanished device or file, a dropped stream, a corrupt packet...
                    self._failed(exc, backoff)
                self._stopped()
                if stop.is_set():
                    break
                self.status.restarts += 1
                if time.monotonic() - started > 10 * backoff:
                    backoff = BACKOFF_START_S  # it ran a good while: start the backoff over
                stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
        finally:
            self._stopped()
            self.finished.set()

    def _stopped(self) -> None:
        """The status of a source not playing: not running, and nothing raised (a running floor's gain reads 0 until
        input is fed again; a capture reopened soon goes on where it was, see the class)."""
        self.status.running = False
        if self.status.gain_db is not None:
            self.status.gain_db = 0.0


class LiveCapture(LiveSource):
    """Capture from a PortAudio input device and drive a :class:`LiveTagger`, reopening on failure.

    Args:
        device: a PortAudio device name (substring) or index; "" for the default input.
        buffer_seconds: the ring buffer between the audio callback and the tagger, seconds.
        sample_rate, channels: 0 for the device's own.
        level_floor: raise input under the model's level floor (see :class:`LiveSource`).
    """

    def __init__(self, tagger: Tagger, sink: LiveSink, source: str = "live",
                 device: str = "", changes: ChangeSettings | None = None,
                 block_seconds: float = 0.05, buffer_seconds: float = 30.0, sample_rate: int = 0,
                 channels: int = 0, top_k: int = 5, level_floor: bool = True) -> None:
        super().__init__(tagger, sink, source, changes, block_seconds, top_k, level_floor)
        self.device: int | str | None = (int(device) if device.isdigit() else device) if device else None
        self.buffer_seconds = buffer_seconds
        self.sample_rate = sample_rate
        self.channels = channels
        self._reported = ""  # the last problem logged as a warning

    def _once(self, stop: threading.Event) -> bool:
        self._capture(stop)
        self._reported = ""
        return False  # the stream ended (the device failed) or the daemon stops: reopen unless stopping

    def _failed(self, exc: Exception, backoff: float) -> None:
        self.status.error = self._explain(exc)
        # Once per distinct problem (a missing device would otherwise fill the journal), then quietly
        # retried with a growing pause; `status` messages carry the error meanwhile.
        level = logging.WARNING if self.status.error != self._reported else logging.DEBUG
        log.log(level, "live input %s: %s; trying again with growing pauses (up to %.0f s)", self.source,
                self.status.error, BACKOFF_MAX_S)
        self._reported = self.status.error

    def _explain(self, exc: Exception) -> str:
        """One line a user can act on, for what PortAudio or sounddevice raised."""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "querying device -1" in text or "no default" in text.lower():
            return ("no audio input device (PortAudio sees none: is PulseAudio or ALSA set up for this user? "
                    "`python3 -m sounddevice` lists the devices)")
        if isinstance(exc, ValueError) and "No input device matching" in text:
            return f"no input device matching {self.device!r} (`python3 -m sounddevice` lists the devices)"
        return f"{type(exc).__name__}: {text}"

    def _capture(self, stop: threading.Event) -> None:
        try:
            import sounddevice as sd
        except ImportError:
            raise LiveUnavailable("live capture needs sounddevice: pip install 'genre-tagger[live]'") from None
        # The capture closes its own streams (below, always). sounddevice's exit handler would stop and close the last
        # one again from the main thread at exit and then terminate PortAudio: measured, SIGTERM during a stall then
        # ended in "double free or corruption" (racing the capture's close), and with a close left hanging the daemon
        # never exited. The process's end frees the device.
        atexit.unregister(getattr(sd, "_exit_handler", lambda: None))

        info = sd.query_devices(self.device, kind="input")
        rate = self.sample_rate or int(info["default_samplerate"])
        channels = self.channels or max(1, min(2, int(info["max_input_channels"])))
        ring = RingBuffer(int(self.buffer_seconds * rate), channels)
        live = self._tagger(rate, (str(info["name"]), rate, channels))
        failed = threading.Event()

        def callback(indata: np.ndarray, frames: int, time_info, status) -> None:
            if status.input_overflow:
                ring.overflows += 1
            ring.write(indata)

        # Opened and started by hand, and left by _close: the context manager's exit drains the stream (Pa_StopStream),
        # which waits for as long as the device delivers nothing (measured: until a suspended PulseAudio sink resumes).
        stream = sd.InputStream(device=self.device, samplerate=rate, channels=channels, dtype="float32",
                                blocksize=max(1, int(self.block_seconds * rate)), callback=callback,
                                finished_callback=failed.set)
        try:
            stream.start()
            self.status.device = str(info["name"])
            log.info("live input %s: %s at %d Hz, %d channels", self.source, info["name"], rate, channels)
            idle_since = time.monotonic()
            while not stop.is_set() and not failed.is_set():
                block = ring.read()
                self.status.overflows = ring.overflows
                if block.shape[0]:
                    idle_since = time.monotonic()
                    if not self.status.running:  # running once audio comes (a reopened stall: not before)
                        self.status.running, self.status.error, self.status.stalled_since = True, "", None
                    self._feed(live, block, ring.last_write_time)
                elif time.monotonic() - idle_since > max(STALL_S, 20 * self.block_seconds):
                    stalled = RuntimeError("the input device delivers no audio")
                    if self.status.stalled_since is None:  # else still stalled since then, through the reopens
                        self.status.stalled_since = idle_since
                    self._stopped()  # said now, not once the stream is closed
                    self.status.error = self._explain(stalled)
                    raise stalled
                else:
                    time.sleep(min(0.005, self.block_seconds / 4))
        finally:
            self._close(stream)
        if failed.is_set() and not stop.is_set():
            raise RuntimeError("the input stream stopped (device lost?)")

    def _close(self, stream: sounddevice.InputStream) -> None:
        """Abort and close ``stream`` (nothing to drain: an input's pending blocks are dropped), waiting at most
        ``CLOSE_WAIT_S``: a close that hangs longer is left to a daemon thread, counted and logged once."""

        def close() -> None:
            stream.abort()
            stream.close()

        closer = threading.Thread(target=close, name=f"live-{self.source}-close", daemon=True)
        closer.start()
        closer.join(CLOSE_WAIT_S)
        if closer.is_alive():
            self.status.hung_closes += 1
            if self.status.hung_closes == 1:
                log.warning("live input %s: closing the audio stream hangs (%.0f s so far); left to finish in the "
                            "background, the device is reopened (status hung_closes counts these)", self.source,
                            CLOSE_WAIT_S)
