"""Live capture through real PortAudio and PulseAudio: a null sink, its monitor as the input, paplay.

Needs Debian's pulseaudio, pulseaudio-utils, libportaudio2 and libasound2-plugins (.ci/run installs
them). Outside CI, a machine without them skips these tests and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from daemon_helpers import Subscriber, free_endpoint, start_daemon, stop_daemon

from service.live import ChangeDetector, RingBuffer
from tagger import Tagger

SINK = "genretagger_test"
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
    d = ChangeDetector(hysteresis=3)
    events = [d.update(top) for top in ["jazz", "jazz", "jazz", "rock", "jazz", "rock", "rock", "rock"]]
    assert events == [None, None, (None, "jazz"), None, None, None, None, ("jazz", "rock")]
    # An uncertain update (None) breaks a run and never becomes a change.
    events = [d.update(top) for top in ["pop", "pop", None, "pop", "pop", None, None, None]]
    assert events == [None] * 8 and d.current == "rock"


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
