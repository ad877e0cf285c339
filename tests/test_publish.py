"""The publisher never blocks: a full subscriber costs counted drops, healthy ones keep receiving."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
import zmq
from daemon_helpers import VALIDATOR, Subscriber

from service.publish import Curve, Publisher, check_endpoint, is_local
from tagger.errors import ConfigError


def _status(i: int) -> dict:
    return {"type": "status", "uptime_s": float(i), "queue_depth": 0, "tagged": i, "errors": 0,
            "provider": "CPUExecutionProvider", "model": "m", "dropped_messages": 0}


def _subscribed(publisher: Publisher, count: int, timeout: float = 30.0) -> None:
    """Wait until the publisher has read ``count`` subscriptions: from then on they get what it sends (a fixed
    sleep for the connection, as before, is a bet on the box's load)."""
    deadline = time.monotonic() + timeout
    while publisher.subscribers < count:
        assert time.monotonic() < deadline, f"{publisher.subscribers} of {count} subscriptions within {timeout} s"
        time.sleep(0.02)


def test_a_stuck_subscriber_only_costs_counted_drops(tmp_path) -> None:
    publisher = Publisher(f"ipc://{tmp_path}/pub", send_hwm=20)
    stuck = zmq.Context.instance().socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 20)
    stuck.connect(publisher.bound)
    stuck.subscribe(b"")
    healthy = Subscriber(publisher.bound)
    _subscribed(publisher, 2)
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
    _subscribed(publisher, 1)
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
    first = Publisher("tcp://127.0.0.1:0")
    with pytest.raises(ConfigError, match="cannot bind ZeroMQ endpoint: address already in use"):
        Publisher(first.bound)
    first.close()


@pytest.mark.parametrize(("endpoint", "message"), [
    ("tcp://127.0.0.1:99999", "port '99999' is not a number within 0..65535"),
    ("tcp://127.0.0.1:http", "port 'http' is not a number"),
    ("tcp://127.0.0.1", "must be tcp://HOST:PORT"),
    ("udp://127.0.0.1:5556", "must start with tcp://, ipc:// or inproc://"),
    ("ipc:///no/such/folder/pub", "folder '/no/such/folder' does not exist"),
])
def test_endpoints_zeromq_would_misread_are_refused_before_binding(endpoint: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        check_endpoint(endpoint)
    assert endpoint in str(error.value)


def test_a_host_that_is_not_this_machines_is_a_clear_bind_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("'no-such-host.invalid' is not an address or network interface")):
        Publisher("tcp://no-such-host.invalid:0")
    with pytest.raises(ConfigError, match=re.escape("'192.0.2.1' is not an address of this machine")):
        Publisher("tcp://192.0.2.1:0")


def test_binding_beyond_loopback_without_curve_warns(caplog) -> None:
    assert is_local("tcp://127.0.0.1:5556") and is_local("tcp://[::1]:5556") and is_local("ipc:///run/x")
    assert not is_local("tcp://0.0.0.0:5556") and not is_local("tcp://*:5556") and not is_local("tcp://eth0:5556")
    with caplog.at_level(logging.WARNING, logger="service.publish"):
        publisher = Publisher("tcp://0.0.0.0:0")
    publisher.close()
    assert any("without CURVE" in r.getMessage() for r in caplog.records)


def _drain(sock: zmq.Socket, seconds: float) -> list[tuple[str, dict, float]]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            topic, body = sock.recv_multipart()
            got.append((topic.decode(), json.loads(body), time.monotonic()))
    return got


