"""ZeroMQ publishing: multipart [topic, JSON] on an XPUB socket that never blocks the pipeline.

The socket is XPUB. Each message is first offered with ``XPUB_NODROP`` set: if some subscriber's
queue is full (it reads too slowly or not at all), ZeroMQ refuses it with ``Again``, which we count as
a drop; the message is then sent again in lossy mode, which skips only the full queues, so healthy
subscribers still get everything and nothing ever blocks. Every message carries ``schema``,
``type``, ``seq`` and ``ts`` (see ``service/schema/messages-v1.json``).
"""

from __future__ import annotations

import json
import threading
import time
from importlib import resources
from typing import Any

import zmq

SCHEMA_ID = "genre-tagger.messages/1"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def load_schema() -> dict:
    """The JSON schema of every message (package data, so it travels with an installed wheel)."""
    return json.loads(resources.files("service").joinpath("schema", "messages-v1.json").read_text(encoding="utf-8"))


class Publisher:
    """A bound XPUB socket; thread-safe ``publish``.

    Args:
        endpoint: where to bind, ``tcp://HOST:PORT`` or ``ipc:///path``.
        send_hwm: messages queued per subscriber before drops start.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, send_hwm: int = 1000) -> None:
        self.endpoint = endpoint
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, send_hwm)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription, to count subscribers
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise OSError(f"cannot bind ZeroMQ endpoint {endpoint}: {exc}") from None
        self.bound = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.subscriptions: dict[bytes, int] = {}

    def _drain_subscriptions(self) -> None:
        while True:
            try:
                event = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event:
                topic = event[1:]
                self.subscriptions[topic] = self.subscriptions.get(topic, 0) + (1 if event[0] == 1 else -1)

    def publish(self, topic: str, message: dict[str, Any]) -> bool:
        """Send [topic, JSON] to every subscriber with room; False if some subscriber's queue was full."""
        with self._lock:
            self._drain_subscriptions()
            body = {"schema": SCHEMA_ID, "seq": self.seq, "ts": time.time(), **message}
            self.seq += 1
            parts = [topic.encode(), json.dumps(body).encode()]
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                self._socket.setsockopt(zmq.XPUB_NODROP, 0)
                try:
                    self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
                except zmq.Again:  # lossy sends do not refuse; kept for safety
                    pass
                finally:
                    self._socket.setsockopt(zmq.XPUB_NODROP, 1)
                return False
            self.sent += 1
            return True

    @property
    def subscribers(self) -> int:
        return sum(n for n in self.subscriptions.values() if n > 0)

    def close(self) -> None:
        with self._lock:
            self._socket.close(linger=0)
