"""How fast live tagging follows the music, and how often it changes its mind on one song: measured.

Streams are built from shared clips: for switches, a segment of one clip followed by one of another
whose own (file-level) genre differs, both decided (an uncertain genre is never announced, so a switch
to it has nothing to arrive at); for steadiness, every clip and track on its own. Each stream is fed
through the runtime's live path once (``Tagger.stream(eager=True, fast=True)``, 0.25 s blocks) and every
update's slices are cached on disk (per model file); then each candidate setting replays those slices
through the same :class:`tagger.ensemble.Ensemble`, music test and :class:`service.live.ChangeDetector`
the daemon uses, so many settings cost one pass of the model.

Against fitting to the test, the artists are split in two halves (GTZAN's ``artist`` column, the FMA
clips' ID3 artist, each realworld package one composer): settings are chosen on the tuning half's
streams only, then reported on the held-out half and on all streams.

Out of fold for the model too (the default): the shipped genre head and music detector were trained on every
labelled clip, the GTZAN clips these streams are made of included, so each half's streams (all of them: switches,
single clips and tracks, talk, non-music) are recorded with, and its clips' own labels taken from, the shipped
recipe retrained without that half's artists (:mod:`training.live_models`). What those models still share with
the shipped one is listed in :data:`HALF_MODEL_LEAKS`. ``--in-sample`` records everything with the shipped model
itself, as this measurement did before (optimistic for new artists).

- switch delay: from the switch to the first ``genre_changed`` naming the second clip's own genre (a
  switch never announced within the second clip counts as its length, and is reported as missed);
- changes to a third genre: in switch streams, changes to a label that is neither clip's;
- spurious changes: ``genre_changed`` claims (a decided genre or "no music") on a single-track stream after
  its first one (counts, streams with any, and per hour of audio); an uncertain genre (a withdrawal, music
  back undecided after "no music") claims no genre and is counted apart, but a listener sees it: every
  announcement after the first, uncertain ones and a withdrawn genre claimed again included, is counted in
  ``*_shown_changes``;
- after a switch, also: the first clip's genre claimed again (``first_claimed_again``), uncertain
  announcements of a third genre (``uncertain_third_genre``), and how long the first clip's genre is shown as
  decided, to the end of its last showing (``stale_*``);
- music called no music: how long "no music" is the announced label on those (all music) streams;
- talk: from the talk's start to "no music"; back to music: to the second clip's decided genre, and to any
  music announcement (uncertain too); music claimed during talk after "no music".

Each slice's level (RMS over its window, dBFS) is computed from the stream's audio (it is not in the cache),
for ``quiet_dbfs``: quiet windows that still decide the current genre are a quiet passage, not "no music".

    nice -n 10 python -m training.live_eval --data ../shared/data --out models/msd-musicnn-gtzan.live.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from service.live import ChangeDetector, ChangeSettings, Window
from tagger.decode import decode_file
from tagger.ensemble import NO_MUSIC, Ensemble
from tagger.pipeline import Tagger
from training.negatives import ESPEAK_VOICES, SPEECH_TEXTS, NonMusic, all_non_music, espeak

BLOCK_SECONDS = 0.25
SEGMENT_SECONDS = 30.0  # an FMA clip or a realworld track's stretch in a switch stream
GTZAN_SECONDS = 15.0  # a GTZAN clip's stretch in a switch stream (every clip has at least 15 s)
REALWORLD_OFFSET_S = 30.0  # a realworld track's stretch starts here (its intro skipped)
TALK_SECONDS = 15.0  # at most this much speech in a talk stream
NONMUSIC_SECONDS = 15.0  # a non-music clip after music, repeated to this length
SWITCH_JITTER_S = 2.56  # the first clip's stretch is shortened by up to this (the switch's phase in the hops)
SEED = 20261129


@dataclass
class Recording:
    """One stream's slices, in the order the live path reported them.

    Attributes:
        name: what the stream is made of.
        t: per slice, the stream time (s) of the update that reported it.
        view: per slice, the index of its view in ``Tagger.views``.
        end: per slice, where it ends in the stream (s).
        genre: per slice, the genre output's probabilities [n, labels].
        music: per slice, the music detector's probability of music [n] (ones without a detector).
        seconds: the stream's length (s).
        switch_s: where the second clip starts (switch streams).
        first, second: the clips' own labels (switch streams).
        artists: the artists heard in the stream.
        level: per slice, its RMS level in dBFS (computed from the audio, never cached).
    """

    name: str
    t: np.ndarray
    view: np.ndarray
    end: np.ndarray
    genre: np.ndarray
    music: np.ndarray
    seconds: float
    switch_s: float | None = None
    first: str = ""
    second: str = ""
    artists: tuple[str, ...] = ()
    back_s: float | None = None
    level: np.ndarray | None = None

    def updates(self) -> Iterable[tuple[float, np.ndarray]]:
        """(stream time, indices of the slices reported then) per update."""
        if not self.t.size:
            return
        cuts = np.flatnonzero(np.diff(self.t)) + 1
        for idx in np.split(np.arange(self.t.size), cuts):
            yield float(self.t[idx[0]]), idx


def _levels(tagger: Tagger, audio: np.ndarray, view: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Each slice's RMS level (dBFS) over its window of ``audio`` (as service.live.LiveTagger measures it)."""
    rate = tagger.sample_rate
    window = np.array([tagger.manifest.view_seconds(v)[0] for v in tagger.views])
    power = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    b = np.clip(np.round(end * rate).astype(np.int64), 0, audio.size)
    a = np.clip(np.round((end - window[view.astype(np.int64)]) * rate).astype(np.int64), 0, audio.size)
    mean = np.divide(power[b] - power[a], b - a, out=np.zeros(b.size), where=b > a)
    return np.maximum(-200.0, 10.0 * np.log10(np.maximum(mean, 1e-20)))


def model_id(tagger: Tagger) -> str:
    """The model file's identity (the first 16 hex digits of its SHA-1): recordings are kept per model."""
    return hashlib.sha1(Path(tagger.engine.path).read_bytes()).hexdigest()[:16]


def recording_folder(root: Path, tagger: Tagger) -> Path:
    """Where the recordings of ``tagger``'s model are kept under ``root``: one folder per model file, so a
    recording made with one model is never replayed as another's."""
    return root / model_id(tagger)


