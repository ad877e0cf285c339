"""The daemon's events: what happened, as frozen dataclasses every sink receives.

Each event keeps the objects it was made from (a :class:`tagger.pipeline.TrackResult`, the live
ensemble's :class:`tagger.ensemble.OutputEstimate` s) so that a sink can decide on them directly, and
``as_message()`` gives the one JSON form, ``(topic, dict)``, that ``service/schema/messages-v1.json``
validates once a publisher adds ``schema`` and ``seq``. The dict is built on first use and cached:
the ZeroMQ sink (in the producer's thread) and a queued sink (in its own thread) share it, so it must
be treated as read-only. Times are seconds; ``ts`` is Unix time when the event was made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: importing the events stays cheap (no numpy, no ONNX Runtime)
    import numpy as np

    from tagger.ensemble import OutputEstimate
    from tagger.pipeline import SliceResult, TrackResult

Message = tuple[str, dict[str, Any]]


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class TrackDone:
    """A file of the library was tagged (``result``) or failed (``error``); already in the library.

    Attributes:
        track_id: the library's row id.
        path: the file.
        result: the tagging result; None when the file failed.
        error: why it failed ('' when it was tagged).
        top_k: labels per output in the message.
    """

    track_id: int
    path: str
    result: TrackResult | None = None
    error: str = ""
    top_k: int = 5
    ts: float = field(default_factory=_now)

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def music(self) -> bool:
        """False when the model heard no music (contract §1); True for models without a detector."""
        return self.result.music if self.result is not None else True

    @cached_property
    def _message(self) -> dict[str, Any]:
        if self.result is None:
            return {"type": "track", "ts": self.ts, "path": self.path, "ok": False, "status": "error",
                    "error": self.error, "track_id": self.track_id}
        fields = self.result.as_dict(self.top_k)
        fields.pop("ok", None)
        return {"type": "track", "ts": self.ts, "ok": True, "status": "tagged", "track_id": self.track_id, **fields}

    def as_message(self) -> Message:
        return "track", self._message


@dataclass(frozen=True)
class LiveUpdate:
    """One hop of a live source: the slices it completed and the running ensemble after them.

    Attributes:
        source: the live source's name (topic ``live.<source>``).
        stream_s: audio seconds received since the source started.
        horizon_s: the running ensemble's span in seconds (None: the whole stream).
        slices: the slices completed at this hop.
        estimates: each output's running estimate.
        labels: each output's labels, in the order of the slices' probability vectors.
        top_k: labels per output in the message.
        music: False when the model hears no music (then ``top`` is "no music"); True without a detector.
        music_probability: the detector's mean probability of music over the horizon (None without one).
        latency_ms: from the newest block's capture to this event (None when unknown).
    """

    source: str
    stream_s: float
    horizon_s: float | None
    slices: Sequence[SliceResult]
    estimates: Mapping[str, OutputEstimate]
    labels: Mapping[str, Sequence[str]]
    top_k: int = 5
    music: bool = True
    music_probability: float | None = None
    latency_ms: float | None = None
    ts: float = field(default_factory=_now)

    @property
    def first(self) -> OutputEstimate:
        """The first output's estimate (the one ``top`` and ``confidence`` come from)."""
        return next(iter(self.estimates.values()))

    @property
    def top(self) -> str:
        """The first output's top genre, or "no music" (tagger.ensemble.NO_MUSIC) when it is not music."""
        return self.first.top if self.music else "no music"

    @property
    def confidence(self) -> float:
        """The top genre's probability; for "no music", the probability that it is not music."""
        if not self.music:
            return 1.0 - (self.music_probability or 0.0)
        return float(self.first.confidence)

    @property
    def uncertain(self) -> bool:
        return bool(self.first.uncertain)

    @cached_property
    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "live", "ts": self.ts, "source": self.source, "stream_s": round(self.stream_s, 3),
            "horizon_s": self.horizon_s,
            "slices": [{"view": r.view, "start_s": round(r.start_s, 3), "end_s": round(r.end_s, 3),
                        "probabilities": {out: _scores(self.labels[out], p) for out, p in r.probabilities.items()}}
                       for r in self.slices],
            "ensemble": {name: est.as_dict(self.top_k) for name, est in self.estimates.items()},
            "top": self.top, "confidence": round(self.confidence, 6), "music": self.music,
            "music_probability": None if self.music_probability is None else round(self.music_probability, 6),
        }
        if self.latency_ms is not None:
            message["latency_ms"] = round(self.latency_ms, 3)
        return message

    def as_message(self) -> Message:
        return f"live.{self.source}", self._message


