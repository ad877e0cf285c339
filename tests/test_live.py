"""Live capture through real PortAudio and PulseAudio: a null sink, its monitor as the input, paplay.

Needs Debian's pulseaudio, pulseaudio-utils, libportaudio2 and libasound2-plugins (.ci/run installs
them). Outside CI, a machine without them skips these tests and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, encode
from daemon_helpers import Subscriber, free_endpoint, start_daemon, stop_daemon, wait_until

from service.live import ChangeDetector, ChangeSettings, LiveCapture, RingBuffer
from tagger import Tagger
from tagger.decode import decode_file

# One null sink per pytest process: two runs on one PulseAudio server (a shared box) each unload only their own
# sink. With one shared name, one run's module teardown unloaded the sink under the other's live daemon
# ("PortAudioError: Illegal combination of I/O devices").
SINK = f"genretagger_test_{os.getpid()}"
CLIPS = (DATA / "gtzan" / "classical" / "classical.00002.flac", DATA / "gtzan" / "metal" / "metal.00002.flac")


@pytest.fixture(scope="module")
def pulse_sink():
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if shutil.which(tool) is None]
    if missing:
        message = f"PulseAudio tools missing: {missing} (apt-get install pulseaudio pulseaudio-utils)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    started = False
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
                        "--load=module-native-protocol-unix"], check=True, capture_output=True)
        started = True
        for _ in range(50):
            if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
    sinks = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True, check=True).stdout
    module = None
    if SINK not in sinks:
        module = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={SINK}"],
                                capture_output=True, text=True, check=True).stdout.strip()
    yield SINK
    if module:
        subprocess.run(["pactl", "unload-module", module], capture_output=True)
    if started:
        sinks = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True).stdout
        if "genretagger_test_" not in sinks:  # another run's sink: that run still uses the server
            subprocess.run(["pulseaudio", "--kill"], capture_output=True)


def test_ring_buffer_never_blocks_and_counts_overflows() -> None:
    ring = RingBuffer(1000, 2)
    block = np.ones((300, 2), dtype=np.float32)
    for _ in range(3):
        ring.write(block)
    assert ring.read().shape == (900, 2)
    for i in range(4):
        ring.write(block * i)
    assert ring.overflows == 1  # the fourth block found no room and was dropped, counted
    out = ring.read()
    assert out.shape == (900, 2) and out[0, 0] == 0 and out[-1, 0] == 2  # wrapped around correctly


def test_change_detector_needs_the_new_genre_to_hold() -> None:
    d = ChangeDetector(ChangeSettings(hysteresis=3, evidence_nats=0.0, music_evidence_nats=0.0))
    events = [d.update(top) for top in ["jazz", "jazz", "jazz", "rock", "jazz", "rock", "rock", "rock"]]
    assert events == [None, None, (None, "jazz"), None, None, None, None, ("jazz", "rock")]
    # An uncertain update (None) breaks a run and never becomes a change.
    events = [d.update(top) for top in ["pop", "pop", None, "pop", "pop", None, None, None]]
    assert events == [None] * 8 and d.current == "rock"


LABELS = ("jazz", "rock", "pop")


def _window(jazz: float, rock: float, music: float = 0.9, view: str = "short") -> tuple:
    return view, 0.0, np.array([jazz, rock, 1.0 - jazz - rock]), music


def test_change_detector_weighs_evidence_against_the_current_genre() -> None:
    # The evidence test alone: withdrawing a genre the music left is test_change_detector_withdraws_….
    settings = ChangeSettings(hysteresis=1, evidence_nats=4.0, drift_nats=1.0, cap_nats=6.0,
                              evidence_views="shortest", music_evidence_nats=12.0, music_drift_nats=1.0,
                              withdraw_nats=0.0)
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    assert d.update("jazz", [_window(0.9, 0.05)]) == (None, "jazz")  # the first label: hysteresis alone
    # One clear window: log(0.9 / 0.01) = 4.5 nats, less 1 of drift: not yet; the second one decides.
    assert d.update(None, [_window(0.01, 0.9)]) is None
    assert d.update(None, [_window(0.01, 0.9)]) == ("jazz", "rock")
    assert d.confidence == pytest.approx(0.9)
    # Odd windows between good ones: the evidence drifts back to 0 before it adds up.
    for _ in range(5):
        assert d.update("rock", [_window(0.8, 0.1)]) is None  # log 8 = 2.1 nats, less 1 of drift
        assert d.update("rock", [_window(0.05, 0.9), _window(0.05, 0.9)]) is None
    # Evidence without a decided challenger (jazz and pop at about 0.5 each) is no change, however much.
    for _ in range(5):
        assert d.update(None, [_window(0.45, 0.01), _window(0.52, 0.01)]) is None
    assert d.current == "rock"
    # The longer view's windows do not count with evidence_views = "shortest".
    assert d.update(None, [_window(0.95, 0.01, view="long")] * 4) is None
    # Talk: the music detector's log-odds past its threshold (capped at 6 nats a window, less 1) must
    # reach 12 nats: three windows; meanwhile their genres are no evidence.
    events = [d.update("no music", [_window(0.95, 0.01, music=0.001)]) for _ in range(3)]
    assert events == [None, None, ("rock", "no music")]
    # Back to music: a genre decided over the last `hysteresis` music windows in a row (one here), before
    # the running ensemble, which still holds the talk, has a decided top.
    assert d.update("no music", [_window(0.9, 0.05, music=0.2)]) is None  # not music: no run yet
    assert d.update("no music", [_window(0.9, 0.05)]) == ("no music", "jazz")


def test_change_detector_starts_on_a_run_of_music_windows() -> None:
    settings = ChangeSettings(hysteresis=2, evidence_nats=4.0, music_evidence_nats=12.0)
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    # A not-music window breaks the run; an undecided mean (jazz 0.55) is no label.
    assert d.update(None, [_window(0.9, 0.05), _window(0.9, 0.05, music=0.1)]) is None
    assert d.update(None, [_window(0.5, 0.3)]) is None
    assert d.update(None, [_window(0.6, 0.3)]) is None
    assert d.update(None, [_window(0.9, 0.05)]) == (None, "jazz")
    assert d.confidence == pytest.approx((0.5 + 0.6 + 0.9) / 3)


def test_change_detector_says_music_came_back_even_without_a_decided_genre() -> None:
    """Music after talk whose genre stays undecided (a game soundtrack's 0.4-0.57 rock for minutes) must not
    go on being called "no music": it is announced as music with its likeliest genre, uncertain."""
    settings = ChangeSettings(hysteresis=1, evidence_nats=4.0, drift_nats=1.0, cap_nats=6.0,
                              evidence_views="shortest", music_evidence_nats=6.0, music_drift_nats=1.0)
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    assert d.update("jazz", [_window(0.9, 0.05)]) == (None, "jazz")
    talk = [d.update("no music", [_window(0.3, 0.3, music=0.001)]) for _ in range(2)]
    assert talk == [None, ("jazz", "no music")] and not d.uncertain
    # Music again (0.95: log-odds 2.94 past the threshold's -0.62, less 1 of drift: 2.56 nats a window), but
    # jazz 0.45 / rock 0.35 decides nothing; windows of the longer view are no evidence.
    assert d.update("no music", [_window(0.45, 0.35, music=0.95, view="long")] * 3) is None
    assert d.update(None, [_window(0.45, 0.35, music=0.95)]) is None
    assert d.update(None, [_window(0.45, 0.35, music=0.95)]) is None
    assert d.update(None, [_window(0.42, 0.38, music=0.95)]) == ("no music", "jazz")
    assert d.uncertain and d.confidence == pytest.approx((0.45 + 0.45 + 0.42) / 3)
    # Still undecided: nothing more to say, however long.
    for _ in range(10):
        assert d.update(None, [_window(0.3, 0.5, music=0.95)]) is None
    # The run of music windows since the talk (rock 0.9 once after 13 undecided) decides nothing yet; the
    # running ensemble's decided top, held for `hysteresis` updates (one here), does.
    assert d.update(None, [_window(0.05, 0.9, music=0.95)]) is None
    assert d.update("rock", [_window(0.05, 0.9, music=0.95)]) == ("jazz", "rock")
    assert not d.uncertain and d.current == "rock"
    # From uncertain music, talk is "no music" on its evidence, as from a genre.
    d2 = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    d2.update("jazz", [_window(0.9, 0.05)])
    for _ in range(2):
        d2.update("no music", [_window(0.3, 0.3, music=0.001)])
    changes = [d2.update(None, [_window(0.45, 0.35, music=0.95)]) for _ in range(3)]
    assert changes[-1] == ("no music", "jazz") and d2.uncertain
    changes = [d2.update("no music", [_window(0.45, 0.35, music=0.001)]) for _ in range(2)]
    assert changes == [None, ("jazz", "no music")] and not d2.uncertain
    # A single odd music window in talk is no music: the evidence drifts back to zero.
    for _ in range(6):
        assert d2.update("no music", [_window(0.45, 0.35, music=0.95)]) is None
        assert d2.update("no music", [_window(0.45, 0.35, music=0.01)]) is None
    assert d2.current == "no music"


def test_a_quiet_passage_of_the_current_genre_is_no_evidence_for_no_music() -> None:
    """A song fading to near silence (gtzan/classical.00080's last 6 s: -52 to -63 dBFS, music 0.11 to 0.02, still
    classical 0.7-0.9) must not flap to "no music" and back; talk, noise or hum as weak as that but louder, and
    silence (in which the model hears no genre), must still be "no music" as fast as without the rule."""
    from service.live import QUIET_PASSAGE_S, Window

    settings = ChangeSettings(hysteresis=1, evidence_nats=4.0, drift_nats=1.0, cap_nats=6.0, evidence_views="shortest",
                              music_evidence_nats=6.0, music_drift_nats=0.25, quiet_dbfs=-45.0)
    hop = 1.28

    def windows(jazz: float, level: float, n: int, start: float = 0.0) -> list:
        return [Window("short", start + hop * (i + 1), np.array([jazz, 0.05, 0.95 - jazz]), 0.04, level)
                for i in range(n)]

    def said(settings: ChangeSettings, jazz: float, level: float) -> list:
        d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
        d.update("jazz", [Window("short", 0.0, np.array([0.9, 0.05, 0.05]), 0.9, -20.0)])
        return [(w.end_s, change) for w in windows(jazz, level, 20) if (change := d.update(None, [w]))]

    # Music 0.04 is 2.6 nats a window: "no music" on the 3rd window, unless the window is quiet and still jazz,
    # where it waits QUIET_PASSAGE_S (a pause longer than that is dead air, whatever the model hears in it).
    fast = [(3 * hop, ("jazz", "no music"))]
    assert said(settings, 0.8, -30.0) == fast  # as loud as noise or hum: no quiet passage
    assert said(settings, 0.3, -70.0) == fast  # silence: its genres decide nothing
    assert said(replace(settings, quiet_dbfs=0.0), 0.8, -60.0) == fast  # off
    late = said(settings, 0.8, -60.0)
    assert len(late) == 1 and late[0][1] == ("jazz", "no music") and late[0][0] >= hop + QUIET_PASSAGE_S, late
    # A louder window ends the passage: the next quiet one starts a new one.
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    d.update("jazz", [Window("short", 0.0, np.array([0.9, 0.05, 0.05]), 0.9, -20.0)])
    for k in range(4):
        assert d.update("jazz", windows(0.8, -60.0, 6, start=k * 8 * hop)) is None
        assert d.update("jazz", [Window("short", (k * 8 + 7) * hop, np.array([0.9, 0.05, 0.05]), 0.9, -20.0)]) is None


def test_change_detector_withdraws_a_genre_the_music_left() -> None:
    """A switch to music whose genre is not decided yet (windows at 0.4-0.6) must not go on showing the
    previous genre as decided: it is withdrawn, its likeliest successor announced as uncertain."""
    settings = ChangeSettings(hysteresis=1, evidence_nats=4.0, drift_nats=1.0, cap_nats=6.0,
                              evidence_views="shortest", music_evidence_nats=9.0, withdraw_nats=6.0)
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    assert d.update("jazz", [_window(0.9, 0.05)]) == (None, "jazz")
    # Jazz at 0.05: log(0.95 / 0.05) = 2.94 nats past the threshold's log(0.4 / 0.6) = -0.41, less 1 of drift:
    # 2.35 a window; rock at 0.5 is no decided challenger. The third window withdraws jazz.
    assert d.update(None, [_window(0.05, 0.5)]) is None
    assert d.update(None, [_window(0.05, 0.5)]) is None
    assert d.update(None, [_window(0.05, 0.45)]) == ("jazz", "rock")
    assert d.uncertain and d.confidence == pytest.approx((0.5 + 0.5 + 0.45) / 3)
    # Nothing more until a genre is decided: the evidence against jazz goes on, so rock once decided (its
    # mean since its evidence began reaches 0.6) is announced on it, as any challenger of jazz.
    assert d.update(None, [_window(0.02, 0.9)]) is None
    assert d.update(None, [_window(0.02, 0.9)]) == ("rock", "rock")
    assert not d.uncertain and d.current == "rock"
    # A dip of the current genre that the running ensemble decides again is no change of genre: jazz withdrawn
    # in uncertain music, then claimed again.
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    d.update("jazz", [_window(0.9, 0.05)])
    changes = [d.update(None, [_window(0.05, 0.5)]) for _ in range(3)]
    assert changes[-1] == ("jazz", "rock") and d.uncertain
    assert d.update("jazz", [_window(0.7, 0.2)]) == ("rock", "jazz")
    assert not d.uncertain
    # Odd windows in a steady genre do not add up (each drifts back), and withdraw_nats 0 never withdraws.
    for _ in range(10):
        assert d.update("jazz", [_window(0.2, 0.5)]) is None
        assert d.update("jazz", [_window(0.9, 0.05)]) is None
    never = ChangeDetector(ChangeSettings(hysteresis=1, withdraw_nats=0.0), LABELS, threshold=0.6,
                           views=["short", "long"], music_threshold=0.35)
    never.update("jazz", [_window(0.9, 0.05)])
    assert all(never.update(None, [_window(0.05, 0.5)]) is None for _ in range(20)) and not never.uncertain


def test_a_withdrawn_genre_gives_way_to_the_genre_the_running_ensemble_decides() -> None:
    """Rock at 0.65 over jazz at 0.3 is decided, but never evidence against jazz (log(0.65 / 0.3) = 0.77 nats, less
    1 of drift): once jazz is withdrawn, rock held by the running ensemble for `hysteresis` updates is announced,
    not "maybe rock" for as long as it plays."""
    settings = ChangeSettings(hysteresis=2, evidence_nats=4.0, drift_nats=1.0, cap_nats=6.0, evidence_views="shortest",
                              music_evidence_nats=6.0, music_drift_nats=0.25, withdraw_nats=6.0)
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    assert [d.update("jazz", [_window(0.9, 0.05)]) for _ in range(2)] == [None, (None, "jazz")]
    # Jazz at 0.3: log(0.7 / 0.3) + log(0.6 / 0.4) - 1 = 0.25 nats a window: withdrawn at the 24th while the
    # running ensemble is still undecided (None); then it decides rock.
    tops = [None] * 24 + ["rock"] * 30
    said = [(i, change, d.uncertain) for i, top in enumerate(tops) if (change := d.update(top, [_window(0.3, 0.65)]))]
    assert said == [(23, ("jazz", "rock"), True), (25, ("rock", "rock"), False)], said
    # An undecided top (None) breaks the run: withdrawn, rock needs two decided updates in a row.
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    [d.update("jazz", [_window(0.9, 0.05)]) for _ in range(2)]
    tops = [None] * 23 + ["rock", None, "rock", None, "rock", "rock"]
    said = [(i, change) for i, top in enumerate(tops) if (change := d.update(top, [_window(0.3, 0.65)]))]
    assert said == [(23, ("jazz", "rock")), (28, ("rock", "rock"))], said


def test_a_decided_genre_gives_way_to_one_the_running_ensemble_decides_for_long() -> None:
    """Jazz decided, then rock at 0.62 over jazz at 0.38: no evidence for rock (0.49 nats, less 1 of drift) and no
    withdrawal of jazz (its log-odds are above the threshold's less the drift); the running ensemble decides rock.
    After hysteresis updates of it in a row, rock is announced, not jazz kept as decided for good."""
    settings = ChangeSettings(hysteresis=2, evidence_nats=4.0, drift_nats=1.0, cap_nats=6.0, evidence_views="shortest",
                              music_evidence_nats=6.0, music_drift_nats=0.25, withdraw_nats=6.0)
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    [d.update("jazz", [_window(0.9, 0.05)]) for _ in range(2)]
    tops = ["rock", None] + ["rock"] * 30  # an undecided update starts the count again
    said = [(i, change, d.uncertain) for i, top in enumerate(tops) if (change := d.update(top, [_window(0.38, 0.62)]))]
    assert said == [(3, ("jazz", "rock"), False)], said
    # The ensemble deciding the current genre now and then is no run of another one.
    d = ChangeDetector(settings, LABELS, threshold=0.6, views=["short", "long"], music_threshold=0.35)
    [d.update("jazz", [_window(0.9, 0.05)]) for _ in range(2)]
    assert all(d.update(top, [_window(0.45, 0.5)]) is None for top in ["rock", "jazz"] * 30)


def _mean_genre(messages: list[dict], labels: tuple[str, ...], start: float, end: float) -> np.ndarray:
    probs = [[s["probabilities"]["genre"][label] for label in labels]
             for m in messages if start <= m["ts"] <= end for s in m["slices"]]
    assert probs, "no live slices in that span"
    return np.mean(probs, axis=0)


def test_live_capture_agrees_with_offline_tagging_and_announces_genre_changes(pulse_sink: str, tmp_path: Path) -> None:
    tagger = Tagger()
    labels = tagger.manifest.output("genre").labels
    offline = [tagger.tag_file(clip).outputs["genre"] for clip in CLIPS]
    offline_means = [np.array([next(s.score for s in est.scores if s.label == label) for label in labels])
                     for est in offline]
    assert offline[0].top != offline[1].top, "the two clips must differ in genre for this test"
    endpoint = free_endpoint()
    sub = Subscriber(endpoint, ("live.radio", "change.radio", "status"))
    env = {"PULSE_SOURCE": f"{pulse_sink}.monitor", "GENRE_TAGGER_LIVE_HYSTERESIS": "2"}
    daemon = start_daemon(tmp_path / "state", Path(tagger.engine.path), "--live", "pulse", "--source", "radio",
                          "--horizon", "6", endpoint=endpoint, env=env)
    try:
        assert sub.wait_for(lambda msgs: any(m["type"] == "status" and m.get("live", {}).get("radio", {})
                                             .get("running") for _, m in msgs), 60), "live input never started"
        spans = []
        for clip in CLIPS:
            started = time.time()
            subprocess.run(["paplay", f"--device={pulse_sink}", str(clip)], check=True, timeout=120)
            spans.append((started, time.time()))
        sub.poll(3.0)
    finally:
        assert stop_daemon(daemon) == 0
        sub.close()
    live = sub.of_type("live")
    changes = sub.of_type("genre_changed")
    latencies = sorted(m["latency_ms"] for m in live)
    report = []
    for i, ((start, end), expected) in enumerate(zip(spans, offline_means, strict=True)):
        # Slices wholly inside the clip's playback: the first ends a window after it starts.
        got = _mean_genre(live, labels, start + 2.6, end + 0.5)
        cosine = float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected)))
        report.append(f"clip {i}: offline {labels[int(expected.argmax())]} {expected.max():.2f}, "
                      f"live {labels[int(got.argmax())]} {got.max():.2f}, cosine {cosine:.3f}")
        assert got.argmax() == expected.argmax()
        assert cosine > 0.9
    print("\n" + "\n".join(report) + f"\nlive updates {len(live)}, changes "
          f"{[(c['previous'], c['current'], round(c['stream_s'], 1)) for c in changes]}, latency p50 "
          f"{latencies[len(latencies) // 2]:.1f} ms, max {latencies[-1]:.1f} ms")
    assert changes and changes[0]["current"] == offline[0].top
    assert any(c["previous"] == offline[0].top and c["current"] == offline[1].top and c["ts"] >= spans[1][0]
               for c in changes)


def test_change_settings_come_from_the_config_and_bad_ones_are_named() -> None:
    from service.config import load_config
    from tagger.errors import ConfigError

    env = {"GENRE_TAGGER_LIVE_FILE": str(CLIPS[0]), "GENRE_TAGGER_LIVE_EVIDENCE_NATS": "5",
           "GENRE_TAGGER_LIVE_HORIZON_SECONDS": "0"}
    settings = load_config(env=env).live.change_settings()
    assert settings.evidence_nats == 5.0 and settings.horizon_seconds is None  # 0 = the whole stream
    bad = {**env, "GENRE_TAGGER_LIVE_EVIDENCE_VIEWS": "middle", "GENRE_TAGGER_LIVE_CAP_NATS": "0"}
    with pytest.raises(ConfigError) as caught:
        load_config(env=bad)
    message = str(caught.value)
    assert "live.evidence_views" in message and "'middle'" in message and "live.cap_nats" in message


def test_live_eval_counts_a_withdrawn_genre_claimed_again_as_still_shown() -> None:
    """training.live_eval's switch figures: jazz withdrawn 5 s after the switch then claimed again until 30 s was
    shown for 15 s, not 5; every announcement after the first is a change a listener sees."""
    from training.live_eval import _claims, _shown_changes, _stale

    events = [(1.0, "jazz", False), (20.0, "rock", True), (22.0, "jazz", False), (30.0, "rock", False)]
    assert _stale(events, 15.0, "jazz", 45.0) == 15.0
    assert _stale(events[:1], 15.0, "jazz", 45.0) == 30.0  # never left: to the end of the stream
    assert _stale([(1.0, "jazz", False), (18.0, "rock", False)], 15.0, "jazz", 45.0) == 3.0
    assert _stale([(18.0, "rock", False)], 15.0, "jazz", 45.0) == 0.0  # never shown after the switch
    assert len(_claims(events)) == 2 and _shown_changes(events) == 3


def test_live_tagger_keeps_the_newest_samples_for_window_levels() -> None:
    """The samples LiveTagger keeps for each window's level are the stream's newest, whatever the block sizes
    (a block longer than all that is kept included), compared with the whole stream kept."""
    from service.live import LiveTagger

    tagger = Tagger()
    live = LiveTagger(tagger, "test", tagger.sample_rate, ChangeSettings(), sink=None)  # type: ignore[arg-type]
    keep = live._recent_keep
    rng = np.random.default_rng(0)
    fed = []
    for n in rng.choice([0, 1, 400, keep // 3, keep - 1, keep, 3 * keep], size=60):
        fed.append(rng.normal(size=int(n)).astype(np.float32))
        live._remember(fed[-1])
        whole = np.concatenate(fed)
        assert live._recent_start + live._recent_n == whole.size
        assert live._recent_n >= min(keep, whole.size)
        assert np.array_equal(live._recent[:live._recent_n], whole[live._recent_start:])


class _Record:
    """A live sink that keeps, per event, the stream seconds it was at (and the changes announced)."""

    def __init__(self) -> None:
        self.updates: list[float] = []
        self.changes: list[tuple[str | None, str]] = []

    def live(self, event) -> None:
        self.updates.append(event.stream_s)

    def genre_changed(self, event) -> None:
        self.changes.append((event.previous, event.current))


def test_a_capture_reopened_after_a_glitch_goes_on_where_it_was(pulse_sink: str, floored: Tagger, tmp_path: Path,
                                                                monkeypatch) -> None:
    """A quiet line-in (an FMA jazz clip 30 dB down) raised by the running floor loses its device: PulseAudio ends
    the capture's stream (pacmd kill-source-output), PortAudio reports it finished, the capture reopens it half a
    second later. The reopened capture goes on with the gain it had, instead of starting from 0 and climbing for
    the floor's 15 s horizon, and with its running ensemble and change detector: its stream goes on (a new one
    starts at 0 and announces its genre again from nothing). Reopened otherwise (other channels: another input) it
    starts over.

    The device stalls (its sink suspended: the stream stays open, no audio comes): the status says so once STALL_S
    passed, not once the device resumes (closing a stalled stream by draining it waited for the resume), and the
    capture comes back by itself when it resumes. Stopped while the device is stalled, the capture still ends."""
    import jsonschema

    from service.live import CLOSE_WAIT_S, STALL_S
    from service.publish import load_schema

    device = f"{pulse_sink}_glitch"  # its own sink: only the streams that record its monitor are ended
    module = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={device}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    # pacmd talks to the server through its CLI protocol (absent unless loaded; another run may have it loaded)
    cli = subprocess.run(["pactl", "load-module", "module-cli-protocol-unix"], capture_output=True, text=True)
    rate = 16000
    quiet = decode_file(DATA / "fma" / "001082.mp3", rate)[:30 * rate] * np.float32(10.0 ** (-30.0 / 20.0))
    quiet = np.tile(quiet, 2)  # the clip twice: enough for every step on a loaded machine
    clip = encode(quiet, rate, tmp_path / "quiet.wav", "pcm_s16le", "wav")
    monkeypatch.setenv("PULSE_SOURCE", f"{device}.monitor")
    sink = _Record()
    capture = LiveCapture(floored, sink, "radio", device="pulse")
    stop = threading.Event()
    player = subprocess.Popen(["paplay", f"--device={device}", str(clip)])
    capture.start(stop)

    def lose_the_device() -> float:
        """End the capture's stream; the gain it had; returns once it was reopened and fed again."""
        had = capture.status.gain_db
        restarts = capture.status.restarts
        sources = subprocess.run(["pactl", "list", "short", "sources"], capture_output=True, text=True).stdout
        source = next(line.split()[0] for line in sources.splitlines() if line.split()[1] == f"{device}.monitor")
        outputs = subprocess.run(["pactl", "list", "short", "source-outputs"], capture_output=True, text=True).stdout
        ours = [line.split()[0] for line in outputs.splitlines() if line.split()[1] == source]
        assert len(ours) == 1, outputs
        subprocess.run(["pacmd", "kill-source-output", ours[0]], check=True)
        # restarts counts after the stop that read the gain 0: a gain above 0 after it is the reopened capture's
        assert wait_until(lambda: capture.status.restarts > restarts and capture.status.running
                          and capture.status.gain_db > 0, 60, interval=0.02), capture.status
        return had

    def updated() -> None:
        """Wait for the capture's next update."""
        n = len(sink.updates)
        assert wait_until(lambda: len(sink.updates) > n, 30, interval=0.02), capture.status

    try:
        # raised by 6 dB: about 9 s in (3 dB/s at most, times the share of the horizon heard so far)
        assert wait_until(lambda: capture.status.gain_db > 6.0, 90, interval=0.02), capture.status
        had = lose_the_device()
        assert capture.status.gain_db > had - 1.0, (had, capture.status)  # without it: about 0.1 dB, rising slowly
        updated()
        # Stalled: said within STALL_S and the close's bounded wait (before the fix: only once it resumed)
        suspended = time.monotonic()
        subprocess.run(["pactl", "suspend-sink", device, "1"], check=True)
        assert wait_until(lambda: capture.status.stalled_s is not None, STALL_S + CLOSE_WAIT_S + 20, interval=0.02), \
            capture.status
        said = capture.status.as_dict()
        assert not said["running"] and said["gain_db"] == 0.0 and "no audio" in said["error"], said
        assert said["stalled_s"] >= STALL_S, said
        jsonschema.validate(said, load_schema()["$defs"]["status"]["properties"]["live"]["additionalProperties"])
        assert wait_until(lambda: capture.status.restarts > 1, CLOSE_WAIT_S + 20, interval=0.02), capture.status
        print(f"stalled said {time.monotonic() - suspended:.1f} s after the suspend: {said}")
        subprocess.run(["pactl", "suspend-sink", device, "0"], check=True)
        assert wait_until(lambda: capture.status.running and capture.status.stalled_s is None, 60, interval=0.02), \
            capture.status
        assert "stalled_s" not in capture.status.as_dict() and not capture.status.error, capture.status
        updated()
        # The glitch and the stall: one stream went on (a new one's updates start again 2.6 to 4 s in), and its
        # genre, if any, was announced once from nothing
        updates, changes = list(sink.updates), list(sink.changes)
        print(f"stream seconds {updates[0]:.1f} to {updates[-1]:.1f} in {len(updates)} updates; changes {changes}")
        assert all(b > a for a, b in pairwise(updates)), updates
        assert sum(previous is None for previous, _ in changes) <= 1, changes
        capture.channels = 1  # reopened as another input
        lose_the_device()
        assert capture.status.gain_db < 2.0, capture.status  # a new floor: about 1 dB a second at first
        # Stopped while stalled: the capture's thread ends (a drained close waited for the resume)
        subprocess.run(["pactl", "suspend-sink", device, "1"], check=True)
        stop.set()
        capture.join(10)
        assert capture.finished.is_set(), "the capture's thread hangs on a stalled device"
    finally:
        stop.set()
        subprocess.run(["pactl", "suspend-sink", device, "0"], capture_output=True)
        capture.join(10)
        player.kill()
        subprocess.run(["pactl", "unload-module", module], capture_output=True)
        if cli.returncode == 0:
            subprocess.run(["pactl", "unload-module", cli.stdout.strip()], capture_output=True)
    assert capture.finished.is_set()
