"""The running level floor of live input: a stream quieter than the model's ``level_floor_dbfs`` is raised
towards it (tagger.level.RunningFloor), causally and slowly; a stream inside the range, and silence, are not.

Real audio (an FMA jazz clip the model never trained on, read from ../shared/data), the shipped default model
(whose manifest states the floor) and a copy of it whose manifest lacks the key, fed through the daemon's live
path (service.live.LiveTagger, an eager stream) in 0.25 s blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, encode
from daemon_helpers import Subscriber, start_daemon, stop_daemon

from service.cli import render_message
from service.live import LiveTagger
from tagger import Tagger
from tagger.decode import decode_file
from tagger.level import RUNNING_HORIZON_SECONDS, RUNNING_MAX_DB_PER_SECOND, RunningFloor, level_dbfs
from tagger.model import read_manifest
from tagger.registry import default_cpu_model

RATE = 16000
BLOCK = RATE // 4
CLIP = DATA / "fma" / "001082.mp3"  # jazz, about -16 dBFS; 30 dB down it reads as classical without a floor
QUIET_DB = -30.0
SETTLED_S = 16.0  # by then the horizon (15 s) was heard, the gain has reached its target and the windows were raised


class Sink:
    """Keeps what a live source reports."""

    def __init__(self) -> None:
        self.updates: list = []

    def live(self, event) -> None:
        self.updates.append(event)

    def genre_changed(self, event) -> None:
        pass


@pytest.fixture(scope="module")
def own() -> np.ndarray:
    return decode_file(CLIP, RATE)


def play(tagger: Tagger, audio: np.ndarray) -> tuple[LiveTagger, list]:
    """``audio`` through the daemon's live path in 0.25 s blocks: the live tagger and every slice it analysed."""
    live = LiveTagger(tagger, "test", RATE, None, Sink())
    slices = []
    for start in range(0, audio.size, BLOCK):
        slices.extend(live.feed(audio[start:start + BLOCK]))
    return live, slices


def top_after(slices: list, seconds: float) -> str:
    """The top genre of the mean of the slices ending after ``seconds``."""
    mean = np.mean([s.probabilities["genre"] for s in slices if s.end_s > seconds], axis=0)
    return read_manifest(default_cpu_model()).genre_outputs[0].labels[int(np.argmax(mean))]


