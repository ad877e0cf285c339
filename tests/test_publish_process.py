"""The publisher's own process: it relays every message, is capped, and comes back when it ends.

Real processes and sockets: a child `python -m service.publish_process`, SUB sockets on loopback, and
signals sent to the child the way a flood at its memory cap or a service manager would end it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import Subscriber, wait_until

from service.publish_process import START_TIMEOUT_S, PublisherProcess
from tagger.errors import ConfigError


def _status(i: int) -> dict:
    return {"type": "status", "uptime_s": float(i), "queue_depth": 0, "tagged": i, "errors": 0,
            "provider": "CPUExecutionProvider", "model": "m", "dropped_messages": 0}


def _publish_until_heard(publisher: PublisherProcess, subscriber: Subscriber, first: int, timeout: float = 30.0) -> int:
    """Publish status messages (tagged = first, first + 1, ...) until ``subscriber`` hears one; the next number."""
    number = first
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish("status", _status(number))
        number += 1
        subscriber.poll(0.2)
        if any(m["tagged"] >= first and not m.get("replay") for m in subscriber.of_type("status")):
            return number
    raise AssertionError(f"no status numbered {first} or more reached the subscriber within {timeout} s")


def test_a_killed_publisher_process_is_replaced_and_subscribers_get_the_state_again(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="service.publish")
    publisher = PublisherProcess("tcp://127.0.0.1:0")
    early = late = None
    try:
        early = Subscriber(publisher.bound, ("status",))
        number = _publish_until_heard(publisher, early, 0)
        before = early.of_type("status")[-1]
        first_child = publisher.pid
        assert first_child is not None
        os.kill(first_child, signal.SIGKILL)  # what the cap does to a flooded child, without the flood
        assert wait_until(lambda: publisher.pid not in (None, first_child), 60), "no new publisher process"
        assert publisher.restarts == 1
        assert "publisher process ended (signal 9)" in caplog.text
        # A new subscriber gets the state the daemon published last, replayed by the new process.
        late = Subscriber(publisher.bound, ("status",))
        assert late.wait_for(lambda msgs: len(msgs) > 0, 30), "the late subscriber got nothing"
        replayed = late.of_type("status")[0]
        assert replayed["replay"] is True and replayed["tagged"] == number - 1
        # The first subscriber reconnects by itself and hears new messages; seq goes on, never back.
        _publish_until_heard(publisher, early, number)
        after = [m for m in early.of_type("status") if m["tagged"] >= number and not m.get("replay")]
        assert after and after[0]["seq"] > before["seq"]
        # what the new process sent (the killed one reported every 0.5 s, so some of its count may be lost)
        assert wait_until(lambda: publisher.sent >= len(after), 10), (publisher.sent, len(after))
    finally:
        for subscriber in (early, late):
            if subscriber is not None:
                subscriber.close()
        child = publisher.pid
        publisher.close()
    assert publisher.pid is None
    assert child is None or not Path(f"/proc/{child}").exists()


def test_the_publisher_process_is_capped_and_leaves_stopping_to_the_daemon() -> None:
    publisher = PublisherProcess("tcp://127.0.0.1:0", memory_limit_mb=100)
    subscriber = None
    try:
        child = publisher.pid
        assert child is not None
        lines = Path(f"/proc/{child}/limits").read_text().splitlines()
        limits = {line[:26].strip(): line[26:].split() for line in lines}
        status = dict(line.split(":", 1) for line in Path(f"/proc/{child}/status").read_text().splitlines()
                      if ":" in line)
        data_mb = int(status["VmData"].split()[0]) / 1024
        cap_mb = int(limits["Max data size"][0]) / 2**20
        print(f"\npublisher process: data segment {data_mb:.0f} MB, capped at {cap_mb:.0f} MB")
        assert 0 < cap_mb - data_mb <= 100
        assert limits["Max core file size"][0] == "0"
        subscriber = Subscriber(publisher.bound, ("status",))
        os.kill(child, signal.SIGTERM)  # a service manager signals the whole group; the daemon decides
        # A message published after the signal and heard: the child took the signal (delivered before it reads
        # again) and went on; a new child would have another pid.
        _publish_until_heard(publisher, subscriber, 0)
        assert publisher.pid == child and publisher.restarts == 0
    finally:
        if subscriber is not None:
            subscriber.close()
        publisher.close()


def test_an_endpoint_the_publisher_process_cannot_bind_is_one_clear_error() -> None:
    first = PublisherProcess("tcp://127.0.0.1:0")
    try:
        with pytest.raises(ConfigError, match="address already in use") as caught:
            PublisherProcess(first.bound)
        assert first.bound in str(caught.value) and "\n" not in str(caught.value)
    finally:
        first.close()
    with pytest.raises(ConfigError, match="inproc"):
        PublisherProcess("inproc://daemon")


def test_closing_with_a_hung_publisher_process_ends_it_and_its_thread() -> None:
    # A child that stops reading its stdin (stopped here; hung for real it looks the same): the daemon's
    # writes block once the pipe is full. close() must still end the child and the supervising thread,
    # not leave them behind (a hung child would keep the endpoint bound after the daemon is gone).
    publisher = PublisherProcess("tcp://127.0.0.1:0", queue_size=100)
    child = publisher.pid
    assert child is not None
    os.kill(child, signal.SIGSTOP)
    try:
        big = {"type": "status", "padding": "x" * 20_000}
        for _ in range(500):  # ~10 MB: more than the pipe holds, and the queue fills behind it
            publisher.publish("status", big)
        assert wait_until(lambda: publisher._queue.full(), 30), "the queue never filled behind the hung child"
    finally:
        publisher.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    assert wait_until(lambda: not Path(f"/proc/{child}").exists() or
                      "State:\tZ" in Path(f"/proc/{child}/status").read_text(), 10), "the hung child was left running"
    assert wait_until(lambda: not publisher._supervisor.is_alive(), 10), "the supervising thread was left blocked"
    assert publisher.pid is None


def test_a_publisher_process_that_ends_at_start_is_reported_at_once(monkeypatch) -> None:
    # An interpreter that exits without a word (here /bin/false): the daemon says so at once instead of
    # waiting START_TIMEOUT_S for an answer that cannot come.
    monkeypatch.setattr(sys, "executable", shutil.which("false"))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="ended at start") as caught:
        PublisherProcess("tcp://127.0.0.1:0")
    assert time.monotonic() - started < START_TIMEOUT_S / 2, "waited for an answer from a process that had ended"
    assert "exit status 1" in str(caught.value)


def test_a_publisher_process_that_cannot_be_started_again_is_tried_again_not_given_up(monkeypatch, caplog) -> None:
    # The interpreter went away under a running daemon (its virtual environment rebuilt, a fork refused):
    # each restart fails with an OSError; the supervising thread must log it and keep trying, not die.
    caplog.set_level(logging.WARNING, logger="service.publish")
    python = sys.executable
    publisher = PublisherProcess("tcp://127.0.0.1:0")
    subscriber = None
    try:
        first_child = publisher.pid
        monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
        os.kill(first_child, signal.SIGKILL)
        assert wait_until(lambda: "cannot start again" in caplog.text, 30), caplog.text
        assert publisher._supervisor.is_alive(), "the supervising thread died: the publisher never comes back"
        monkeypatch.setattr(sys, "executable", python)
        assert wait_until(lambda: publisher.pid not in (None, first_child), 60), "no new publisher process"
        subscriber = Subscriber(publisher.bound, ("status",))
        _publish_until_heard(publisher, subscriber, 0)
    finally:
        if subscriber is not None:
            subscriber.close()
        publisher.close()
    assert not publisher._supervisor.is_alive()


def test_a_publisher_process_whose_daemon_was_killed_ends_quietly(tmp_path: Path) -> None:
    # kill -9 of the daemon: the child sees the end of its stdin and ends; its last lines meet a closed pipe.
    # That is expected, and must not print a traceback into the log it shares with the daemon (its stderr).
    script = ("import sys, time\nfrom service.publish_process import PublisherProcess\n"
              "p = PublisherProcess('tcp://127.0.0.1:0')\n"
              "deadline = time.monotonic() + 60\n"
              "while not p._stats and time.monotonic() < deadline:\n"  # until a counts report of the child is read
              "    time.sleep(0.05)\n"
              "print(p.pid, flush=True)\ntime.sleep(600)\n")
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=out)
    try:
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(30)
        assert wait_until(lambda: not Path(f"/proc/{child}").exists(), 30), "the publisher outlived its daemon"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
    text = log.read_text()
    assert "Traceback" not in text and "Exception" not in text, text


def test_messages_published_from_several_threads_reach_subscribers_in_seq_order() -> None:
    # The daemon publishes from several threads (live captures, the sink hub, the heartbeat). Subscribers,
    # `genre-tagger listen` among them, count a jump in seq as dropped messages: seq must never go back.
    publisher = PublisherProcess("tcp://127.0.0.1:0", queue_size=100_000)
    subscriber = Subscriber(publisher.bound, ("status",))
    switch = sys.getswitchinterval()
    try:
        _publish_until_heard(publisher, subscriber, 0)
        start = publisher.seq
        sys.setswitchinterval(1e-6)  # thread switches as often as a loaded machine makes them

        def burst(base: int) -> None:
            for i in range(1500):
                publisher.publish("status", _status(base + i))

        threads = [threading.Thread(target=burst, args=(100_000 * (n + 1),)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(switch)
        _publish_until_heard(publisher, subscriber, 1_000_000, timeout=60)  # all before it has been handed on
    finally:
        sys.setswitchinterval(switch)
        subscriber.close()
        publisher.close()
    seqs = [m["seq"] for m in subscriber.of_type("status") if m["seq"] >= start and not m.get("replay")]
    backwards = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    assert len(seqs) > 1000, len(seqs)  # enough of the burst got through (the rest: counted drops at send_hwm)
    assert backwards == 0, f"{backwards} of {len(seqs)} messages came after one with a higher seq"


def test_a_hung_publisher_process_is_ended_and_replaced(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="service.publish")
    publisher = PublisherProcess("tcp://127.0.0.1:0", stall_seconds=2.0)
    subscriber = None
    try:
        hung = publisher.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # alive but silent, as a child with a stuck thread would be
        assert wait_until(lambda: publisher.pid not in (None, hung), 60), "the hung process was not replaced"
        assert f"publisher process {hung} sent nothing for" in caplog.text
        assert not Path(f"/proc/{hung}").exists() or b" Z " in Path(f"/proc/{hung}/stat").read_bytes()
        subscriber = Subscriber(publisher.bound, ("status",))
        _publish_until_heard(publisher, subscriber, 0)
        time.sleep(3.0)  # a healthy child reports every 0.5 s: the watchdog leaves it alone
        assert publisher.restarts == 1
    finally:
        if subscriber is not None:
            subscriber.close()
        publisher.close()


def test_the_counts_add_up_over_children_and_queue_drops_and_cannot_be_set() -> None:
    # sent/dropped/... are summed over every child (the ended ones too) and, for dropped, the messages the
    # daemon side could not queue; they are counts, not settings.
    publisher = PublisherProcess("tcp://127.0.0.1:0", queue_size=10)
    try:
        assert all(publisher.publish("status", _status(i)) for i in range(5))  # room for them in the queue
        assert wait_until(lambda: publisher.sent >= 5, 30), publisher.sent
        first_child = publisher.pid
        os.kill(first_child, signal.SIGSTOP)  # the child stops reading: the pipe, then the queue fill up
        try:
            refused = sum(not publisher.publish("status", _status(i)) for i in range(5, 5005))
        finally:
            os.kill(first_child, signal.SIGCONT)
        assert refused > 0 and publisher.dropped >= refused, (refused, publisher.dropped)
        sent_before = publisher.sent
        os.kill(first_child, signal.SIGKILL)
        assert wait_until(lambda: publisher.pid not in (None, first_child), 60), "no new publisher process"
        for i in range(10):  # the new child may still be taking what the queue held when the old one ended
            assert wait_until(lambda i=i: publisher.publish("status", _status(i)), 30), "the queue stays full"
        # the ended child's counts are kept (up to its last report) and the new one's are added
        assert wait_until(lambda: publisher.sent >= sent_before + 10, 30), (sent_before, publisher.sent)
        assert publisher.dropped >= refused and publisher.resets == publisher.ignored_frames == 0
        with pytest.raises(AttributeError):
            publisher.sent = 0
        assert "subscriber missed" in (PublisherProcess.dropped.__doc__ or "")
    finally:
        publisher.close()
