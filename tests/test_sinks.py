"""The sink hub: inline and queued delivery, bounded queues that drop the oldest, failures that stay
inside their sink, backoff, a close that fits the SIGTERM budget; the events' one JSON form."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import VALIDATOR, Subscriber

from service.config import Config, load_config
from service.events import GenreChanged, LiveUpdate, Status, TrackDone
from service.live import ChangeSettings, LiveTagger
from service.sinks import Sink, SinkContext, SinkHub, SinkSettings, sink_classes
from service.sinks.zmq import PublishSection, ZmqSink
from tagger import Tagger
from tagger.errors import ConfigError


def _status(i: int = 0) -> Status:
    return Status(uptime_s=float(i), queue_depth=0, tagged=i, errors=0, audio_seconds=0.0, realtime_factor=0.0,
                  provider="CPUExecutionProvider", model="m 1")


class Recorder(Sink):
    name = "recorder"

    def __init__(self, inline: bool = False, delay: float = 0.0, fail: bool = False, queue: int = 1000) -> None:
        settings = SinkSettings()
        settings.queue = queue  # type: ignore[attr-defined]
        super().__init__(settings, SinkContext(Config()))
        self.inline = inline  # type: ignore[misc]
        self.delay = delay
        self.fail = fail
        self.events: list = []
        self.threads: set[str] = set()
        self.closed = False

    def status(self, event: Status) -> None:
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("disk on fire")
        self.events.append(event)

    def close(self, deadline: float) -> None:
        self.closed = True


def test_inline_sinks_run_in_the_caller_and_queued_ones_in_their_own_thread() -> None:
    inline, queued = Recorder(inline=True), Recorder()
    hub = SinkHub([inline, queued])
    hub.start()
    for i in range(5):
        hub.status(_status(i))
    hub.close(time.monotonic() + 5)
    assert [e.tagged for e in inline.events] == [e.tagged for e in queued.events] == list(range(5))
    assert inline.threads == {threading.current_thread().name}
    assert queued.threads == {"sink-recorder"}
    assert inline.closed and queued.closed
    assert hub.counts()["recorder"]["delivered"] == 5


def test_a_slow_sink_drops_its_oldest_events_counted_and_never_delays_the_producer() -> None:
    slow, fast = Recorder(delay=0.05, queue=10), Recorder(inline=True)
    hub = SinkHub([slow, fast])
    hub.start()
    started = time.perf_counter()
    for i in range(200):
        hub.status(_status(i))
    elapsed = time.perf_counter() - started
    counts = hub.slots[0].snapshot()
    hub.close(time.monotonic() + 2)
    print(f"\n200 events offered in {1000 * elapsed:.1f} ms; the slow sink dropped {counts['dropped']}")
    assert elapsed < 1.0  # 200 × 50 ms = 10 s if the producer waited on the slow sink
    assert len(fast.events) == 200
    assert counts["dropped"] >= 150
    assert slow.events[-1].tagged == 199  # the newest survive, the oldest went
    assert len(slow.events) + hub.slots[0].counts.dropped == 200


def test_a_failing_sink_is_logged_counted_suspended_and_the_others_go_on(caplog) -> None:
    bad, good = Recorder(fail=True), Recorder()
    hub = SinkHub([bad, good])
    hub.start()
    for i in range(20):
        hub.status(_status(i))
    deadline = time.monotonic() + 10
    while len(good.events) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    bad_counts = hub.slots[0].snapshot()
    hub.close(time.monotonic() + 1)
    assert len(good.events) == 20
    assert bad_counts["errors"] >= 3 and bad_counts["last_error"] == "RuntimeError: disk on fire"
    assert "suspended_s" in bad_counts  # three failures in a row: backing off, not hammering
    assert bad_counts["errors"] < 20
    warnings = [r.getMessage() for r in caplog.records if "recorder" in r.getMessage()]
    assert any("failed: RuntimeError: disk on fire" in w for w in warnings)
    assert any("suspended for 0.5 s" in w for w in warnings)


class ChangeRecorder(Sink):
    """Handles genre changes only, slowly (as a text-file or Icecast sink on a slow disk or server)."""

    name = "changes"

    def __init__(self) -> None:
        settings = SinkSettings()
        settings.queue = 4  # type: ignore[attr-defined]
        super().__init__(settings, SinkContext(Config()))
        self.changes: list[GenreChanged] = []

    def genre_changed(self, event: GenreChanged) -> None:
        time.sleep(0.05)
        self.changes.append(event)


def test_a_sink_gets_only_the_events_it_handles_so_live_updates_never_push_out_a_change() -> None:
    sink = ChangeRecorder()
    hub = SinkHub([sink])
    hub.start()
    sent = []
    for i in range(200):
        hub.live(LiveUpdate(source="radio", stream_s=float(i), horizon_s=4.0, slices=(), estimates={}, labels={}))
        if i % 50 == 0:
            sent.append(GenreChanged(source="radio", stream_s=float(i), previous=None, current=f"genre {i}",
                                     confidence=0.9))
            hub.genre_changed(sent[-1])
    hub.close(time.monotonic() + 5)
    counts = hub.counts()["changes"]
    assert sink.changes == sent  # a queue of 4 and 200 live updates: every change still arrives, in order
    assert counts["delivered"] == len(sent) and counts["dropped"] == 0


def test_close_keeps_to_its_deadline_with_a_stuck_sink() -> None:
    stuck = Recorder(delay=30.0)
    hub = SinkHub([stuck])
    hub.start()
    for i in range(3):
        hub.status(_status(i))
    started = time.monotonic()
    hub.close(started + 0.5)
    assert time.monotonic() - started < 1.5
    assert hub.counts()["recorder"]["dropped"] >= 1


def test_sinks_are_found_configured_and_validated_per_section() -> None:
    classes = sink_classes()
    assert classes["publish"] is ZmqSink and "recorder" not in classes  # a test's sink is not the daemon's
    config = load_config(None, env={"GENRE_TAGGER_PUBLISH_SEND_HWM": "7"}, validate=False)
    assert config.publish.send_hwm == 7 and config.sinks["publish"] is config.publish
    with pytest.raises(ConfigError, match=r"config publish\.send_hwm: must be at least 1"):
        load_config(None, env={}, overrides={"publish": {"send_hwm": 0}}, extra_roots=["."])
    with pytest.raises(ConfigError, match=r"unknown section \[nosuch\]"):
        load_config(None, env={}, overrides={"nosuch": {"x": 1}})
    hub = SinkHub.from_config(load_config(None, env={}, overrides={"publish": {"endpoint": ""},
                                                                   "console": {"enabled": False}}, validate=False),
                              SinkContext(Config()))
    assert hub.sinks == [] and hub.describe() == "no sinks"


def test_every_event_is_one_message_the_schema_validates_on_zeromq(tiny_model: Path, tmp_path: Path) -> None:
    sink = ZmqSink(PublishSection(endpoint=f"ipc://{tmp_path}/pub"), SinkContext(Config()))
    hub = SinkHub([sink])
    hub.start()
    sub = Subscriber(sink.publisher.bound)  # type: ignore[union-attr]
    time.sleep(0.3)
    tagger = Tagger(tiny_model, threshold=0.0)  # every top decided: only decided genres become changes
    collected: list = []

    class Collect:
        def live(self, e: LiveUpdate) -> None:
            collected.append(e)
            hub.live(e)

        def genre_changed(self, e: GenreChanged) -> None:
            collected.append(e)
            hub.genre_changed(e)

    live = LiveTagger(tagger, "radio", tagger.sample_rate, ChangeSettings(10.0, hysteresis=1), Collect(), top_k=2)
    rng = np.random.default_rng(0)
    live.feed(rng.standard_normal(6 * tagger.sample_rate).astype(np.float32) * 0.1, time.monotonic())
    hub.track(TrackDone(3, "/music/a.flac", error="not a readable audio file"))
    hub.status(_status())
    sub.wait_for(lambda msgs: any(m["type"] == "status" for _, m in msgs), 10)
    hub.close(time.monotonic() + 1)
    sub.close()
    topics = [t for t, _ in sub.messages]
    assert "live.radio" in topics and "change.radio" in topics and "track" in topics and "status" in topics
    update = next(e for e in collected if isinstance(e, LiveUpdate))
    topic, message = update.as_message()
    assert topic == "live.radio" and message["music"] is True and message["top"] == update.top
    assert message is update.as_message()[1]  # built once, shared by every sink
    assert all(len(est["scores"]) == 2 for est in message["ensemble"].values())
    changed = next(m for t, m in sub.messages if t == "change.radio")
    assert changed["previous"] is None and changed["uncertain"] == update.uncertain
    failed = next(m for t, m in sub.messages if t == "track")
    assert failed == {**failed, "ok": False, "status": "error", "error": "not a readable audio file", "track_id": 3}
    for _, m in sub.messages:
        VALIDATOR.validate(m)  # Subscriber validates too; explicit here


def test_the_http_display_counts_the_library_at_most_once_a_second_yet_its_totals_follow_every_file(
        tmp_path: Path) -> None:
    import sqlite3

    from service.library import Library
    from service.sinks.http import TOTALS_REFRESH_S, HttpSection, HttpSink
    from tagger.pipeline import TrackResult

    db = tmp_path / "library.db"
    Library(db).close()
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO tracks (path, size, mtime, status, queued_at, attempts) "
                         "VALUES (?, 1, 0, 'pending', '', 0)", [(f"/music/{i}.flac",) for i in range(60)])
    config = Config()
    config.daemon.library = str(db)
    sink = HttpSink(HttpSection(enabled=True), SinkContext(config))  # not started: its messages are caught
    sent: list[tuple[str, dict]] = []
    sink._hand_over = lambda kind, message: sent.append((kind, message))  # type: ignore[method-assign]
    counted: list[str] = []
    sink._connect().set_trace_callback(lambda sql: counted.append(sql) if "GROUP BY status" in sql else None)

    worker = sqlite3.connect(db)  # the tagging worker: the library first, then the event
    started = time.monotonic()
    for i in range(50):
        ok = i % 5 != 0
        worker.execute("UPDATE tracks SET status = ? WHERE id = ?", ["tagged" if ok else "error", i + 1])
        worker.commit()
        result = TrackResult(f"/music/{i}.flac", 1.0, {}, "m", "1", "cpu", 0.0) if ok else None
        sink.track(TrackDone(i + 1, f"/music/{i}.flac", result, error="" if ok else "unreadable"))
    elapsed = time.monotonic() - started
    actual = dict(worker.execute("SELECT status, count(*) FROM tracks GROUP BY status"))
    assert actual == {"pending": 10, "tagged": 40, "error": 10}
    assert [m["library_totals"] for _, m in sent[-1:]] == [actual]  # every file counted, without a query each
    assert len(counted) <= 2 + elapsed / TOTALS_REFRESH_S, (len(counted), elapsed)

    sink.status(_status())  # each heartbeat counts afresh
    assert sent[-1][1]["library_totals"] == actual and "GROUP BY status" in counted[-1]
    worker.close()
    sink.close(time.monotonic() + 1)


class Gate(Sink):
    """Takes its first status event, then waits for ``go`` before it takes any other."""

    name = "gate"

    def __init__(self, inline: bool = False, queue: int = 1000) -> None:
        settings = SinkSettings()
        settings.queue = queue  # type: ignore[attr-defined]
        super().__init__(settings, SinkContext(Config()))
        self.inline = inline  # type: ignore[misc]
        self.go = threading.Event()
        self.taken = 0

    def status(self, event: Status) -> None:
        if not self.inline:
            self.go.wait(30)
        self.taken += 1


def test_counts_are_exact_and_queues_never_overshoot_under_concurrent_producers() -> None:
    import sys

    class Watched(collections.deque):
        most = 0

        def append(self, item: object) -> None:
            super().append(item)
            self.most = max(self.most, len(self))

    queued, inline = Gate(queue=50), Gate(inline=True)
    hub = SinkHub([queued, inline])
    hub.slots[0].queue = Watched()
    hub.start()
    producers, each = 8, 2000
    barrier = threading.Barrier(producers)

    def produce() -> None:
        barrier.wait()
        for i in range(each):
            hub.status(_status(i))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the races show up, if any
    try:
        threads = [threading.Thread(target=produce) for _ in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(switch)
    total = producers * each
    assert hub.slots[0].queue.most <= 50  # a queue of 50 holds at most 50, whatever the number of producers
    assert hub.slots[0].snapshot()["queued"] <= 50
    queued.go.set()
    hub.close(time.monotonic() + 10)
    counts = {slot.sink.inline: slot.counts for slot in hub.slots}
    assert counts[True].delivered == inline.taken == total and counts[True].dropped == 0
    assert counts[False].delivered == queued.taken and counts[False].delivered + counts[False].dropped == total


def _until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_idle_queued_sink_sleeps_without_polling_until_an_event_or_the_close_wakes_it() -> None:
    sink = Recorder()
    hub = SinkHub([sink])
    slot = hub.slots[0]
    polls = []
    wait = slot.closing.wait
    slot.closing.wait = lambda timeout=None: polls.append(timeout) or wait(timeout)  # type: ignore[method-assign]
    hub.start()
    assert _until(lambda: slot.asleep)
    before = len(polls)
    time.sleep(1.0)
    assert len(polls) == before  # asleep: no wake-ups at all (was one each 20 ms)
    hub.status(_status(1))
    assert _until(lambda: len(sink.events) == 1)  # the producer woke it
    assert _until(lambda: slot.asleep)
    started = time.monotonic()
    hub.close(started + 4.5)
    assert time.monotonic() - started < 4.0 and not slot.thread.is_alive()  # woken by the close, not timed out
    assert hub.counts()["recorder"] == {"delivered": 1, "dropped": 0, "errors": 0, "queued": 0}


def test_after_a_live_update_a_sink_polls_for_a_while_so_the_live_thread_wakes_nobody() -> None:
    from service.sinks import LIVE_LINGER_S

    class LiveRecorder(Recorder):
        def live(self, event: LiveUpdate) -> None:
            self.events.append(event)

    sink = LiveRecorder()
    hub = SinkHub([sink])
    slot = hub.slots[0]
    hub.start()
    assert _until(lambda: slot.asleep)
    woken = 0
    for i in range(5):
        woken += slot.asleep  # the producer sets the wake-up only for a sleeping sink
        hub.live(LiveUpdate(source="radio", stream_s=float(i), horizon_s=4.0, slices=(), estimates={}, labels={}))
        time.sleep(0.1)
    assert _until(lambda: len(sink.events) == 5)
    assert woken <= 2  # the first update wakes it; later ones find it polling (unless the box stalled 3 s)
    assert _until(lambda: slot.asleep, 10 + LIVE_LINGER_S)  # then it sleeps again
    hub.close(time.monotonic() + 4.5)
    assert hub.counts()["recorder"]["delivered"] == 5


def test_only_a_real_delivery_counts_as_a_success_that_ends_a_backoff(caplog) -> None:
    """An Icecast change to "no music" with no_music = "" sends nothing: it must not reset the failure count
    nor log that the sink works again (nor must another source's change or an uncertain one)."""
    import socket

    from service.sinks.icecast import IcecastSection, IcecastSink

    with socket.socket() as closed:  # a free port with nothing listening: every update is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = IcecastSection(enabled=True, url=f"http://127.0.0.1:{port}", password="x", timeout_seconds=5.0,
                              source="radio")
    hub = SinkHub([IcecastSink(settings, SinkContext(Config()))])
    slot = hub.slots[0]  # delivered directly, in this thread: no timing involved

    def change(current: str, **kw) -> GenreChanged:
        return GenreChanged(source=kw.pop("source", "radio"), stream_s=0.0, previous=None, current=current,
                            confidence=0.9, **kw)

    slot.deliver(change("jazz"))
    assert slot.counts.consecutive_failures == 1 and slot.counts.errors == 1
    for nothing_to_do in (change("no music", music=False), change("rock", source="other"),
                          change("blues", uncertain=True)):
        slot.deliver(nothing_to_do)
    assert slot.counts.consecutive_failures == 1 and slot.counts.delivered == 0
    assert slot.snapshot()["skipped"] == 3
    assert not any("works again" in r.getMessage() for r in caplog.records)
    slot.deliver(change("metal"))
    assert slot.counts.consecutive_failures == 2  # the count goes on: the backoff engages at the third