def test_a_quiet_stream_is_raised_and_gets_the_genre_of_its_own_level(floored: Tagger, unfloored: Tagger,
                                                                        own: np.ndarray) -> None:
    quiet = own * np.float32(10.0 ** (QUIET_DB / 20.0))
    _, at_own_level = play(floored, own)
    live, raised = play(floored, quiet)
    floor = floored.manifest.level_floor_dbfs
    # Raised to the floor by now (the running level is the quiet input's, never the raised samples').
    whole = quiet.size - quiet.size % (RATE // 10)  # the running level counts complete 0.1 s sub-blocks
    assert live.stream.floor.level_dbfs == pytest.approx(level_dbfs(quiet[whole - 15 * RATE:whole], RATE), abs=1e-6)
    # (the gain follows the running level as it moves, a sub-block late)
    assert live.stream.floor.gain_db == pytest.approx(floor - live.stream.floor.level_dbfs, abs=0.1)
    expected = top_after(at_own_level, SETTLED_S)
    assert top_after(raised, SETTLED_S) == expected == "jazz"
    # Without the floor the quiet stream reads as another genre (classical): the bug this fixes.
    _, not_raised = play(unfloored, quiet)
    assert top_after(not_raised, SETTLED_S) != expected
    # The windows' levels that quiet_dbfs weighs are the input's as it came in, not raised.
    window = next(s for s in raised if s.end_s > SETTLED_S)
    raw = level_dbfs(quiet[round(window.start_s * RATE):round(window.end_s * RATE)], RATE)
    assert live._level(window.start_s, window.end_s) < floor - 5.0 and raw < floor - 5.0


def test_a_stream_inside_the_range_is_analysed_exactly_as_before(floored: Tagger, unfloored: Tagger,
                                                                 own: np.ndarray) -> None:
    live, now = play(floored, own)
    _, before = play(unfloored, own)
    assert live.stream.floor is not None and live.stream.floor.gain_db == 0.0
    assert len(now) == len(before)
    for a, b in zip(now, before, strict=True):
        assert (a.view, a.end_s) == (b.view, b.end_s)
        assert all(np.array_equal(a.probabilities[k], b.probabilities[k]) for k in a.probabilities)  # identical


def test_silence_is_never_raised(floored: Tagger, own: np.ndarray) -> None:
    # Digital silence and a -75 dBFS hiss (under the -70 dBFS gate): no level, no gain, the samples as they came.
    hiss = np.random.default_rng(0).standard_normal(20 * RATE).astype(np.float32) * np.float32(10 ** (-75 / 20))
    for audio in (np.zeros(20 * RATE, np.float32), hiss):
        floor = RunningFloor(RATE, floored.manifest.level_floor_dbfs, floored.manifest.level_max_gain_db)
        for start in range(0, audio.size, BLOCK):
            block = audio[start:start + BLOCK]
            assert np.array_equal(floor(block), block) and floor.gain_db == 0.0
        assert floor.level_dbfs is None
    # Quiet music, then silence: once the horizon holds only silence the gain is 0.
    live, _ = play(floored, np.concatenate([own[:10 * RATE] * np.float32(10 ** (QUIET_DB / 20)),
                                            np.zeros(20 * RATE, np.float32)]))
    assert live.stream.floor.level_dbfs is None and live.stream.floor.gain_db == 0.0


def test_the_gain_never_moves_faster_than_its_limit(floored: Tagger, own: np.ndarray) -> None:
    """Quiet, then at its own level, then quiet again: the gain follows, at most RUNNING_MAX_DB_PER_SECOND."""
    quiet = own[:20 * RATE] * np.float32(10.0 ** (QUIET_DB / 20.0))
    audio = np.concatenate([quiet, own[:20 * RATE], quiet])
    floor = RunningFloor(RATE, floored.manifest.level_floor_dbfs, floored.manifest.level_max_gain_db)
    # Blocks of uneven sizes: the gain is the same however the stream is split.
    sizes = np.random.default_rng(1).integers(1, 6000, audio.size // 1000)
    cuts = np.cumsum(sizes)[np.cumsum(sizes) < audio.size]
    raised = np.concatenate([floor(block) for block in np.split(audio, cuts)])
    whole = RunningFloor(RATE, floored.manifest.level_floor_dbfs, floored.manifest.level_max_gain_db)(audio)
    assert np.array_equal(raised, whole)
    n = np.flatnonzero(np.abs(audio) > 1e-3)
    gain = 20.0 * np.log10(raised[n].astype(np.float64) / audio[n])
    steps = np.abs(np.diff(gain)) / (np.diff(n) / RATE)
    assert steps.max() <= RUNNING_MAX_DB_PER_SECOND * 1.01  # float32 rounding of the raised samples
    assert gain.max() > 10.0  # it did raise the quiet part, ...
    loud = n[(n > 35 * RATE) & (n < 40 * RATE)]
    assert np.all(gain[np.isin(n, loud)] < 1e-3)  # ... lowered the gain once the music came back at its level ...
    assert gain[-1] > 10.0  # ... and raised it again after


def test_the_daemons_live_file_is_raised_unless_turned_off_and_its_gain_is_in_the_status(own: np.ndarray,
                                                                                          tmp_path: Path) -> None:
    """[live] level_floor (default true) reaches the daemon's live sources; the status heartbeat (ZeroMQ, every
    message checked against the schema) shows the running floor's gain, and says nothing of one turned off."""
    quiet = encode(own[:10 * RATE] * np.float32(10.0 ** (QUIET_DB / 20.0)), RATE, tmp_path / "quiet.wav",
                   "pcm_s16le", "wav")
    env = {"GENRE_TAGGER_LIVE_FILE": str(quiet), "GENRE_TAGGER_LIVE_FILE_LOOP": "1",
           "GENRE_TAGGER_PUBLISH_HEARTBEAT_SECONDS": "0.2"}

    def played(messages: list) -> bool:  # the file has played 3 s (in real time)
        return any(m["type"] == "live" and m["stream_s"] >= 3.0 for _, m in messages)

    def raised(messages: list) -> bool:  # the gain climbs by at most 3 dB per second: by then it is past 3 dB
        return played(messages) and any(m["type"] == "status" and m["live"].get("live", {}).get("gain_db", 0) > 3.0
                                        for _, m in messages)

    seen: dict[str, list[dict]] = {}
    for setting in ("on", "off"):
        proc = start_daemon(tmp_path / f"state-{setting}", default_cpu_model(),
                            env={**env, "GENRE_TAGGER_LIVE_LEVEL_FLOOR": "false" if setting == "off" else "true"})
        subscriber = Subscriber(proc.endpoint, ("status", "live."))
        try:
            assert subscriber.wait_for(raised if setting == "on" else played, 90), proc.args
            subscriber.poll(0.5)  # a heartbeat or two after the updates
        finally:
            subscriber.close()
            assert stop_daemon(proc) == 0
        seen[setting] = [m["live"]["live"] for m in subscriber.of_type("status") if "live" in m.get("live", {})]
    on, off = seen["on"], seen["off"]
    assert all("gain_db" in live for live in on) and max(live["gain_db"] for live in on) > 3.0
    assert off and all(live["running"] is not None and "gain_db" not in live for live in off)
    high = next(live for live in on if live["gain_db"] > 3.0)
    line = render_message("status", {"type": "status", "uptime_s": 1, "queue_depth": 0, "tagged": 0, "errors": 0,
                                     "provider": "cpu", "dropped_messages": 0, "live": {"live": high}})
    assert f"live live running, raised {high['gain_db']:.1f} dB" in line


def test_a_bad_level_floor_setting_is_named() -> None:
    from service.config import load_config
    from tagger.errors import ConfigError

    env = {"GENRE_TAGGER_LIVE_FILE": str(CLIP)}
    assert load_config(env=env).live.level_floor is True
    assert load_config(env={**env, "GENRE_TAGGER_LIVE_LEVEL_FLOOR": "off"}).live.level_floor is False
    with pytest.raises(ConfigError, match=r"^config live.level_floor: 'sometimes' is not a valid bool \(set by "
                                          r"GENRE_TAGGER_LIVE_LEVEL_FLOOR=sometimes\)$"):
        load_config(env={**env, "GENRE_TAGGER_LIVE_LEVEL_FLOOR": "sometimes"})


def test_a_quiet_start_is_raised_only_in_proportion_to_what_was_heard(floored: Tagger, own: np.ndarray) -> None:
    """A running level measured on a few seconds is not yet the stream's: until a horizon of input has come in
    since the sound started, the gain's target is scaled by the share heard (silence before it does not count)."""
    floor_dbfs, cap = floored.manifest.level_floor_dbfs, floored.manifest.level_max_gain_db
    silence = np.zeros(10 * RATE, np.float32)
    quiet = own[:25 * RATE] * np.float32(10.0 ** (QUIET_DB / 20.0))
    floor = RunningFloor(RATE, floor_dbfs, cap)
    gains, trusts = [], []
    for start in range(0, silence.size + quiet.size, BLOCK):
        floor(np.concatenate([silence, quiet])[start:start + BLOCK])
        gains.append(floor.gain_db)
        trusts.append(floor.trust)
    per_s = RATE // BLOCK
    assert max(gains[:10 * per_s]) == 0.0 and max(trusts[:10 * per_s]) == 0.0  # the silence: no count, no gain
    heard = 4 * per_s + 10 * per_s - 1  # 4 s into the music
    target = floor_dbfs - level_dbfs(quiet[:4 * RATE], RATE)
    assert target > 10.0  # the gain's limit alone would have reached 12 dB by then (3 dB/s)
    assert trusts[heard] == pytest.approx(4.0 / RUNNING_HORIZON_SECONDS, abs=0.01)
    assert gains[heard] <= target * trusts[heard] + 0.1
    # Once the horizon was heard: the whole target, as before.
    assert trusts[-1] == 1.0
    assert gains[-1] == pytest.approx(floor_dbfs - floor.level_dbfs, abs=0.1)


def test_a_clip_with_a_quiet_first_bar_is_barely_raised(floored: Tagger) -> None:
    # gtzan jazz.00001: its first 4 s at about -33 dBFS, then louder (-29 dBFS gated over the clip). Raised by
    # up to 1.9 dB at the start, its live genre flapped (jazz at 6.5 s, classical at 12.8 s, as the gain fell).
    audio = decode_file(DATA / "gtzan" / "jazz" / "jazz.00001.flac", RATE)
    assert level_dbfs(audio[:4 * RATE], RATE) < floored.manifest.level_floor_dbfs < level_dbfs(audio, RATE)
    floor = RunningFloor(RATE, floored.manifest.level_floor_dbfs, floored.manifest.level_max_gain_db)
    gains = []
    for start in range(0, audio.size, BLOCK):
        floor(audio[start:start + BLOCK])
        gains.append(floor.gain_db)
    assert 0.0 < max(gains) < 0.5


def test_sound_after_a_whole_horizon_of_silence_starts_the_count_over(floored: Tagger, own: np.ndarray) -> None:
    """Quiet music, then silence longer than the horizon (a capture idle for minutes), then the quiet music again:
    the running level has forgotten the first part, so the second is a new start, raised only in proportion to
    what was heard since it began (a gap shorter than the horizon does not start over: no pumping at track gaps).
    However the stream is split into blocks (silence before the sound included), the output is the same."""
    floor_dbfs, cap = floored.manifest.level_floor_dbfs, floored.manifest.level_max_gain_db
    quiet = own[:25 * RATE] * np.float32(10.0 ** (QUIET_DB / 20.0))
    gap = np.zeros(int(RUNNING_HORIZON_SECONDS * RATE) + 5 * RATE, np.float32)
    short_gap = np.zeros(5 * RATE, np.float32)
    audio = np.concatenate([gap, quiet, short_gap, quiet, gap, quiet])
    floor = RunningFloor(RATE, floor_dbfs, cap)
    gains, trusts = [], []
    for start in range(0, audio.size, BLOCK):
        floor(audio[start:start + BLOCK])
        gains.append(floor.gain_db)
        trusts.append(floor.trust)
    per_s = RATE // BLOCK
    second = (gap.size + quiet.size + short_gap.size) // BLOCK  # the block where the music comes back after 5 s
    assert min(trusts[second:second + per_s]) == 1.0  # a short gap: still trusted, raised again at once
    third = (audio.size - quiet.size) // BLOCK  # the block where the music comes back after 20 s of silence
    assert trusts[third - 1] == 0.0 and gains[third - 1] == 0.0  # the silence forgot the sound before it
    heard = third + 4 * per_s - 1  # 4 s into the music again
    assert trusts[heard] == pytest.approx(4.0 / RUNNING_HORIZON_SECONDS, abs=0.01)
    target = floor_dbfs - level_dbfs(quiet[:4 * RATE], RATE)
    assert target > 10.0  # the gain's limit alone would have reached 12 dB by then (3 dB/s)
    assert gains[heard] <= target * trusts[heard] + 0.1
    assert trusts[-1] == 1.0 and gains[-1] == pytest.approx(floor_dbfs - floor.level_dbfs, abs=0.1)
    # Blocks of uneven sizes, down to one sample: the same samples out.
    sizes = np.random.default_rng(2).integers(1, 6000, audio.size // 1000)
    cuts = np.cumsum(sizes)[np.cumsum(sizes) < audio.size]
    split = RunningFloor(RATE, floor_dbfs, cap)
    whole = RunningFloor(RATE, floor_dbfs, cap)(audio)
    assert np.array_equal(np.concatenate([split(block) for block in np.split(audio, cuts)]), whole)


def test_a_live_source_that_stopped_shows_no_gain(floored: Tagger, own: np.ndarray, tmp_path: Path) -> None:
    """The status gain is the running floor's now: while a source is stopped (its file ended, its device lost and
    waiting to reopen) nothing is raised, so it reads 0, not the last gain."""
    import threading
    import time

    from service.livefile import LiveFile

    quiet = encode(own[:4 * RATE] * np.float32(10.0 ** (QUIET_DB / 20.0)), RATE, tmp_path / "quiet.wav",
                   "pcm_s16le", "wav")
    player = LiveFile(floored, Sink(), str(quiet), "quiet")
    stop = threading.Event()
    player.start(stop)
    seen = []
    deadline = time.monotonic() + 60.0  # 4 s of audio in real time, on a loaded machine
    while not player.finished.is_set() and time.monotonic() < deadline:
        seen.append(player.status.as_dict().get("gain_db"))
        time.sleep(0.05)
    stop.set()
    player.join(5)
    assert player.finished.is_set() and not player.status.running
    assert max(g for g in seen if g is not None) > 0.5  # it was raised while it played ...
    assert player.status.as_dict()["gain_db"] == 0.0  # ... and is not once stopped


def test_a_reopened_input_goes_on_with_its_floor_only_when_the_same_and_soon(floored: Tagger, own: np.ndarray) -> None:
    """LiveSource's rule for a reopened input (tests/test_live.py reopens a real capture): the same input after a
    short gap goes on with its running floor (and the rest of its live tagger: ensemble, change detector); another
    input, or the same one after a gap of the floor's horizon, starts over. That gap is set back by hand: waiting
    out 15 s would only slow the suite."""
    from service.live import LiveSource

    line_in = ("line-in", RATE, 2)  # how the input was opened: device, rate, channels
    quiet = own[:12 * RATE] * np.float32(10.0 ** (QUIET_DB / 20.0))

    def raised() -> tuple[LiveSource, LiveTagger]:
        source = LiveSource(floored, Sink(), "radio")
        live = source._tagger(RATE, line_in)
        for start in range(0, quiet.size, BLOCK):
            source._feed(live, quiet[start:start + BLOCK], None)
        assert live.gain_db > 5.0
        return source, live

    source, first = raised()
    again = source._tagger(RATE, line_in)
    assert again.floor is first.floor and again.gain_db == first.gain_db  # a glitch: the same floor goes on
    assert again is first and again.changes is first.changes  # ... in the same live tagger: its detector too
    other = source._tagger(RATE, ("usb", RATE, 2))
    assert other.gain_db == 0.0 and other.changes is not first.changes  # another input: a new floor and detector
    source, first = raised()
    source._fed_at -= RUNNING_HORIZON_SECONDS  # last fed a whole horizon ago
    late = source._tagger(RATE, line_in)
    assert late.floor is not first.floor and late.gain_db == 0.0 and late.changes is not first.changes