def record(tagger: Tagger, audio: np.ndarray, name: str, block_seconds: float = BLOCK_SECONDS,
           cache: Path | None = None) -> Recording:
    """Feed ``audio`` through the live path in blocks; every slice's outputs (cached under ``cache``) and
    levels."""
    path = None
    if cache is not None:
        key = hashlib.sha1(f"{name}|{block_seconds}|".encode() + np.ascontiguousarray(audio).tobytes())
        path = cache / f"{key.hexdigest()[:20]}.npz"
        if path.is_file():
            z = np.load(path)
            return Recording(name, z["t"], z["view"], z["end"], z["genre"], z["music"], float(z["seconds"]),
                             level=_levels(tagger, audio, z["view"], z["end"]))
    genre = tagger.manifest.genre_outputs[0].name
    detector = tagger.manifest.music
    views = [v.name for v in tagger.views]
    stream = tagger.stream(horizon_seconds=None, eager=True, fast=tagger.fast)
    step = int(block_seconds * tagger.sample_rate)
    rows = []
    for start in range(0, audio.size, step):
        for r in stream.feed(audio[start:start + step]):
            music = float(r.probabilities[detector.output][0]) if detector is not None else 1.0
            rows.append((stream.seconds_in, views.index(r.view), r.end_s, r.probabilities[genre], music))
    n_labels = len(tagger.manifest.genre_outputs[0].labels)
    rec = Recording(name, np.array([r[0] for r in rows], dtype=np.float64),
                    np.array([r[1] for r in rows], dtype=np.int8), np.array([r[2] for r in rows], dtype=np.float64),
                    np.array([r[3] for r in rows], dtype=np.float32).reshape(-1, n_labels),
                    np.array([r[4] for r in rows], dtype=np.float32), audio.size / tagger.sample_rate)
    rec.level = _levels(tagger, audio, rec.view, rec.end)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, t=rec.t, view=rec.view, end=rec.end, genre=rec.genre, music=rec.music, seconds=rec.seconds)
    return rec


class Rule(Protocol):
    """A decision rule other than the daemon's (:mod:`training.live_bound`'s rule families): measured by
    :func:`measure` as the daemon's settings are, from the same recordings."""

    def events(self, rec: Recording, tagger: Tagger) -> list[tuple[float, str, bool]]:
        """The announcements (stream time in seconds, new label, uncertain) the rule makes over ``rec``."""
        ...


def replay(rec: Recording, tagger: Tagger, settings: ChangeSettings | Rule) -> list[tuple[float, str, bool]]:
    """The ``genre_changed`` events (stream time, new label, uncertain) the daemon would announce with
    ``settings`` (as :class:`service.live.LiveTagger` does, from the slices alone); or, for a :class:`Rule`,
    the rule's own."""
    if not isinstance(settings, ChangeSettings):
        return settings.events(rec, tagger)
    manifest = tagger.manifest
    views = [v.name for v in tagger.views]
    genre = manifest.genre_outputs[0]
    detector = manifest.music
    kept = [o for o in manifest.outputs if o.name == genre.name or (detector and o.name == detector.output)]
    ensemble = Ensemble(kept, views, settings.horizon_seconds)
    changes = ChangeDetector(settings, genre.labels, tagger.threshold,
                             [v.name for v in sorted(tagger.views, key=lambda v: v.window_frames)],
                             detector.threshold if detector is not None else 0.5)
    events = []
    for t, idx in rec.updates():
        slices = []
        for i in idx:
            probs = {genre.name: rec.genre[i]}
            if detector is not None:
                probs[detector.output] = rec.music[i:i + 1]
            ensemble.add(views[rec.view[i]], float(rec.end[i]), probs)
            slices.append(Window(views[rec.view[i]], float(rec.end[i]), rec.genre[i],
                                 float(rec.music[i]) if detector is not None else None,
                                 float(rec.level[i]) if rec.level is not None else None))
        mean = ensemble.combined(genre.name)
        best = int(np.argmax(mean))
        # As service.live.LiveTagger: an uncertain genre is no label to announce.
        label: str | None = genre.labels[best] if mean[best] >= tagger.threshold else None
        if detector is not None and ensemble.combined(detector.output)[0] < detector.threshold:
            label = NO_MUSIC
        change = changes.update(label, slices)
        if change:
            events.append((t, change[1], changes.uncertain))
    return events


@dataclass
class Clip:
    """A shared clip or track: its stretch for switch streams, its own label, its artist."""

    name: str
    artist: str
    segment: np.ndarray
    whole: np.ndarray
    label: str = ""
    decided: bool = False


def _gtzan_artists(data: Path) -> dict[str, str]:
    from training.datasets import load_gtzan_by_artist

    return {f"gtzan/{Path(t.path).stem}": t.group for t in load_gtzan_by_artist([data / "gtzan"])}


def load_clips(data: Path, rate: int) -> list[Clip]:
    """Every shared clip with a stretch to switch between: the first 15 s of each ``gtzan/`` clip (their
    genres are clear to the model, so a switch has a genre to arrive at), 30 s of each FMA clip, and 30 s
    of each realworld track from 30 s in (its intro skipped); ``whole`` is the clip or track itself."""
    from mutagen import File as MutagenFile

    from tagger.cli import iter_audio_files

    artists = _gtzan_artists(data)
    clips = []
    for path in iter_audio_files([str(data / "gtzan")]):
        name = f"gtzan/{path.stem}"
        audio = decode_file(path, rate)
        clips.append(Clip(name, artists[name], audio[: int(GTZAN_SECONDS * rate)], audio))
    for path in iter_audio_files([str(data / "fma")]):
        tags = MutagenFile(path, easy=True)
        artist = (tags.get("artist") or [path.stem])[0] if tags is not None else path.stem
        audio = decode_file(path, rate)
        clips.append(Clip(f"fma/{path.name}", f"fma:{artist}", audio[: int(SEGMENT_SECONDS * rate)], audio))
    for path in iter_audio_files([str(data / "realworld")]):
        audio = decode_file(path, rate)
        a = int(REALWORLD_OFFSET_S * rate) if audio.size > (REALWORLD_OFFSET_S + SEGMENT_SECONDS) * rate else 0
        package = path.relative_to(data / "realworld").parts[0]  # one composer per package
        clips.append(Clip(f"realworld/{path.relative_to(data / 'realworld')}", f"realworld:{package}",
                          audio[a:a + int(SEGMENT_SECONDS * rate)], audio))
    return clips


def own_label(tagger: Tagger, audio: np.ndarray) -> tuple[str, bool]:
    """The clip's own label (the file-level top genre, or "no music") and whether it is decided."""
    stream = tagger.stream(eager=False, fast=tagger.fast)
    stream.feed(audio)
    estimate = stream.finish()[tagger.manifest.genre_outputs[0].name]
    return (estimate.top, not estimate.uncertain) if stream.music() else (NO_MUSIC, True)