def test_tag_writes_the_tags_sink_never_made_stay_owed_not_lost(tmp_path: Path, caplog) -> None:
    """Its queue overflowed while a write hung, then the daemon stopped: every file whose tags were not
    written keeps its owed write in the library (made from there later; test_tags_owed.py), and none is
    queued to be tagged again."""
    import sqlite3

    from service.library import Library
    from service.sinks.tags import TagsSection, TagsSink
    from tagger.pipeline import TrackResult

    db = tmp_path / "library.db"
    Library(db).close()
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO tracks (path, size, mtime, status, queued_at, attempts) "
                         "VALUES (?, 1, 0, 'tagged', '', 1)", [(f"/music/{i}.flac",) for i in range(1, 7)])
        conn.executemany("INSERT INTO tags_owed (track_id, result, owed_at) VALUES (?, '{}', '')",
                         [(i,) for i in range(1, 7)])
    config = Config()
    config.daemon.library = str(db)

    class HungWrite(TagsSink):
        entered, release = threading.Event(), threading.Event()

        def track(self, event: TrackDone) -> bool:
            self.entered.set()
            self.release.wait(30)
            return False

    sink = HungWrite(TagsSection(write=True, queue=3), SinkContext(config, {}, "m 1"))
    hub = SinkHub([sink])
    hub.start()
    try:
        for i in range(1, 7):
            hub.track(TrackDone(i, f"/music/{i}.flac", TrackResult(f"/music/{i}.flac", 1.0, {}, "m", "1", "cpu", 0.0)))
            if i == 1:
                assert sink.entered.wait(30)  # file 1's write hangs; 2 and 3 are pushed out of the queue of 3
        hub.close(time.monotonic() + 0.5)  # 4, 5 and 6 still queued at the close
    finally:
        sink.release.set()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT id, status || ' ' || priority FROM tracks"))
        owed = [i for (i,) in conn.execute("SELECT track_id FROM tags_owed WHERE failed_at IS NULL ORDER BY 1")]
    assert rows == {i: "tagged 0" for i in range(1, 7)}  # not tagged again: their writes are owed
    assert owed == [1, 2, 3, 4, 5, 6]
    assert hub.counts()["tags"]["dropped"] == 5
    assert sink._lost  # a running sink makes them at its next heartbeat
    assert any("5 files' tags were not written now" in r.getMessage() for r in caplog.records)


