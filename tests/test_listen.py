"""`genre-tagger listen`: a late listener learns the current state at once, silence says so, and results
below the threshold are marked uncertain as `tag` marks them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import zmq
from daemon_helpers import Subscriber, free_endpoint, query, start_daemon, stop_daemon, wait_until
from test_live import pulse_sink  # noqa: F401  (the PulseAudio null sink fixture)


def _listen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger.cli", "listen", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_listen_says_plainly_when_no_daemon_answers() -> None:
    endpoint = free_endpoint()  # nothing listens there
    started = time.monotonic()
    proc = _listen(endpoint, "--timeout", "5")
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"genre-tagger: no daemon answers at {endpoint} (nothing in 3 s)"), proc.stderr
    assert lines[-1] == f"genre-tagger: no daemon answered at {endpoint} in 5 s"
    assert proc.stdout == "" and took < 30


def test_a_late_listener_gets_the_last_status_and_each_live_genre_within_1_s(
        pulse_sink: str, tiny_model: Path, tmp_path: Path, realworld: Path) -> None:  # noqa: F811
    music = tmp_path / "music"
    music.mkdir()
    (music / "menu.opus").write_bytes((realworld / "warzone2100-music" / "menu.opus").read_bytes())
    endpoint = free_endpoint()
    env = {"PULSE_SOURCE": f"{pulse_sink}.monitor", "GENRE_TAGGER_PUBLISH_HEARTBEAT_SECONDS": "2"}
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--settle", "0.2", "--live", "pulse",
                          "--source", "radio", endpoint=endpoint, env=env)
    player = None
    watcher = Subscriber(endpoint, ("live.radio",))
    heartbeats = Subscriber(endpoint, ("status",))
    try:
        player = subprocess.Popen(["paplay", f"--device={pulse_sink}", str(music / "menu.opus")])
        db = tmp_path / "state" / "library.db"
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status = 'tagged'")[0][0] == 1, 120), \
            daemon.log_path.read_text()
        assert watcher.wait_for(lambda msgs: len(msgs) >= 2, 60), daemon.log_path.read_text()
        # a heartbeat after the tagging: the last status (the one the cache replays) counts the track
        assert heartbeats.wait_for(lambda _: any(m["tagged"] >= 1 for m in heartbeats.of_type("status")), 60), \
            heartbeats.of_type("status")[-1:]

        late = zmq.Context.instance().socket(zmq.SUB)
        late.setsockopt(zmq.LINGER, 0)
        connected = time.monotonic()
        late.connect(endpoint)
        late.subscribe(b"")
        # The cache's copy (replay: true) of each topic, and how soon it came. Not "the first message of each
        # topic": a live update published in the ~50 ms before the replay came first once (replay: None), at
        # load 6; that says nothing about the cache.
        replayed: dict[str, float] = {}
        while time.monotonic() - connected < 10.0 and len(replayed) < 2:
            if late.poll(100):
                topic, body = late.recv_multipart()
                if json.loads(body).get("replay"):
                    replayed.setdefault(topic.decode(), time.monotonic() - connected)
        late.close()
        print(f"\nlate subscriber: the cached message per topic, s after connecting: {replayed}")
        assert set(replayed) == {"status", "live.radio"}
        assert replayed["status"] < 1.0 and replayed["live.radio"] < 1.0  # at once, not at the next 2 s heartbeat

        proc = _listen(endpoint, "--timeout", "1")
        out = proc.stdout
        assert proc.returncode == 0, proc.stderr
        assert out.startswith("status  up") and "1 tagged" in out and "live radio running" in out, out
        assert any(line.startswith("live.radio") for line in out.splitlines()), out

        as_json = _listen(endpoint, "--json", "--timeout", "1", "--topic", "live.")
        messages = [json.loads(line) for line in as_json.stdout.splitlines()]
        # the cached live.radio is replayed at once; a fresh live message may overtake it by a few ms
        assert messages and messages[0]["topic"] == "live.radio"
        assert any(m["topic"] == "live.radio" and m.get("replay") is True for m in messages), messages
        assert all(m["topic"] != "status" for m in messages)  # asked for live. only
    finally:
        if player is not None:
            player.kill()
            player.wait()
        watcher.close()
        heartbeats.close()
        assert stop_daemon(daemon) == 0


def test_lines_mark_results_below_the_threshold_uncertain() -> None:
    from service.cli import render_message

    estimate = {"title": "Genre", "multi_label": False, "top": "jazz", "confidence": 0.56, "margin": 0.3,
                "decided": [], "uncertain": True, "candidates": ["jazz", "classical"], "threshold": 0.6,
                "scores": {"jazz": 0.56, "classical": 0.26}}
    message = {"type": "track", "path": "/m/a.flac", "ok": True, "outputs": {"genre": estimate}}
    assert render_message("track", message) == "track  /m/a.flac: uncertain: jazz / classical (56 %)"
    decided = {**estimate, "uncertain": False, "decided": ["jazz"], "confidence": 0.72}
    assert render_message("track", {**message, "outputs": {"genre": decided}}) == "track  /m/a.flac: jazz (72 %)"
    assert render_message("track", {**message, "music": False}).endswith(": no music (56 %)")
    status = {"type": "status", "uptime_s": 12.0, "queue_depth": 3, "tagged": 5, "errors": 1,
              "provider": "CPUExecutionProvider", "dropped_messages": 0, "live": {"radio": {"running": False,
              "error": "no audio input device"}}, "library": "library locked by another process for 42 s"}
    assert render_message("status", status) == ("status  up 12 s, 3 queued, 5 tagged, 1 errors, CPUExecutionProvider, "
                                                "0 dropped; live radio stopped (no audio input device); library "
                                                "locked by another process for 42 s")
    # A running floor's gain: shown when it rounds to something (a gain of 0.04 dB is not "raised 0.0 dB").
    for gain, shown in ((0.0, ""), (0.04, ""), (0.05, ", raised 0.1 dB"), (13.86, ", raised 13.9 dB")):
        playing = {**status, "live": {"radio": {"running": True, "gain_db": gain}}, "library": ""}
        assert render_message("status", playing).endswith("; live radio running" + shown), gain
    # A stalled device: how long it has delivered no audio, not its error again; closes that hung, counted.
    stalled = {**status, "library": "", "live": {"radio": {"running": False, "error": "RuntimeError: the input device "
                                                           "delivers no audio", "stalled_s": 12.4, "hung_closes": 2}}}
    assert render_message("status", stalled).endswith("; live radio stalled (no audio for 12 s), 2 hung stream closes")
    live = {"type": "live", "source": "radio", "stream_s": 12.0, "slices": [], "ensemble": {"genre": estimate},
            "top": "jazz", "confidence": 0.56, "horizon_s": 30.0}
    headline = render_message("live.radio", live).splitlines()[0]
    assert headline == "live.radio  12.0 s  → uncertain: jazz / classical (56 %)"
    assert render_message("live.radio", {**live, "ensemble": {"genre": decided}, "confidence": 0.72}
                          ).splitlines()[0] == "live.radio  12.0 s  → jazz (72 %)"


def test_a_withdrawn_genre_and_its_return_read_as_what_they_are() -> None:
    """The live detector's uncertain announcements as `listen` prints them: a withdrawal, then that uncertain
    genre decided ("rock" → "rock" is no repeat: its message says the previous one was uncertain)."""
    from daemon_helpers import VALIDATOR

    from service.cli import render_message
    from service.events import GenreChanged
    from service.publish import SCHEMA_ID

    withdrawn = GenreChanged(source="radio", stream_s=20.0, previous="jazz", current="rock", confidence=0.45,
                             uncertain=True)
    decided = GenreChanged(source="radio", stream_s=24.0, previous="rock", current="rock", confidence=0.7,
                           previous_uncertain=True)
    lines = []
    for event in (withdrawn, decided):
        topic, message = event.as_message()
        VALIDATOR.validate({"schema": SCHEMA_ID, "seq": 0, **message})  # as the publisher sends it
        lines.append(render_message(topic, message))
    assert lines == ["change.radio  genre changed at 20.0 s: jazz → rock (uncertain)",
                     "change.radio  genre changed at 24.0 s: rock (uncertain) → rock"]
