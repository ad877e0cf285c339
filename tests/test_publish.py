"""The publisher never blocks: a full subscriber costs counted drops, healthy ones keep receiving."""

from __future__ import annotations

import time

import zmq
from daemon_helpers import VALIDATOR, Subscriber

from service.publish import Publisher


def _status(i: int) -> dict:
    return {"type": "status", "uptime_s": float(i), "queue_depth": 0, "tagged": i, "errors": 0,
            "provider": "CPUExecutionProvider", "model": "m", "dropped_messages": 0}


def test_a_stuck_subscriber_only_costs_counted_drops(tmp_path) -> None:
    publisher = Publisher(f"ipc://{tmp_path}/pub", send_hwm=20)
    stuck = zmq.Context.instance().socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 20)
    stuck.connect(publisher.bound)
    stuck.subscribe(b"")
    healthy = Subscriber(publisher.bound)
    time.sleep(0.3)
    started = time.perf_counter()
    for i in range(3000):
        publisher.publish("status", _status(i))
        if i % 10 == 0:
            healthy.poll(0.002)
    elapsed = time.perf_counter() - started
    healthy.poll(0.5)  # drains the healthy queue; the stuck one stays full
    publisher.publish("status", _status(3000))
    healthy.poll(0.5)
    print(f"\n3000 messages in {elapsed:.3f} s, {publisher.dropped} offered while the stuck queue was full, "
          f"healthy subscriber got {len(healthy.messages)}")
    assert publisher.dropped > 0
    assert publisher.sent + publisher.dropped == 3001
    received = [m["tagged"] for _, m in healthy.messages]
    assert received[-1] == 3000  # a message sent while the stuck queue is full still reaches the healthy one
    assert len(received) > 1000
    assert publisher.subscribers == 2
    stuck.close()
    healthy.close()
    publisher.close()


def test_messages_carry_schema_seq_and_time(tmp_path) -> None:
    publisher = Publisher(f"ipc://{tmp_path}/pub2")
    sub = Subscriber(publisher.bound)
    time.sleep(0.2)
    for i in range(3):
        publisher.publish("status", _status(i))
    sub.poll(0.5)
    seqs = [m["seq"] for _, m in sub.messages]
    assert seqs == sorted(seqs) and len(seqs) == 3
    for _, m in sub.messages:
        VALIDATOR.validate(m)
        assert m["schema"] == "genre-tagger.messages/1" and m["ts"] > 1.7e9
    sub.close()
    publisher.close()


def test_binding_a_busy_endpoint_is_a_clear_error(tmp_path) -> None:
    import pytest

    first = Publisher("tcp://127.0.0.1:0")
    with pytest.raises(OSError, match="cannot bind ZeroMQ endpoint"):
        Publisher(first.bound)
    first.close()