def test_a_sink_that_raises_system_exit_fails_counted_and_its_thread_goes_on() -> None:
    class Exits(Recorder):
        def status(self, event: Status) -> None:
            if event.tagged == 0:
                raise SystemExit(3)  # a library calling sys.exit: a thread would end silently
            super().status(event)

    sink = Exits()
    hub = SinkHub([sink])
    hub.start()
    hub.status(_status(0))
    hub.status(_status(1))
    assert _until(lambda: len(sink.events) == 1)
    assert hub.slots[0].thread.is_alive()
    hub.close(time.monotonic() + 4.5)
    counts = hub.counts()["recorder"]
    assert counts["errors"] == 1 and counts["delivered"] == 1 and counts["last_error"] == "SystemExit: 3"


def test_an_icecast_server_that_never_stops_answering_costs_no_memory() -> None:
    import socket

    from service.sinks.icecast import IcecastSection, IcecastSink

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def endless() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n")
            chunk = b"<x>" * 20000
            while not stop.is_set():
                try:
                    conn.sendall(chunk)
                except OSError:  # the sink read enough and hung up
                    return

    threading.Thread(target=endless, daemon=True).start()
    sink = IcecastSink(IcecastSection(enabled=True, url=f"http://127.0.0.1:{server.getsockname()[1]}",
                                      password="x", timeout_seconds=10.0), SinkContext(Config()))
    outcome: list[BaseException | None] = []

    def update() -> None:
        try:
            sink.update("jazz")
            outcome.append(None)
        except BaseException as exc:  # the outcome is what the test looks at
            outcome.append(exc)

    thread = threading.Thread(target=update, daemon=True)
    thread.start()
    thread.join(60)
    stop.set()
    server.close()
    assert not thread.is_alive(), "the sink kept reading an endless answer"
    assert isinstance(outcome[0], ConnectionError) and "did not update /stream" in str(outcome[0])