@dataclass(frozen=True)
class GenreChanged:
    """The label of a live source changed (decided by service.live.ChangeDetector).

    Attributes:
        previous: the genre before (None at the start of the stream).
        current: the new genre, or "no music".
        confidence: the current genre's probability (of no music, for "no music").
        uncertain: whether the new genre is not decided (a genre the music left, withdrawn: ``current`` is
            the likeliest other one; music back after "no music" before its genre is decided); a sink that
            writes a genre somewhere (a file, Icecast) must not write an uncertain one (contract §3).
        music: False when the change is to "no music".
        previous_uncertain: whether ``previous`` was announced as uncertain (so "rock" → "rock" is an
            uncertain rock now decided, not a repeat).
    """

    source: str
    stream_s: float
    previous: str | None
    current: str
    confidence: float
    uncertain: bool = False
    music: bool = True
    previous_uncertain: bool = False
    ts: float = field(default_factory=_now)

    @property
    def trustworthy(self) -> bool:
        """A genre a sink may present as fact: music, and decided (not uncertain)."""
        return self.music and not self.uncertain

    @cached_property
    def _message(self) -> dict[str, Any]:
        return {"type": "genre_changed", "ts": self.ts, "source": self.source, "stream_s": round(self.stream_s, 3),
                "previous": self.previous, "current": self.current, "confidence": round(self.confidence, 6),
                "uncertain": self.uncertain, "music": self.music, "previous_uncertain": self.previous_uncertain}

    def as_message(self) -> Message:
        return f"change.{self.source}", self._message


@dataclass(frozen=True)
class Status:
    """The daemon's heartbeat.

    Attributes:
        uptime_s: seconds since start. queue_depth: files waiting. tagged, errors: files since start.
        audio_seconds: audio tagged since start. realtime_factor: audio seconds tagged per wall second
        since the last heartbeat. dropped_messages: events some consumer missed (every sink's drops;
        for ZeroMQ subscribers a lower bound: a full subscriber queue is reported once each time it fills).
        live: per live source, its capture status. sinks: per sink, its counts (see SinkHub.counts).
        library: while the library cannot be written, why and for how long ("library locked by another
        process for 42 s"); None when it is writable.
        tag_writes_owed: genre writes into files recorded as owed and not yet made (the tags sink makes
        them; while file tagging is off they wait). None: not counted.
    """

    uptime_s: float
    queue_depth: int
    tagged: int
    errors: int
    audio_seconds: float
    realtime_factor: float
    provider: str
    model: str
    dropped_messages: int = 0
    live: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sinks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    library: str | None = None
    tag_writes_owed: int | None = None
    ts: float = field(default_factory=_now)

    @cached_property
    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "status", "ts": self.ts, "uptime_s": round(self.uptime_s, 3), "queue_depth": self.queue_depth,
            "tagged": self.tagged, "errors": self.errors, "audio_seconds": round(self.audio_seconds, 3),
            "realtime_factor": round(self.realtime_factor, 3), "provider": self.provider, "model": self.model,
            "dropped_messages": self.dropped_messages}
        if self.live:
            message["live"] = {name: dict(s) for name, s in self.live.items()}
        if self.sinks:
            message["sinks"] = {name: dict(s) for name, s in self.sinks.items()}
        if self.library:
            message["library"] = self.library
        if self.tag_writes_owed is not None:
            message["tag_writes_owed"] = self.tag_writes_owed
        return message

    def as_message(self) -> Message:
        return "status", self._message


Event = TrackDone | LiveUpdate | GenreChanged | Status


def _scores(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    return {label: round(float(p), 6) for label, p in zip(labels, probs, strict=True)}