def split_artists(clips: Sequence[Clip], seed: int = SEED) -> dict[str, int]:
    """Half 0 (tuning) or 1 (held out) per artist: within each source and label, the artists shuffled and
    dealt alternately, so both halves get every genre and source."""
    rng = np.random.default_rng(seed)
    by_key: dict[tuple[str, str], list[str]] = {}
    for c in clips:
        by_key.setdefault((c.name.split("/")[0], c.label), [])
        if c.artist not in by_key[(c.name.split("/")[0], c.label)]:
            by_key[(c.name.split("/")[0], c.label)].append(c.artist)
    half: dict[str, int] = {}
    counts = [0, 0]
    for key in sorted(by_key):
        artists = [a for a in by_key[key] if a not in half]
        rng.shuffle(artists)
        for a in artists:
            h = int(np.argmin(counts)) if counts[0] != counts[1] else int(rng.integers(2))
            half[a] = h
            counts[h] += sum(1 for c in clips if c.artist == a)
    return half


def choose_pairs(clips: Sequence[Clip], n: int, rng: np.random.Generator, same: bool = False
                 ) -> list[tuple[Clip, Clip]]:
    """Ordered pairs of clips by different artists, both decided genres: about ``n`` whose own genres differ
    (every clip second in turn; the first clip's genre drawn evenly from those whose clips are not used
    more than 2 times over the least used, then its least used clip, so that neither a clip nor a genre
    dominates although GTZAN is mostly classical), or with ``same``, one pair of the same genre per clip
    where there is one."""
    decided = [c for c in clips if c.decided and c.label != NO_MUSIC]
    by_label: dict[str, list[Clip]] = {}
    for c in decided:
        by_label.setdefault(c.label, []).append(c)
    used = dict.fromkeys((c.name for c in decided), 0)
    pairs = []
    rounds = 1 if same else max(1, -(-n // max(1, len(decided))))
    for _ in range(rounds):
        for b in rng.permutation(np.array(decided, dtype=object)):
            labels = [b.label] if same else sorted(label for label in by_label if label != b.label)
            eligible = [a for label in labels for a in by_label[label] if a.artist != b.artist]
            if not eligible:
                continue
            # A genre at random among those whose clips are not used much more than the least used one.
            least = min(used[a.name] for a in eligible)
            open_labels = sorted({a.label for a in eligible if used[a.name] <= least + 2})
            label = open_labels[int(rng.integers(len(open_labels)))]
            firsts = [a for a in eligible if a.label == label]
            fewest = min(used[a.name] for a in firsts)
            pick = [a for a in firsts if used[a.name] == fewest]
            a = pick[int(rng.integers(len(pick)))]
            used[a.name] += 1
            pairs.append((a, b))
    return pairs if same else pairs[:n]


@dataclass
class Streams:
    """The recorded streams of one artist half (or of all)."""

    switches: list[Recording] = field(default_factory=list)
    steady: list[Recording] = field(default_factory=list)  # single clips, and pairs of one genre
    talks: list[Recording] = field(default_factory=list)  # music, talk from ``switch_s`` to ``back_s``, music
    nonmusic: list[Recording] = field(default_factory=list)  # music, then a non-music clip from ``switch_s``

    def __add__(self, other: Streams) -> Streams:
        return Streams(self.switches + other.switches, self.steady + other.steady, self.talks + other.talks,
                       self.nonmusic + other.nonmusic)


def talk_voices(h: int) -> list[tuple[str, str, str]]:
    """Half ``h``'s talk: (language, text, espeak voice) for every other voice of every language of
    :data:`training.negatives.SPEECH_TEXTS` (half the voices per half), in the order its streams are built."""
    return [(language, text, voice) for i, (language, text) in enumerate(sorted(SPEECH_TEXTS.items()))
            for j, voice in enumerate(ESPEAK_VOICES) if (i * len(ESPEAK_VOICES) + j) % 2 == h]


def nonmusic_of_half(negatives: Sequence[NonMusic], h: int) -> list[NonMusic]:
    """Half ``h``'s non-music streams' sounds: every other clip of ``negatives``."""
    return [clip for k, clip in enumerate(negatives) if k % 2 == h]


def held_out_sounds(negatives: Sequence[NonMusic]) -> list[set[str]]:
    """Per half, the non-music clips (``clip_id``) its model must not train on: those its non-music streams play,
    and the synthetic speech of its talk streams' languages and voices (the same text and voice as a training
    clip, at most 10 words a minute apart)."""
    out = []
    for h in (0, 1):
        talk = {(language, f"espeak:{voice.lstrip('+') or 'default'}") for language, _, voice in talk_voices(h)}
        out.append({c.clip_id for c in nonmusic_of_half(negatives, h)}
                   | {n.clip_id for n in negatives if n.kind == "synthetic speech" and (n.language, n.voice) in talk})
    return out


def build_streams(taggers: Sequence[Tagger], clips: Sequence[Clip], half: dict[str, int], pairs_per_half: int,
                  cache: Path | None, progress: Callable[[str], None] = print,
                  negatives: Sequence[NonMusic] = ()) -> list[Streams]:
    """Per artist half: switch streams (pairs within the half), talk and non-music streams (every other
    voice and clip of ``negatives``), and every clip of the half on its own; each half's streams recorded with
    its own model (``taggers[h]``), under ``cache``/<model> (:func:`recording_folder`)."""
    rate = taggers[0].sample_rate
    rng = np.random.default_rng(SEED)
    halves = []
    for h in (0, 1):
        tagger = taggers[h]
        folder = recording_folder(cache, tagger) if cache is not None else None
        mine = [c for c in clips if half[c.artist] == h]
        streams = Streams()
        for same in (False, True):
            for a, b in choose_pairs(mine, pairs_per_half, rng, same):
                # The switch falls anywhere within a hop of either view (2.56 s covers both).
                first = a.segment[: a.segment.size - int(rng.uniform(0.0, SWITCH_JITTER_S) * rate)]
                rec = record(tagger, np.concatenate([first, b.segment]), f"{a.name} → {b.name}", cache=folder)
                rec.switch_s, rec.first, rec.second = first.size / rate, a.label, b.label
                rec.artists = (a.artist, b.artist)
                (streams.steady if same else streams.switches).append(rec)
        decided = [c for c in mine if c.decided and c.label != NO_MUSIC]
        for language, text, voice in talk_voices(h):
            speech = espeak(text, language, voice, rate)[: int(TALK_SECONDS * rate)]
            a, b = (decided[k] for k in rng.choice(len(decided), 2, replace=False))
            first = a.segment[: a.segment.size - int(rng.uniform(0.0, SWITCH_JITTER_S) * rate)]
            rec = record(tagger, np.concatenate([first, speech, b.segment]),
                         f"{a.name} → espeak {language}{voice} → {b.name}", cache=folder)
            rec.switch_s, rec.back_s = first.size / rate, (first.size + speech.size) / rate
            rec.first, rec.second, rec.artists = a.label, b.label, (a.artist, b.artist)
            streams.talks.append(rec)
        # Every other non-music clip (noise, hum, tones, speech, effects: training/negatives.py) after music,
        # repeated to NONMUSIC_SECONDS: "no music" must be said for all of them, not only for talk.
        # Their own generator, so that the streams above stay the ones measured before they were added.
        quiet_rng = np.random.default_rng(SEED + 1 + h)
        length = int(NONMUSIC_SECONDS * rate)
        for clip in nonmusic_of_half(negatives, h):
            a = decided[int(quiet_rng.integers(len(decided)))]
            first = a.segment[: a.segment.size - int(quiet_rng.uniform(0.0, SWITCH_JITTER_S) * rate)]
            sound = clip.make(rate)
            sound = np.tile(sound, -(-length // max(1, sound.size)))[:length]
            rec = record(tagger, np.concatenate([first, sound]), f"{a.name} → {clip.clip_id}", cache=folder)
            rec.switch_s, rec.first, rec.artists = first.size / rate, a.label, (a.artist,)
            streams.nonmusic.append(rec)
        for c in mine:
            rec = record(tagger, c.whole, c.name, cache=folder)
            rec.first, rec.artists = c.label, (c.artist,)
            streams.steady.append(rec)
        progress(f"half {h}: {len(streams.switches)} switch streams, {len(streams.talks)} talk streams, "
                 f"{len(streams.nonmusic)} non-music streams, "
                 f"{len(streams.steady)} single-genre streams "
                 f"({sum(r.seconds for r in streams.steady) / 60:.1f} min)")
        halves.append(streams)
    return halves


def _claims(events: Sequence[tuple[float, str, bool]]) -> list[tuple[float, str]]:
    """The claims among ``events`` that change what was claimed: decided genres and "no music" (an
    uncertain genre claims no genre; a genre claimed again after it was withdrawn is counted as a
    withdrawal, :func:`_withdrawals`)."""
    claims: list[tuple[float, str]] = []
    for t, label, uncertain in events:
        if not uncertain and (not claims or claims[-1][1] != label):
            claims.append((t, label))
    return claims


def _withdrawals(events: Sequence[tuple[float, str, bool]]) -> int:
    """Decided genres withdrawn (an uncertain announcement right after a decided genre)."""
    return sum(1 for (_, a, ua), (_, _, ub) in itertools.pairwise(events) if a != NO_MUSIC and not ua and ub)


def _stale(events: Sequence[tuple[float, str, bool]], switch_s: float, first: str, seconds: float) -> float:
    """How long (s) after ``switch_s`` the first clip's genre is still shown as decided, to the end of its last
    showing (a genre withdrawn, then claimed again, was shown again: the time runs on)."""
    until, showing = switch_s, False
    for t, label, uncertain in events:
        if t > switch_s and showing:
            until = t
        showing = label == first and not uncertain
    return (seconds if showing else until) - switch_s


def _shown_changes(events: Sequence[tuple[float, str, bool]]) -> int:
    """Changes of what a listener is shown after the first announcement: claims, and uncertain announcements
    (a withdrawal, music back undecided; a textfile or a display changes for each)."""
    return max(0, len(events) - 1)


def _first(events: Sequence[tuple[float, str, bool]], after: float, until: float = float("inf"), *,
           label: str | None = None, music: bool | None = None, decided: bool = False) -> float | None:
    """When (s) the first announcement in (``after``, ``until``] came: of ``label``, or music (any label but
    "no music") or not, only a decided one with ``decided``; None if none did."""
    return next((t for t, lab, uncertain in events if after < t <= until and (label is None or lab == label)
                 and (music is None or (lab != NO_MUSIC) == music) and not (decided and uncertain)), None)


def _no_music_seconds(events: Sequence[tuple[float, str, bool]], seconds: float) -> float:
    """How long (s) "no music" is the announced label over a stream of ``seconds``."""
    total, since = 0.0, None
    for t, label, _ in events:
        if label == NO_MUSIC and since is None:
            since = t
        elif label != NO_MUSIC and since is not None:
            total, since = total + t - since, None
    return total + (seconds - since if since is not None else 0.0)


def _uncertain(events: Sequence[tuple[float, str, bool]]) -> int:
    """How many of ``events`` are uncertain announcements."""
    return sum(1 for e in events if e[2])


def _switch_figures(switches: Sequence[Recording], tagger: Tagger, settings: ChangeSettings | Rule) -> tuple[dict, int]:
    """Over switch streams: the delays to the second clip's decided genre (a miss counts as the rest of the
    stream), how long the first clip's genre is still shown, changes to a third genre; and the uncertain
    announcements heard."""
    delays, missed, wrong, uncertain, stale, wrong_uncertain, reclaimed = [], 0, 0, 0, [], 0, 0
    for rec in switches:
        assert rec.switch_s is not None
        events = replay(rec, tagger, settings)
        claims = _claims(events)
        uncertain += _uncertain(events)
        # How long the first clip's genre is still shown as decided after the switch (claimed again included).
        stale.append(_stale(events, rec.switch_s, rec.first, rec.seconds))
        # The first clip's genre claimed again after the switch (withdrawn, then back): changes shown for nothing.
        reclaimed += sum(1 for (_, a, ua), (t, b, ub) in itertools.pairwise(events)
                         if t > rec.switch_s and b == rec.first and not ub and (a != b or ua))
        wrong_uncertain += sum(1 for t, label, u in events
                               if u and t > rec.switch_s and label not in (rec.first, rec.second))
        hit = _first(events, rec.switch_s, label=rec.second, decided=True)
        if hit is None:
            missed += 1
            delays.append(rec.seconds - rec.switch_s)
        else:
            delays.append(hit - rec.switch_s)
        wrong += sum(1 for _, label in claims if label not in (rec.first, rec.second))
    d = np.array(delays) if delays else np.zeros(1)
    st = np.array(stale) if stale else np.zeros(1)
    return {"pairs": len(switches), "stale_median_s": float(np.median(st)),
            "stale_p90_s": float(np.percentile(st, 90)), "stale_worst_s": float(st.max()),
            "stale_over_8s": int((st > 8.0).sum()), "median_delay_s": float(np.median(d)),
            "p90_delay_s": float(np.percentile(d, 90)), "worst_delay_s": float(d.max()),
            "within_8s": round(float(np.mean(d <= 8.0)), 4), "missed": missed,
            "wrong_genre_changes": wrong, "uncertain_third_genre": wrong_uncertain,
            "first_claimed_again": reclaimed, "delays_s": d.round(3).tolist()}, uncertain


def _talk_figures(talks: Sequence[Recording], tagger: Tagger, settings: ChangeSettings | Rule) -> tuple[dict, int]:
    """Over music → talk → music streams: from the talk's start to "no music", music claimed during the talk
    after it, and back to music (any, and the second clip's decided genre); and the uncertain announcements."""
    talk, back, back_any, talk_missed, back_missed, talk_music, uncertain = [], [], [], 0, 0, 0, 0
    for rec in talks:
        assert rec.switch_s is not None and rec.back_s is not None
        events = replay(rec, tagger, settings)
        uncertain += _uncertain(events)
        hit = _first(events, rec.switch_s, rec.back_s + 8, label=NO_MUSIC)
        talk_missed += hit is None
        talk.append((rec.back_s - rec.switch_s) if hit is None else hit - rec.switch_s)
        if hit is not None:  # music announced (even uncertain) while the talk goes on: a false claim of music
            talk_music += sum(1 for t, label, _ in events if hit < t <= rec.back_s and label != NO_MUSIC)
        t_back = _first(events, rec.back_s, label=rec.second, decided=True)
        back_missed += t_back is None
        back.append((rec.seconds - rec.back_s) if t_back is None else t_back - rec.back_s)
        t_any = _first(events, rec.back_s, music=True)
        back_any.append((rec.seconds - rec.back_s) if t_any is None else t_any - rec.back_s)
    if not talk:
        return {}, uncertain
    return {"talks": len(talk), "talk_median_delay_s": float(np.median(talk)), "talk_worst_delay_s": max(talk),
            "talk_missed": talk_missed, "talk_music_claims": talk_music,
            "back_median_delay_s": float(np.median(back)), "back_worst_delay_s": max(back),
            "back_missed": back_missed, "back_music_median_delay_s": float(np.median(back_any)),
            "back_music_worst_delay_s": max(back_any)}, uncertain


def _nonmusic_figures(nonmusic: Sequence[Recording], tagger: Tagger, settings: ChangeSettings | Rule
                      ) -> tuple[dict, int]:
    """Over music → non-music streams: from the switch to "no music", music claimed after it; and the uncertain
    announcements."""
    quiet_delays, quiet_claims, quiet_missed, uncertain = [], 0, 0, 0
    for rec in nonmusic:
        assert rec.switch_s is not None
        events = replay(rec, tagger, settings)
        uncertain += _uncertain(events)
        hit = _first(events, rec.switch_s, label=NO_MUSIC)
        quiet_missed += hit is None
        quiet_delays.append((rec.seconds - rec.switch_s) if hit is None else hit - rec.switch_s)
        if hit is not None:  # music announced (even uncertain) after "no music": a false claim of music
            quiet_claims += sum(1 for t, label, _ in events if t > hit and label != NO_MUSIC)
    if not quiet_delays:
        return {}, uncertain
    q = np.array(quiet_delays)
    return {"nonmusic_streams": len(q), "nonmusic_median_delay_s": float(np.median(q)),
            "nonmusic_p90_delay_s": float(np.percentile(q, 90)), "nonmusic_worst_delay_s": float(q.max()),
            "nonmusic_over_8s": int((q > TALK_LIMIT_S).sum()), "nonmusic_missed": quiet_missed,
            "nonmusic_music_claims": quiet_claims}, uncertain


def _steady_kind(rec: Recording) -> str:
    """A single-genre stream's kind: "pairs" (clips of one genre back to back), "realworld" or "clips"."""
    return "pairs" if " → " in rec.name else "realworld" if rec.name.startswith("realworld/") else "clips"


def _steady_figures(steady: Sequence[Recording], tagger: Tagger, settings: ChangeSettings | Rule) -> tuple[dict, int]:
    """Over single-genre streams, in total and per kind: spurious changes (claims after the first), withdrawals,
    every change shown, hours, and how long "no music" is announced; and the uncertain announcements."""
    spurious: dict[str, list[int]] = {}
    hours: dict[str, float] = {}
    no_music_s: dict[str, list[float]] = {}
    withdrawn: dict[str, int] = {}
    shown: dict[str, int] = {}
    uncertain = 0
    for rec in steady:
        kind = _steady_kind(rec)
        events = replay(rec, tagger, settings)
        uncertain += _uncertain(events)
        withdrawn[kind] = withdrawn.get(kind, 0) + _withdrawals(events)
        shown[kind] = shown.get(kind, 0) + _shown_changes(events)
        spurious.setdefault(kind, []).append(max(0, len(_claims(events)) - 1))
        hours[kind] = hours.get(kind, 0.0) + rec.seconds / 3600
        no_music_s.setdefault(kind, []).append(_no_music_seconds(events, rec.seconds))
    total = [s for kind in spurious for s in spurious[kind]]
    quiet = [x for kind in no_music_s for x in no_music_s[kind]]
    out = {"steady_streams": len(total), "spurious_changes": int(sum(total)),
           "steady_streams_with_changes": int(sum(1 for s in total if s)),
           "steady_hours": round(sum(hours.values()), 4),
           "spurious_per_hour": round(sum(total) / max(1e-9, sum(hours.values())), 3),
           "steady_no_music_s": round(sum(quiet), 1), "steady_streams_called_no_music": sum(1 for x in quiet if x),
           "steady_withdrawals": sum(withdrawn.values()), "steady_shown_changes": sum(shown.values())}
    for kind in sorted(spurious):
        out[f"{kind}_streams"] = len(spurious[kind])
        out[f"{kind}_spurious_changes"] = int(sum(spurious[kind]))
        out[f"{kind}_streams_with_changes"] = int(sum(1 for s in spurious[kind] if s))
        out[f"{kind}_hours"] = round(hours[kind], 4)
        out[f"{kind}_no_music_s"] = round(sum(no_music_s[kind]), 1)
        out[f"{kind}_withdrawals"] = withdrawn[kind]
        out[f"{kind}_shown_changes"] = shown[kind]
    return out, uncertain


def measure(streams: Streams, tagger: Tagger, settings: ChangeSettings | Rule) -> dict:
    """Switch delays, misses and changes to a third genre over ``streams.switches``; spurious changes over
    ``streams.steady`` (in total, on GTZAN+FMA clips, and on the realworld tracks), and how long those music
    streams are announced as "no music"; talk → "no music" and back over ``streams.talks``; non-music → "no
    music" over ``streams.nonmusic``.

    Only claims count as changes (a decided genre, "no music"): an uncertain genre, announced when music
    comes back undecided after "no music", is counted apart (``uncertain_announcements``)."""
    switches, in_switches = _switch_figures(streams.switches, tagger, settings)
    talks, in_talks = _talk_figures(streams.talks, tagger, settings)
    nonmusic, in_nonmusic = _nonmusic_figures(streams.nonmusic, tagger, settings)
    steady, in_steady = _steady_figures(streams.steady, tagger, settings)
    delays = switches.pop("delays_s")
    out = switches | {"uncertain_announcements": in_switches + in_talks + in_nonmusic + in_steady,
                      "delays_s": delays}
    return out | talks | nonmusic | steady


def candidates(defaults: ChangeSettings) -> list[ChangeSettings]:
    """The settings tried: the ensemble-and-hysteresis detector alone over horizons (the previous way), and
    the evidence detector over its bound, per-window cap, drift and hysteresis (the music evidence is
    chosen after, by :func:`choose_music`; a genre's withdrawal by :func:`choose_withdraw`)."""
    grid = [replace(defaults, evidence_nats=0.0, music_evidence_nats=0.0, withdraw_nats=0.0, horizon_seconds=h,
                    hysteresis=k) for h, k in itertools.product((2.0, 3.0, 4.0, 6.0, 8.0, 15.0, 30.0), (1, 2, 3))]
    for bound, cap, drift, k in itertools.product((3.0, 4.0, 5.0, 6.0), (4.0, 6.0), (0.5, 1.0), (1, 2, 3)):
        if cap * 3 < bound:  # three windows could not reach it: slower than any other row
            continue
        grid.append(replace(defaults, evidence_nats=bound, cap_nats=cap, drift_nats=drift, hysteresis=k,
                            evidence_views="shortest"))
    return grid


WITHDRAW_BOUNDS = (0.0, 4.0, 6.0, 8.0, 10.0, 12.0)  # withdraw_nats tried


def choose_withdraw(streams: Streams, tagger: Tagger, settings: ChangeSettings,
                    bounds: Sequence[float] = WITHDRAW_BOUNDS) -> tuple[float, list[dict]]:
    """The smallest ``withdraw_nats`` (the soonest withdrawal of a genre the music left) that withdraws no
    genre on any single-genre stream of ``streams`` (the tuning half: clips, same-genre pairs and the long
    realworld tracks; a withdrawal is a change a listener sees), else 0 (never withdrawn); and every bound's
    figures. Withdrawals are no claims, so the other figures do not depend on it."""
    rows = []
    for bound in bounds:
        r = measure(streams, tagger, replace(settings, withdraw_nats=bound))
        rows.append({"withdraw_nats": bound, **{k: r[k] for k in (
            "stale_median_s", "stale_p90_s", "stale_worst_s", "stale_over_8s", "clips_withdrawals",
            "pairs_withdrawals", "realworld_withdrawals", "uncertain_announcements") if k in r}})
    quiet = [row["withdraw_nats"] for row in rows if row["withdraw_nats"] > 0
             and row.get("clips_withdrawals", 0) + row.get("pairs_withdrawals", 0)
             + row.get("realworld_withdrawals", 0) == 0]
    return (min(quiet) if quiet else 0.0), rows


MUSIC_BOUNDS = (4.0, 6.0, 9.0, 12.0)  # music_evidence_nats tried
MUSIC_DRIFTS = (0.0, 0.25, 0.5, 1.0)  # music_drift_nats tried


def music_key(r: dict) -> tuple:
    """The order of the music settings: the fewest mistakes (changes on single-genre streams, to a third
    genre, missed switches, music claimed in talk or non-music), then the fewest talk and non-music
    streams announced as "no music" late (over 8 s) or never, then their 90th percentile delay."""
    mistakes = (r["spurious_changes"] + r["wrong_genre_changes"] + r["missed"] + r.get("talk_music_claims", 0)
                + r.get("nonmusic_music_claims", 0))
    late = r.get("nonmusic_over_8s", 0) + int(r.get("talk_worst_delay_s", 0.0) > TALK_LIMIT_S) + r.get("talk_missed", 0)
    return mistakes, late, r.get("nonmusic_p90_delay_s", 0.0), r.get("talk_worst_delay_s", 0.0)


def choose_music(streams: Streams, tagger: Tagger, settings: ChangeSettings) -> tuple[ChangeSettings, list[dict]]:
    """The music evidence's bound and drift (``music_evidence_nats``, ``music_drift_nats``) first in
    :func:`music_key` over ``streams`` (the tuning half), the other settings kept; and every pair's figures."""
    rows = []
    for bound, drift in itertools.product(MUSIC_BOUNDS, MUSIC_DRIFTS):
        if bound <= settings.cap_nats - drift:  # one silent window (a pause in a song) would be "no music"
            continue
        tried = replace(settings, music_evidence_nats=bound, music_drift_nats=drift)
        rows.append((tried, measure(streams, tagger, tried)))
    rows.sort(key=lambda sr: music_key(sr[1]))
    keep = ("spurious_changes", "wrong_genre_changes", "missed", "talk_worst_delay_s", "talk_music_claims",
            "nonmusic_median_delay_s", "nonmusic_p90_delay_s", "nonmusic_over_8s", "nonmusic_missed",
            "nonmusic_music_claims", "steady_no_music_s", "back_music_median_delay_s")
    return rows[0][0], [{"music_evidence_nats": s.music_evidence_nats, "music_drift_nats": s.music_drift_nats,
                         **{k: r[k] for k in keep if k in r}} for s, r in rows]


QUIET_LEVELS = (0.0, -60.0, -55.0, -50.0, -45.0, -40.0, -35.0)  # quiet_dbfs tried (0: off)


def quiet_key(r: dict) -> tuple:
    """The order of the quiet passage levels: as :func:`music_key`, with the talk and non-music streams never
    announced as "no music" counted right after the mistakes (a stream left as its genre for good is worse than
    one announced late)."""
    mistakes, *rest = music_key(r)
    return mistakes, r.get("nonmusic_missed", 0) + r.get("talk_missed", 0), *rest


def choose_quiet(streams: Streams, tagger: Tagger, settings: ChangeSettings,
                 levels: Sequence[float] = QUIET_LEVELS) -> tuple[float, list[dict]]:
    """The level under which a window still deciding the current genre is a quiet passage (``quiet_dbfs``):
    first in :func:`quiet_key` over ``streams`` (the tuning half), the highest level among equals (the most
    quiet passages kept as music at no measured cost; 0, off, last); and every level's figures."""
    rows = [(level, measure(streams, tagger, replace(settings, quiet_dbfs=level))) for level in levels]
    rows.sort(key=lambda lr: (quiet_key(lr[1]), -lr[0] if lr[0] < 0 else float("inf")))
    keep = ("spurious_changes", "wrong_genre_changes", "missed", "worst_delay_s", "talk_median_delay_s",
            "talk_worst_delay_s", "talk_missed", "nonmusic_median_delay_s", "nonmusic_p90_delay_s",
            "nonmusic_over_8s", "nonmusic_missed", "steady_no_music_s")
    return rows[0][0], [{"quiet_dbfs": level, **{k: r[k] for k in keep if k in r}} for level, r in rows]


TARGET_MEDIAN_S = 5.0  # the switch target
TALK_LIMIT_S = 8.0  # talk must be announced as "no music" within this (tests/test_live_defaults.py)


def score_key(r: dict) -> tuple:
    """Tuning order: settings that meet the median target and announce talk in time first; then the fewest
    mistakes (changes on single-genre streams, changes to a third genre, missed switches), then the 90th
    percentile and the median delay."""
    meets = r["median_delay_s"] <= TARGET_MEDIAN_S and r.get("talk_worst_delay_s", 0.0) <= TALK_LIMIT_S
    return (not meets, r["spurious_changes"] + r["wrong_genre_changes"] + r["missed"], r["p90_delay_s"],
            r["median_delay_s"])


def _line(r: dict) -> str:
    return (f"median {r['median_delay_s']:.2f} s, p90 {r['p90_delay_s']:.2f} s, worst {r['worst_delay_s']:.2f} s, "
            f"old genre shown for median {r['stale_median_s']:.2f} s, p90 {r['stale_p90_s']:.2f} s, worst "
            f"{r['stale_worst_s']:.2f} s, "
            f"missed {r['missed']}/{r['pairs']}, third genre {r['wrong_genre_changes']}, single-genre changes "
            f"{r['spurious_changes']} on {r['steady_streams_with_changes']}/{r['steady_streams']} streams "
            f"({r['spurious_per_hour']:.1f}/h of {r['steady_hours']:.2f} h; clips {r.get('clips_spurious_changes', 0)}"
            f", same-genre pairs {r.get('pairs_spurious_changes', 0)}, realworld "
            f"{r.get('realworld_spurious_changes', 0)}), talk → no music median {r.get('talk_median_delay_s', 0):.2f}"
            f" s worst {r.get('talk_worst_delay_s', 0):.2f} s, back to music median "
            f"{r.get('back_median_delay_s', 0):.2f} s worst {r.get('back_worst_delay_s', 0):.2f} s (any music: "
            f"{r.get('back_music_median_delay_s', 0):.2f} s), music called no music {r['steady_no_music_s']:.0f} s, "
            f"withdrawals on single-genre streams {r['steady_withdrawals']} (changes shown there, uncertain "
            f"ones too: {r['steady_shown_changes']}; uncertain third genre after a switch "
            f"{r['uncertain_third_genre']}), non-music → no music median "
            f"{r.get('nonmusic_median_delay_s', 0):.2f} s p90 {r.get('nonmusic_p90_delay_s', 0):.2f} s, over 8 s "
            f"{r.get('nonmusic_over_8s', 0)} (never {r.get('nonmusic_missed', 0)}) of {r.get('nonmusic_streams', 0)}, "
            f"music claimed in talk or non-music {r.get('talk_music_claims', 0) + r.get('nonmusic_music_claims', 0)}")


def held_out_artists(half: dict[str, int]) -> list[set[str]]:
    """Per half, its artists: what that half's model (:mod:`training.live_models`) must never train on."""
    return [{a for a, h in half.items() if h == i} for i in (0, 1)]


def label_clips(clips: Sequence[Clip], taggers: Sequence[Tagger], half: dict[str, int] | None = None,
                whole_tracks: bool = False) -> None:
    """Set each clip's own label and whether it is decided (:func:`own_label` of its stretch, the audio its switch,
    talk and non-music streams play: a switch's target is what is heard, for a realworld track as for a GTZAN
    clip), by ``taggers[half[artist]]`` (or ``taggers[0]`` for every clip without ``half``). With
    ``whole_tracks``, a realworld track is labelled whole instead: the genre :func:`split_artists` deals its
    composer by (the deal only stratifies the halves; no figure is measured against it)."""
    for c in clips:
        tagger = taggers[half[c.artist]] if half is not None else taggers[0]
        whole = whole_tracks and c.name.startswith("realworld/")
        c.label, c.decided = own_label(tagger, c.whole if whole else c.segment)


def replay_tagger(taggers: Sequence[Tagger]) -> Tagger:
    """The tagger whose manifest replays every half's recordings: the halves' models must agree on what a replay
    reads (labels, views, thresholds), their heads' weights being all that differs."""
    first = taggers[0]

    def reads(t: Tagger) -> tuple:
        music = t.manifest.music
        return (t.manifest.genre_outputs[0].labels, [(v.name, v.window_frames, v.hop_frames) for v in t.views],
                t.threshold, (music.output, music.threshold) if music is not None else None, t.sample_rate)

    for t in taggers[1:]:
        if reads(t) != reads(first):
            raise ValueError(f"{t.engine.path} and {first.engine.path} differ in what a replay reads")
    return first


HALF_MODEL_LEAKS = ("the genre head's choice (space and C), its training on degraded copies and the music threshold "
                    "were chosen by the build's cross-validation over all 391 labelled clips (and the detector's C "
                    "by its cross-validation over every non-music clip); the artist halves are dealt within each "
                    "(source, label) by the shipped model's own labels")


def checked_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tagger:
    """``--model`` loaded, after the cheap checks of :func:`main`'s arguments; a bad one is ``parser.error``
    (one line naming it, exit 2) before any clip is decoded, stream recorded or model trained."""
    from tagger.errors import TaggerError

    if args.pairs < 1:
        parser.error(f"--pairs: {args.pairs}: not a positive number of switch streams")
    data = Path(args.data)
    needs = ["gtzan/labels.csv", "fma", "realworld", *([] if args.in_sample else ["gtzan-excerpts/labels.csv"])]
    missing = [need for need in needs if not (data / need).exists()]
    if missing:
        parser.error(f"--data: {args.data!r}: no {', '.join(missing)} there")
    if not args.in_sample and not Path(args.report).is_file():
        parser.error(f"--report: {args.report!r}: no such file (the per-half models retrain its recipe)")
    if not Path(args.out).parent.is_dir():
        parser.error(f"--out: {args.out!r}: no folder {str(Path(args.out).parent)!r} to write it in")
    try:
        return Tagger(args.model)
    except TaggerError as exc:
        parser.error(f"--model: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default=None,
                        help="model name or file whose labels deal the artist halves, and, with --in-sample, that "
                             "records every stream (default: the default model)")
    parser.add_argument("--in-sample", action="store_true",
                        help="record every stream with --model itself (the previous measurement: IN-SAMPLE for the "
                             "shipped genre head, which was trained on the GTZAN clips the streams are made of) "
                             "instead of each half with a model trained without that half's artists and the "
                             "sounds its streams play")
    parser.add_argument("--pairs", type=int, default=300, help="switch streams per artist half (default 300)")
    parser.add_argument("--cache", default=".cache/live-eval",
                        help="where recorded streams are kept, per model (<cache>/<model sha1>), and the per-half "
                             "models (<cache>/models; default .cache/live-eval)")
    parser.add_argument("--features", default=".cache/features",
                        help="the build's feature cache the per-half models train from, read only (default "
                             ".cache/features)")
    parser.add_argument("--packages", default=".cache/music-packages",
                        help="the packaged music the music detector trains on (default .cache/music-packages)")
    parser.add_argument("--report", default="models/msd-musicnn-gtzan.cv.json",
                        help="the shipped model's cv.json: the recipe the per-half models retrain (default "
                             "models/msd-musicnn-gtzan.cv.json)")
    parser.add_argument("--out", default="models/live-eval.json")
    args = parser.parse_args(argv)
    reference = checked_arguments(parser, args)
    from service.config import LiveSection

    started = time.perf_counter()
    data = Path(args.data)
    clips = load_clips(data, reference.sample_rate)
    label_clips(clips, [reference], whole_tracks=True)
    split_labels = {c.name: [c.label, c.decided] for c in clips}
    half = split_artists(clips)
    half_models: list[dict] = []
    negatives = all_non_music()
    if args.in_sample:
        taggers = [reference, reference]
        label_clips([c for c in clips if c.name.startswith("realworld/")], taggers)
    else:
        from training.live_models import build_half_models

        built = build_half_models(data, held_out_artists(half), held_out_sounds(negatives),
                                  Path(args.cache) / "models", Path(args.features), Path(args.packages),
                                  Path(args.report))
        taggers = [Tagger(m.path) for m in built]
        half_models = [{"file": m.path.name, "key": m.key, "model_sha1": model_id(t), "trained_on": len(m.trained_on),
                        "non_music_trained_on": len(m.non_music_trained_on), "temperature": m.temperature}
                       for m, t in zip(built, taggers, strict=True)]
        label_clips(clips, taggers, half)
        print(f"per-half models: {half_models}; own labels changed from the split's: "
              f"{sum(split_labels[c.name] != [c.label, c.decided] for c in clips)} of {len(clips)}", flush=True)
    halves = build_streams(taggers, clips, half, args.pairs, Path(args.cache), negatives=negatives)
    tagger = replay_tagger(taggers)
    defaults = LiveSection().change_settings()
    tried = candidates(defaults)
    print(f"{len(tried)} settings on the tuning half …", flush=True)
    tuning = [(s, measure(halves[0], tagger, s)) for s in tried]
    tuning.sort(key=lambda sr: score_key(sr[1]))
    best = tuning[0][0]
    music, music_rows = choose_music(halves[0], tagger, defaults)
    print(f"music evidence: {music.music_evidence_nats} nats, drift {music.music_drift_nats} (shipped "
          f"{defaults.music_evidence_nats}, {defaults.music_drift_nats}) on the tuning half; the first five:")
    for row in music_rows[:5]:
        print("  ", row)
    quiet, quiet_rows = choose_quiet(halves[0], tagger, defaults)
    print(f"quiet_dbfs: {quiet} (shipped {defaults.quiet_dbfs}) on the tuning half:")
    for row in quiet_rows:
        print("  ", row)
    withdraw, withdraw_rows = choose_withdraw(halves[0], tagger, defaults)
    print(f"withdraw_nats: {withdraw} (shipped {defaults.withdraw_nats}) on the tuning half:")
    for row in withdraw_rows:
        print("  ", row)
    rows = {}
    shown = [("defaults", defaults)] + ([("best on tuning", best)] if best != defaults else [])
    for label, s in (*shown,
                     ("defaults, withdrawn at 6 nats", replace(defaults, withdraw_nats=6.0)),
                     ("defaults, no quiet passages", replace(defaults, quiet_dbfs=0.0)),
                     ("defaults, music evidence as before", replace(defaults, music_evidence_nats=9.0,
                                                                    music_drift_nats=1.0)),
                     ("previous 4 s / 1", replace(defaults, evidence_nats=0.0, music_evidence_nats=0.0,
                                                  withdraw_nats=0.0, quiet_dbfs=0.0, horizon_seconds=4.0,
                                                  hysteresis=1)),
                     ("old 30 s / 3", replace(defaults, evidence_nats=0.0, music_evidence_nats=0.0,
                                              withdraw_nats=0.0, quiet_dbfs=0.0, horizon_seconds=30.0,
                                              hysteresis=3))):
        rows[label] = {"settings": asdict(s), "tuning": measure(halves[0], tagger, s),
                       "held_out": measure(halves[1], tagger, s), "all": measure(halves[0] + halves[1], tagger, s)}
        print(label, asdict(s))
        for part in ("tuning", "held_out", "all"):
            print(f"  {part:9} {_line(rows[label][part])}")
    from training.live_bound import bound, summary_lines

    bound_started = time.perf_counter()
    print("the floor under the switch delay and the rules' frontier (training.live_bound) …", flush=True)
    limits = bound(halves, tagger, defaults)
    for line in summary_lines(limits):
        print("  ", line)
    print(f"  ({time.perf_counter() - bound_started:.0f} s)", flush=True)
    doc = {"model": reference.manifest.name, "version": reference.manifest.version,
           "model_sha1": model_id(reference),
           "mode": "in_sample" if args.in_sample else "out_of_fold",
           "mode_note": ("every stream recorded with the shipped model, whose genre head and music detector were "
                         "trained on every labelled clip, the GTZAN clips the streams are made of included"
                         if args.in_sample else
                         "each artist half's streams recorded with the shipped recipe retrained without that half's "
                         "artists (training.live_models): its GTZAN clips are unseen by the genre head and the music "
                         "detector; still shared: " + HALF_MODEL_LEAKS),
           "half_models": half_models, "leaks": None if args.in_sample else HALF_MODEL_LEAKS,
           "split_labels": split_labels,
           "own_labels_of": "each clip's stretch, the audio its switch, talk and non-music streams play (a "
                            "realworld track's from 30 s in); split_labels take a realworld track whole",
           "command": " ".join(["python -m training.live_eval", *(sys.argv[1:] if argv is None else argv)]),
           "defaults_are_best_on_tuning": best == defaults,
           "withdraw_nats_on_tuning": withdraw, "withdraw_tuning": withdraw_rows,
           "quiet_dbfs_on_tuning": quiet, "quiet_tuning": quiet_rows,
           "music_on_tuning": {"music_evidence_nats": music.music_evidence_nats,
                               "music_drift_nats": music.music_drift_nats}, "music_tuning": music_rows,
           "block_s": BLOCK_SECONDS, "seed": SEED, "rows": rows,
           "halves": [{"artists": sorted(a for a, h in half.items() if h == i),
                       "switches": [r.name for r in halves[i].switches],
                       "talks": [r.name for r in halves[i].talks],
                       "nonmusic": [r.name for r in halves[i].nonmusic],
                       "steady": [r.name for r in halves[i].steady]} for i in (0, 1)],
           "own_labels": {c.name: [c.label, c.decided] for c in clips},
           "bound": limits,
           "tuning": [{"settings": asdict(s), **{k: v for k, v in r.items() if k != "delays_s"}}
                      for s, r in tuning],
           "elapsed_s": round(time.perf_counter() - started, 1)}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
