"""ZeroMQ publishing: multipart [topic, JSON] on an XPUB socket that never blocks the pipeline.

The socket is XPUB. Each message is first offered with ``XPUB_NODROP`` set: if some subscriber's
queue is full (it reads too slowly or not at all), ZeroMQ refuses it with ``Again``, which we count as
a drop (once each time a queue fills: ZeroMQ then leaves that subscriber out of later sends
without saying so until it reads again, so the count is a lower bound; subscribers see gaps in
``seq``); the message is then sent again in lossy mode, which skips only the full queues, so healthy
subscribers still get everything and nothing ever blocks. Every message carries ``schema``,
``type``, ``seq`` and ``ts`` (see ``service/schema/messages-v1.json``).

Late subscribers: the publisher keeps the newest ``status`` and the newest ``live.<source>`` message
of each source (a last-value cache). When a subscription arrives that matches some of them, they are
sent again, marked ``"replay": true`` with their original ``seq``, so a subscriber learns the current
state at once instead of at the next heartbeat. Replays go to every matching subscriber (XPUB cannot
address one); one that already saw that ``seq`` ignores it. Replays are coalesced to at most one round
per :data:`REPLAY_INTERVAL_S`.

What a client can make the daemon hold is bounded: any frame a peer sends larger than
:data:`MAX_INBOUND_BYTES` disconnects that peer (``ZMQ_MAXMSGSIZE``), so a subscription is at most that
long; a thread reads every inbound frame every :data:`DRAIN_INTERVAL_S` and throws away what is not a
subscription, so garbage never piles up. ZeroMQ keeps every distinct subscription in a table that it
frees only when the subscriber goes, and XPUB cannot disconnect one peer: past :data:`MAX_SUBSCRIPTIONS`
distinct subscriptions (ours are a handful of short topics) the publisher closes every connection and
binds again, which frees the table; well-behaved subscribers reconnect by themselves and get the cached
state replayed.

Access: on loopback or ``ipc://`` only local processes can connect. Binding beyond loopback should use
CURVE (:class:`Curve`): the messages are encrypted and only the listed client keys may connect; binding
beyond loopback without it logs a warning.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import zmq

from tagger.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_ID = "genre-tagger.messages/1"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# Our topics are "status", "track", "live.<source>" and "change.<source>": subscriptions are short;
# A CURVE handshake's INITIATE command (about 300 bytes) must pass too.
MAX_INBOUND_BYTES = 512
MAX_SUBSCRIPTIONS = 256
DRAIN_INTERVAL_S = 0.05
REPLAY_INTERVAL_S = 0.2
# Topics whose newest message is state worth replaying to a late subscriber (events such as "track" and
# "change.<source>" are not: a replayed event would look like a new one).
CACHED_TOPIC_PREFIXES = ("status", "live.")
LOOPBACK_NAMES = ("localhost", "lo", "ip6-localhost")


def load_schema() -> dict:
    """The JSON schema of every message (package data, so it travels with an installed wheel)."""
    return json.loads(resources.files("service").joinpath("schema", "messages-v1.json").read_text(encoding="utf-8"))


def check_endpoint(endpoint: str, key: str = "config publish.endpoint") -> str:
    """``endpoint`` if ZeroMQ can bind it as meant, else :class:`ConfigError` naming it and why.

    ``tcp://HOST:PORT`` needs a port within 0..65535 (0 or ``*``: the system picks one; ZeroMQ itself
    would silently pick one for 99999); ``ipc://PATH`` needs PATH's folder to exist.
    """
    scheme, sep, rest = endpoint.partition("://")
    where = f"{key}: {endpoint!r}"
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise ConfigError(f"{where}: must start with tcp://, ipc:// or inproc://")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ConfigError(f"{where}: must be tcp://HOST:PORT (e.g. tcp://127.0.0.1:5556)")
        if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
            raise ConfigError(f"{where}: port {port!r} is not a number within 0..65535 (0 or * lets the system pick)")
    elif scheme == "ipc":
        if not rest:
            raise ConfigError(f"{where}: needs a socket path, e.g. ipc:///run/genre-tagger/pub")
        if not rest.startswith("@"):  # "@name" is Linux's abstract namespace: no file
            folder = Path(rest).parent
            if not folder.is_dir():
                raise ConfigError(f"{where}: folder {str(folder)!r} does not exist")
    elif not rest:
        raise ConfigError(f"{where}: needs a name, e.g. inproc://genre-tagger")
    return endpoint


def is_local(endpoint: str) -> bool:
    """Whether only processes on this machine can reach ``endpoint`` (loopback TCP, ipc, inproc)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", a host name or an interface name
        return False


def _bind_reason(exc: zmq.ZMQError, endpoint: str) -> str:
    host = endpoint.partition("://")[2].rpartition(":")[0]
    return {
        errno.EADDRINUSE: "address already in use (another daemon, or another program on that port?)",
        errno.ENODEV: f"{host!r} is not an address or network interface of this machine",
        errno.EADDRNOTAVAIL: f"{host!r} is not an address of this machine",
        errno.EACCES: "permission denied (ports below 1024 need privileges; or the socket folder is not writable)",
        errno.ENOENT: "the socket's folder does not exist",
        errno.EINVAL: "not a valid endpoint",
    }.get(exc.errno, str(exc))