def test_a_late_subscriber_gets_the_latest_status_and_each_live_source_at_once(tmp_path) -> None:
    publisher = Publisher(f"ipc://{tmp_path}/lvc")
    early = zmq.Context.instance().socket(zmq.SUB)
    early.setsockopt(zmq.LINGER, 0)
    early.connect(publisher.bound)
    early.subscribe(b"")
    _subscribed(publisher, 1)
    for i in range(3):
        publisher.publish("status", _status(i))
        publisher.publish("live.radio", {"type": "x", "n": i})
        publisher.publish("live.decks", {"type": "x", "n": 10 + i})
    publisher.publish("track", {"type": "x", "n": 99})
    seen = _drain(early, 0.5)
    late = zmq.Context.instance().socket(zmq.SUB)
    late.setsockopt(zmq.LINGER, 0)
    connected = time.monotonic()
    late.connect(publisher.bound)
    late.subscribe(b"")
    got = _drain(late, 1.5)
    latest = {topic: (m["replay"], m.get("tagged", m.get("n")), round(at - connected, 3)) for topic, m, at in got}
    print(f"\nlate subscriber got {latest}")
    assert set(latest) == {"status", "live.radio", "live.decks"}  # events (track) are not replayed
    assert latest["status"][:2] == (True, 2) and latest["live.radio"][:2] == (True, 2)
    assert latest["live.decks"][:2] == (True, 12)
    assert all(at < 1.0 for _, _, at in latest.values())
    seen += _drain(early, 0.5)
    replays = [m for _, m, _ in seen if m.get("replay")]  # the early one may see copies: marked, same seq
    assert all(any(o["seq"] == r["seq"] and not o.get("replay") for _, o, _ in seen) for r in replays)
    late.close()
    early.close()
    publisher.close()


def test_curve_lets_only_listed_clients_in(tmp_path, caplog) -> None:
    import zmq.auth

    for name in ("daemon", "friend", "stranger"):
        zmq.auth.create_certificates(tmp_path, name)
    curve = Curve(str(tmp_path / "daemon.key_secret"), (str(tmp_path / "friend.key"),))
    publisher = Publisher("tcp://127.0.0.1:0", curve=curve)
    server_public, _ = zmq.auth.load_certificate(tmp_path / "daemon.key")

    def subscriber(name: str | None) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if name:
            sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(tmp_path / f"{name}.key_secret")
            sock.curve_serverkey = server_public
        sock.connect(publisher.bound)
        sock.subscribe(b"")
        return sock

    caplog.set_level(logging.WARNING, logger="service.publish")
    friend, stranger, plain = subscriber("friend"), subscriber("stranger"), subscriber(None)
    # The friend's subscription is in and the stranger has been refused (not merely not yet connected).
    _subscribed(publisher, 1)
    deadline = time.monotonic() + 30
    while not any("refused a client whose CURVE key" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the stranger was never refused"
        time.sleep(0.05)
    for i in range(5):
        publisher.publish("status", _status(i))
    counts = {name: len(_drain(sock, 1.0)) for name, sock in (("friend", friend), ("stranger", stranger),
                                                                 ("plain", plain))}
    print(f"\nmessages received: {counts}")
    assert counts["friend"] >= 5 and counts["stranger"] == 0 and counts["plain"] == 0
    for sock in (friend, stranger, plain):
        sock.close()
    publisher.close()


def test_curve_settings_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"curve_secret_key: '.*missing\.key_secret': cannot read"):
        Publisher("tcp://127.0.0.1:0", curve=Curve(str(tmp_path / "missing.key_secret"), ("x",)))
    import zmq.auth

    zmq.auth.create_certificates(tmp_path, "daemon")
    with pytest.raises(ConfigError, match="curve_clients: 'not-a-key': cannot read CURVE certificate"):
        Publisher("tcp://127.0.0.1:0", curve=Curve(str(tmp_path / "daemon.key_secret"), ("not-a-key",)))


def test_subscribers_can_be_counted_while_subscriptions_pour_in() -> None:
    # The publisher process's counts reporter reads `subscribers` every 0.5 s from its own thread while the
    # reader thread files subscriptions; a reporter that died of it would leave the daemon's counts frozen.
    import sys
    import threading

    publisher = Publisher("tcp://127.0.0.1:0")
    client = zmq.Context.instance().socket(zmq.XSUB)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(publisher.bound)
    errors: list[BaseException] = []
    counted = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal counted
        while not stop.is_set():
            try:
                publisher.subscribers  # noqa: B018 (the property is the test)
                counted += 1
            except Exception as exc:  # what the reporter thread would die of
                errors.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    counter = threading.Thread(target=count)
    counter.start()
    try:
        deadline = time.monotonic() + 8  # before the fix: failed within a second
        while time.monotonic() < deadline and not errors:
            for i in range(100):  # come and go, below the subscription limit: the table changes size all the time
                client.send(b"\x01topic-%d" % i)
            for i in range(100):
                client.send(b"\x00topic-%d" % i)
            time.sleep(0.001)
    finally:
        stop.set()
        counter.join(10)
        sys.setswitchinterval(switch)
        client.close()
        publisher.close()
    assert counted > 0
    assert not errors, f"{len(errors)} failed counts, first: {errors[0]!r}"