def test_an_exception_that_cannot_be_printed_is_still_a_counted_failure() -> None:
    class Mute(Exception):
        def __str__(self) -> str:
            raise ValueError("no words")

    class Raises(Recorder):
        def status(self, event: Status) -> None:
            if event.tagged == 0:
                raise Mute()
            super().status(event)

    sink = Raises()
    hub = SinkHub([sink])
    hub.start()
    hub.status(_status(0))
    hub.status(_status(1))
    assert _until(lambda: len(sink.events) == 1)  # the thread is alive and went on
    hub.close(time.monotonic() + 4.5)
    counts = hub.counts()["recorder"]
    assert counts["errors"] == 1 and counts["last_error"] == "Mute"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread that dies
def test_an_http_display_whose_server_thread_died_says_so_and_keeps_nothing() -> None:
    from service.sinks.http import HttpSection, HttpSink

    sink = HttpSink(HttpSection(enabled=True, listen="127.0.0.1:0"), SinkContext(Config()))
    hub = SinkHub([sink])
    hub.start()
    try:
        def end_the_loop() -> None:
            raise SystemExit  # what asyncio does not catch: run_forever ends, and its thread

        sink._loop.call_soon_threadsafe(end_the_loop)
        sink._thread.join(30)
        assert not sink._thread.is_alive()
        slot = hub.slots[0]
        left = len(sink._loop._ready)  # what the loop had not run yet when it ended
        for i in range(5):
            slot.deliver(GenreChanged(source="radio", stream_s=float(i), previous=None, current="jazz",
                                      confidence=0.9))
        assert slot.counts.errors == 5 and "server thread has stopped" in slot.counts.last_error
        assert len(sink._loop._ready) == left  # nothing piles up in the dead loop
    finally:
        hub.close(time.monotonic() + 2)