def read_key(value: str, secret: bool = False) -> bytes:
    """A CURVE key from a Z85 string (40 characters) or a certificate file written by ``genre-tagger keys``.

    ``secret``: return the file's secret key (the public key otherwise). Raises :class:`ConfigError`.
    """
    import zmq.auth

    text = value.strip()
    if len(text) == 40 and not secret and not Path(text).expanduser().exists():
        try:
            zmq.utils.z85.decode(text.encode())
        except ValueError:
            raise ConfigError(f"{value!r}: not a Z85 CURVE key (40 characters) nor a certificate file") from None
        return text.encode()
    path = Path(text).expanduser()
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{value!r}: cannot read CURVE certificate ({exc})") from None
    if secret:
        if not secret_key:
            raise ConfigError(f"{value!r}: holds no secret key (use the .key_secret file)")
        return secret_key
    return public


@dataclass(frozen=True)
class Curve:
    """CURVE security for the publisher.

    Attributes:
        secret_key: the server's secret certificate (a ``.key_secret`` file from ``genre-tagger keys``).
        clients: the client public keys allowed to connect: Z85 strings or certificate files.
    """

    secret_key: str
    clients: tuple[str, ...]

    def server_keys(self) -> tuple[bytes, bytes]:
        """(public, secret) Z85 keys of the server."""
        import zmq.auth

        path = Path(self.secret_key).expanduser()
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config publish.curve_secret_key: {self.secret_key!r}: cannot read ({exc})") from None
        if not secret:
            raise ConfigError(f"config publish.curve_secret_key: {self.secret_key!r}: holds no secret key "
                              "(give the .key_secret file)")
        return public, secret

    def allowed(self) -> frozenset[bytes]:
        if not self.clients:
            raise ConfigError("config publish.curve_clients: list the client public keys allowed to connect")
        keys = set()
        for client in self.clients:
            try:
                keys.add(read_key(client))
            except ConfigError as exc:
                raise ConfigError(f"config publish.curve_clients: {exc}") from None
        return frozenset(keys)


