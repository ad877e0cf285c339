"""The HTTP display sink: a live genre page and a library progress page, fed by Server-Sent Events.

``genre-tagger daemon --http [HOST:PORT]`` (section ``[http]``) serves, read-only:

``/``               the live display (``?source=NAME&top=K&theme=dark|light&overlay=1``)
``/library``        library tagging progress: queue, last files tagged, errors
``/events``         the feed (``text/event-stream``): a ``snapshot`` on connect, then ``live``,
                    ``genre_changed``, ``track`` and ``status`` events, the same JSON as ZeroMQ's
                    messages (live updates without their per-slice probabilities)
``/api/state``      the snapshot as JSON
``/static/...``     the pages' CSS and JavaScript (in the package: no CDN, works offline)

aiohttp serves it from its own thread and event loop. The hub hands events to this sink's own thread,
which encodes each one once and passes it to the loop; every page client has a bounded queue, and a
client that reads too slowly loses its oldest events (counted in the sink's ``dropped``). So the live
path never waits on a browser. Only GET (and HEAD) exist: no endpoint changes anything. Loopback by
default; any other address needs ``allow_remote = true`` and is logged as a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from service.events import GenreChanged, LiveUpdate, Status, TrackDone
from service.sinks import QueuedSinkSettings, Sink, SinkContext, SinkSettings, check
from tagger.errors import ConfigError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "http"
DEFAULT_LISTEN = "127.0.0.1:8765"
KEEPALIVE_S = 15.0  # a comment line this often, so proxies keep the stream open and dead clients show up
START_TIMEOUT_S = 30.0
# The library's totals are counted (one GROUP BY over its tracks) at most this often, seconds; between two
# counts each tagged or failed file moves the last count by one, so the page's numbers follow every file.
TOTALS_REFRESH_S = 1.0


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); ValueError with the reason."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8765 (port 0 = any free port)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class HttpSection(QueuedSinkSettings):
    """enabled: serve the display pages. listen: HOST:PORT (port 0 = any free port). allow_remote:
    let a non-loopback address through (the pages are read-only, but anyone who reaches the port sees
    them). history: genre changes kept per live source. recent_tracks: library files listed.
    client_queue: events buffered per page client before its oldest are dropped. retry_ms: how long
    a disconnected page waits before it tries again, milliseconds."""

    enabled: bool = False
    queue: int = 1000
    listen: str = DEFAULT_LISTEN
    allow_remote: bool = False
    history: int = 10
    recent_tracks: int = 20
    client_queue: int = 100
    retry_ms: int = 2000

    def validate(self, section: str) -> None:
        super().validate(section)
        try:
            host, _ = parse_listen(self.listen)
        except ValueError as exc:
            raise ConfigError(f"config {section}.listen: {self.listen!r} {exc}") from None
        check(is_loopback(host) or self.allow_remote, f"{section}.listen",
              f"{self.listen!r} is not a loopback address; set {section}.allow_remote = true to serve other machines")
        check(self.history >= 1, f"{section}.history", "must be at least 1")
        check(self.recent_tracks >= 1, f"{section}.recent_tracks", "must be at least 1")
        check(self.client_queue >= 1, f"{section}.client_queue", "must be at least 1")
        check(self.retry_ms >= 100, f"{section}.retry_ms", "must be at least 100")


def _sse(kind: str, message: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def _first_output(outputs: dict[str, Any]) -> dict[str, Any] | None:
    return next(iter(outputs.values()), None) if outputs else None


class _Client:
    """One connected page: its bounded queue of encoded events (oldest dropped first)."""

    def __init__(self, size: int) -> None:
        self.queue: collections.deque[bytes | None] = collections.deque(maxlen=size)
        self.ready = asyncio.Event()

    def put(self, data: bytes | None) -> bool:
        """Queue ``data``; True when the oldest event was dropped to make room."""
        full = len(self.queue) == self.queue.maxlen
        self.queue.append(data)
        self.ready.set()
        return full


class _SourceState:
    def __init__(self, history: int) -> None:
        self.live: dict[str, Any] | None = None
        self.current: dict[str, Any] | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)

    def as_dict(self) -> dict[str, Any]:
        return {"live": self.live, "current": self.current, "history": list(self.history)}


class HttpSink(Sink):
    name: ClassVar[str] = "http"
    Settings: ClassVar[type[SinkSettings]] = HttpSection
    inline: ClassVar[bool] = False

    def __init__(self, settings: HttpSection, context: SinkContext) -> None:
        super().__init__(settings, context)
        self.settings: HttpSection = settings
        self.host, self.port = parse_listen(settings.listen)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._clients: set[_Client] = set()
        self._dropped = 0  # events page clients missed (their queue was full), counted in the loop's thread
        # The state below belongs to the event loop's thread.
        self._sources: dict[str, _SourceState] = {}
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=settings.recent_tracks)
        self._errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=settings.recent_tracks)
        self._status: dict[str, Any] | None = None
        self._totals: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        # The sink's thread's running totals (see TOTALS_REFRESH_S) and when the library last counted them.
        self._counted: dict[str, int] = {}
        self._counted_at = -float("inf")

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def check_environment(cls) -> None:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise ConfigError("config http.enabled: the display needs aiohttp "
                              "(pip install 'genre-tagger[web]')") from None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--http", nargs="?", const="", default=None, metavar="HOST:PORT",
                            help=f"serve the live display page and its feed (default {DEFAULT_LISTEN}; "
                                 "loopback unless [http] allow_remote = true)")

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        if getattr(args, "http", None) is None:
            return {}
        return {"enabled": True, "listen": args.http or None}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        from aiohttp import web

        if not is_loopback(self.host):
            log.warning("the HTTP display listens on %s: every machine that reaches it can see the pages",
                        self.settings.listen)
        self._seed_from_library()
        app = web.Application()
        app.router.add_get("/", self._page("index.html"))
        app.router.add_get("/library", self._page("library.html"))
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/state", self._state)
        app.router.add_static("/static", STATIC / "static", show_index=False, follow_symlinks=False)
        app.on_shutdown.append(self._end_streams)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-server", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(web), self._loop).result(START_TIMEOUT_S)
        except OSError as exc:
            self._stop_loop()
            raise ConfigError(f"config http.listen: cannot listen on {self.settings.listen}: "
                              f"{exc.strerror or exc}") from None

    async def _open(self, web: Any) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # the port the OS chose for port 0
        port = sockets[0].getsockname()[1] if sockets else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}/"

    def describe(self) -> str:
        return f"HTTP display on {self.url}"

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def clients(self) -> int:
        return len(self._clients)

    def close(self, deadline: float) -> None:
        if self._loop is not None:
            if self._runner is not None and self._thread is not None and self._thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
                try:
                    future.result(max(0.1, deadline - time.monotonic()))
                except Exception as exc:  # a timeout or a client that would not let go: the process ends anyway
                    log.debug("HTTP display did not close cleanly: %s", exc)
            self._stop_loop(max(0.1, deadline - time.monotonic()))
        if self._db is not None:  # opened at start even when the server then failed to listen
            self._db.close()
            self._db = None

    def _stop_loop(self, wait: float = 1.0) -> None:
        """Stop the event loop and wait up to ``wait`` seconds for its thread."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(wait)

    # -- events (the sink's own thread) --------------------------------------------------------

    def _hand_over(self, kind: str, message: dict[str, Any]) -> None:
        if self._loop is None:
            return
        if self._thread is not None and not self._thread.is_alive():
            # Else the events would pile up, unseen, in a loop that no longer runs.
            raise ConnectionError("the HTTP display's server thread has stopped")
        self._loop.call_soon_threadsafe(self._publish, kind, message, _sse(kind, message))

    def live(self, event: LiveUpdate) -> None:
        _, full = event.as_message()
        message = {k: v for k, v in full.items() if k != "slices"}
        message["uncertain"] = event.uncertain
        self._hand_over("live", message)

    def genre_changed(self, event: GenreChanged) -> None:
        self._hand_over("genre_changed", event.as_message()[1])

    def track(self, event: TrackDone) -> None:
        _, full = event.as_message()
        message = {k: full[k] for k in ("ts", "path", "ok", "status", "track_id", "error", "duration_s")
                   if k in full}
        first = _first_output(full.get("outputs", {}))
        if first is not None:
            message.update(top=first["top"], confidence=first["confidence"], uncertain=first["uncertain"],
                           decided=first["decided"], music=event.music)
        message["library_totals"] = self._totals_after(event)  # the page's counts move with each file
        self._hand_over("track", message)

    def status(self, event: Status) -> None:
        message = dict(event.as_message()[1])
        message["library_totals"] = self._library_totals(refresh=True)
        self._hand_over("status", message)

    # -- the library (read-only, from this sink's thread) --------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None:
            path = self.context.config.library_path if self.context.config is not None else None
            if path is None or not Path(path).exists():
                return None
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2, check_same_thread=False)
        return self._db

    def _library_totals(self, refresh: bool = False) -> dict[str, int]:
        """Tracks per status: counted by the library when ``refresh`` or when the last count is older than
        :data:`TOTALS_REFRESH_S`, else the running totals."""
        now = time.monotonic()
        if refresh or now - self._counted_at >= TOTALS_REFRESH_S:
            try:
                db = self._connect()
                if db is not None:
                    self._counted = dict(db.execute("SELECT status, count(*) FROM tracks GROUP BY status"))
                    self._counted_at = now
            except sqlite3.Error as exc:
                log.debug("HTTP display: cannot read the library: %s", exc)
        return dict(self._counted)

    def _totals_after(self, event: TrackDone) -> dict[str, int]:
        """The totals with ``event``'s file counted: a fresh count, or the running totals with the file moved
        from pending to tagged (or error), as the worker just did in the library."""
        fresh = time.monotonic() - self._counted_at >= TOTALS_REFRESH_S
        if not fresh and self._counted:
            totals = self._counted
            if totals.get("pending", 0) > 0:
                totals["pending"] -= 1
            done = "tagged" if event.ok else "error"
            totals[done] = totals.get(done, 0) + 1
        return self._library_totals()

    def _seed_from_library(self) -> None:
        """The last files tagged and failed before this start, so the page is not empty after a restart."""
        try:
            db = self._connect()
            if db is None:
                return
            n = self.settings.recent_tracks
            first = next(iter(self.context.labels), "genre")
            for path, tagged_at, label, score, decided in db.execute(  # newest first, as the feed adds them
                    "SELECT t.path, t.tagged_at, g.label, g.score, g.decided FROM tracks t LEFT JOIN genres g "
                    "ON g.track_id = t.id AND g.rank = 1 AND g.output = ? WHERE t.status = 'tagged' "
                    "ORDER BY t.tagged_at DESC LIMIT ?", (first, n)).fetchall():
                self._recent.append({"path": path, "ok": True, "status": "tagged", "tagged_at": tagged_at,
                                     "top": label, "confidence": score, "uncertain": not decided})
            for path, error in db.execute(
                    "SELECT path, error FROM tracks WHERE status = 'error' ORDER BY id DESC LIMIT ?", (n,)).fetchall():
                self._errors.append({"path": path, "ok": False, "status": "error", "error": error})
            self._totals = dict(db.execute("SELECT status, count(*) FROM tracks GROUP BY status").fetchall())
        except sqlite3.Error as exc:
            log.warning("HTTP display: cannot read the library %s: %s", self.context.config.library_path, exc)

    # -- the event loop's side ----------------------------------------------------------------

    def _publish(self, kind: str, message: dict[str, Any], data: bytes) -> None:
        if kind in ("live", "genre_changed"):
            source = self._sources.setdefault(message["source"], _SourceState(self.settings.history))
            if kind == "live":
                source.live = message
            else:
                source.current = message
                source.history.appendleft(message)
        elif kind == "track":
            (self._recent if message["ok"] else self._errors).appendleft(message)
            self._totals = message.get("library_totals") or self._totals
        elif kind == "status":
            self._status = message
            self._totals = message.get("library_totals") or self._totals
        self._dropped += sum(client.put(data) for client in self._clients)

    def snapshot(self) -> dict[str, Any]:
        return {"type": "snapshot", "server_ts": time.time(), "model": self.context.model,
                "sources": {name: s.as_dict() for name, s in self._sources.items()},
                "library": {"status": self._status, "totals": self._totals, "recent": list(self._recent),
                            "errors": list(self._errors)}}

    def _page(self, name: str) -> Any:
        from aiohttp import web

        path = STATIC / name

        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

        return handler

    async def _state(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.snapshot(), headers={"Cache-Control": "no-store"})

    async def _events(self, request: Any) -> Any:
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        client = _Client(self.settings.client_queue)
        self._clients.add(client)
        try:
            await response.write(f"retry: {self.settings.retry_ms}\n\n".encode() + _sse("snapshot", self.snapshot()))
            while True:
                if not client.queue:
                    client.ready.clear()
                    try:
                        await asyncio.wait_for(client.ready.wait(), KEEPALIVE_S)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                data = client.queue.popleft()
                if data is None:  # the daemon is stopping
                    break
                await response.write(data)
        except ConnectionError:  # the page went away
            pass
        finally:
            self._clients.discard(client)
        return response

    async def _end_streams(self, app: Any) -> None:
        for client in list(self._clients):
            client.put(None)