class _AllowedKeys:
    """The ZAP credentials provider: a client may connect when its public key is listed."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys = frozenset(keys)
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.denied += 1
        if self.denied == 1 or self.denied % 100 == 0:
            log.warning("ZeroMQ: refused a client whose CURVE key is not in publish.curve_clients (%d so far)",
                        self.denied)
        return False


class Publisher:
    """A bound XPUB socket; thread-safe ``publish``; a last-value cache for late subscribers.

    Args:
        endpoint: where to bind, ``tcp://HOST:PORT``, ``ipc:///path`` or ``inproc://name``.
        send_hwm: messages queued per subscriber before drops start.
        curve: CURVE keys (encryption, and only the listed clients may connect); None for none.
        exit_on_memory_error: end the whole process (status 3) when the subscription reader runs out of
            memory, for a publisher alone in its process (:mod:`service.publish_process`).

    ZeroMQ files each subscription before this class can count it, so a flood can grow the process by
    hundreds of MB before a reset: the daemon runs its publisher in a capped child process
    (:class:`service.publish_process.PublisherProcess`); this class serves ``inproc://`` endpoints and tests.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, send_hwm: int = 1000, curve: Curve | None = None,
                 exit_on_memory_error: bool = False) -> None:
        check_endpoint(endpoint)
        self.exit_on_memory_error = exit_on_memory_error
        self.endpoint = endpoint
        self.send_hwm = send_hwm
        # The process's shared context, so that an inproc:// endpoint is reachable from the rest of the process.
        self._context = zmq.Context.instance()
        self._auth = None
        self._curve_keys: tuple[bytes, bytes] | None = None
        try:
            if curve is not None:
                self._start_curve(curve)
            self._socket = self._open_socket(endpoint)
        except BaseException:
            self._close_all()
            raise
        self.bound = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.curve = curve is not None
        if not is_local(endpoint) and curve is None:
            log.warning("publishing on %s without CURVE: any machine that reaches this port can connect and read "
                        "every message; set publish.curve_secret_key and publish.curve_clients (see "
                        "service/genre-tagger.toml), or bind to 127.0.0.1", endpoint)
        self._lock = threading.Lock()
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.replayed = 0
        self.ignored_frames = 0  # inbound frames that were not subscriptions
        self.resets = 0  # times every connection was closed because of too many subscriptions
        self.subscriptions: dict[bytes, int] = {}
        self._cache: dict[str, dict[str, Any]] = {}
        self._replay_prefixes: set[bytes] = set()
        self._last_replay = 0.0
        self._closed = threading.Event()
        self._drainer = threading.Thread(target=self._drain_loop, name="zmq-subscriptions", daemon=True)
        self._drainer.start()

    def _open_socket(self, endpoint: str) -> zmq.Socket:
        sock = self._context.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
            # Subscriptions enter ZeroMQ's table as this socket reads them, at most RCVHWM per peer between
            # two reads: a small RCVHWM keeps a flood from getting far past MAX_SUBSCRIPTIONS before a reset.
            sock.setsockopt(zmq.RCVHWM, 100)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription, to count and replay
            sock.setsockopt(zmq.LINGER, 0)
            if self._curve_keys is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self._curve_keys[0])
                sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve_keys[1])
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ConfigError(f"{endpoint}: cannot bind ZeroMQ endpoint: {_bind_reason(exc, endpoint)}") from None
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _reset_connections(self) -> None:
        """Close every connection (freeing ZeroMQ's subscription table) and bind again where we were.

        Well-behaved subscribers reconnect by themselves within a fraction of a second, subscribe again and
        get the cached state replayed; the client that flooded us must do it all over again.
        """
        self.resets += 1
        log.warning("ZeroMQ: more than %d distinct subscriptions (a misbehaving client?): closing every "
                    "connection to free them; subscribers reconnect by themselves (reset %d)",
                    MAX_SUBSCRIPTIONS, self.resets)
        self._socket.close(linger=0)
        self.subscriptions.clear()
        deadline = time.monotonic() + 5.0
        while True:  # the old listener closes in ZeroMQ's I/O thread: its port may take a moment to free
            try:
                self._socket = self._open_socket(self.bound)
                return
            except ConfigError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _start_curve(self, curve: Curve) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._curve_keys = curve.server_keys()
        allowed = curve.allowed()
        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger(f"{__name__}.auth"))
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=_AllowedKeys(allowed))

    # -- inbound: subscriptions (and anything else a client sends) ------------------------------------

    def _drain_loop(self) -> None:
        busy = False
        while not self._closed.wait(0 if busy else DRAIN_INTERVAL_S):
            try:
                with self._lock:
                    if self._closed.is_set():
                        return
                    busy = self._drain() > 0  # more may be waiting: read again at once, between publishes
                    if self._replay_prefixes and time.monotonic() - self._last_replay >= REPLAY_INTERVAL_S:
                        self._replay()
            except MemoryError:
                if self.exit_on_memory_error:
                    os._exit(3)
                log.exception("ZeroMQ subscription reader ran out of memory; continuing")
                busy = False
            except Exception:  # never let the thread die silently: the cache and counts would go stale
                log.exception("ZeroMQ subscription reader failed; continuing")
                busy = False

    def _drain(self) -> int:
        """Read what subscribers sent (up to a bounded number of frames); returns how many were read."""
        for count in range(1000):  # bounded per round: publish() waits at most one round for the lock
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return count
            if not frame or frame[0] not in (0, 1) or self._socket.getsockopt(zmq.RCVMORE):
                self.ignored_frames += 1
                continue
            topic, subscribe = frame[1:], frame[0] == 1
            if topic in self.subscriptions:
                self.subscriptions[topic] += 1 if subscribe else -1
                if self.subscriptions[topic] <= 0:
                    del self.subscriptions[topic]
            elif subscribe:
                self.subscriptions[topic] = 1
                if len(self.subscriptions) > MAX_SUBSCRIPTIONS:
                    self._reset_connections()
                    return count + 1
            if subscribe and any(cached.encode().startswith(topic) for cached in self._cache):
                self._replay_prefixes.add(topic)
        return 1000

    def _replay(self) -> None:
        prefixes, self._replay_prefixes = self._replay_prefixes, set()
        self._last_replay = time.monotonic()
        for topic, body in self._cache.items():
            if any(topic.encode().startswith(p) for p in prefixes):
                try:
                    self._socket.send_multipart([topic.encode(), json.dumps({**body, "replay": True}).encode()],
                                                flags=zmq.NOBLOCK)
                except zmq.Again:  # a full subscriber: it gets the next message instead
                    continue
                self.replayed += 1

    # -- outbound ---------------------------------------------------------------------------------

    def prime(self, topic: str, body: dict[str, Any]) -> None:
        """Put an already stamped message in the last-value cache without sending it (a restarted process)."""
        if topic.startswith(CACHED_TOPIC_PREFIXES):
            with self._lock:
                self._cache[topic] = body

    def publish(self, topic: str, message: dict[str, Any]) -> bool:
        """Send [topic, JSON] to every subscriber with room; False if some subscriber's queue was full."""
        with self._lock:
            body = {"schema": SCHEMA_ID, "seq": self.seq, "ts": time.time(), **message}
            self.seq += 1
            if topic.startswith(CACHED_TOPIC_PREFIXES):
                self._cache[topic] = body
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

    def reading(self) -> bool:
        """Whether the thread that reads subscriptions is running (until :meth:`close`)."""
        return self._drainer.is_alive() or self._closed.is_set()

    @property
    def subscribers(self) -> int:
        """Live subscriptions (a client subscribed to two prefixes counts twice)."""
        # A copy first (one step under the GIL): the reader thread files subscriptions meanwhile.
        return sum(n for n in list(self.subscriptions.values()) if n > 0)

    def _close_all(self) -> None:
        if getattr(self, "_socket", None) is not None:
            self._socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            pass  # the reader is not inside a round any more
        self._drainer.join(2.0)
        with self._lock:
            self._close_all()
