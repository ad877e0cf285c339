"""The ZeroMQ sink: every event as a [topic, JSON] message on the daemon's XPUB socket.

The socket lives in a child process with a memory cap (:class:`service.publish_process.PublisherProcess`):
a client flooding subscriptions can end that child (a new one starts), never grow the daemon. An
``inproc://`` endpoint stays in the daemon (:class:`service.publish.Publisher`): only the daemon's own
threads can reach it. Inline: publishing never blocks (a full queue costs counted drops), so the live path
publishes in its own thread and its latency is unchanged.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, ClassVar

from service.events import GenreChanged, LiveUpdate, Status, TrackDone
from service.publish import DEFAULT_ENDPOINT, Curve, Publisher, check_endpoint
from service.publish_process import DEFAULT_MEMORY_LIMIT_MB, PublisherProcess
from service.sinks import Sink, SinkContext, SinkSettings, check


@dataclass
class PublishSection(SinkSettings):
    """endpoint: ZeroMQ bind address (tcp:// or ipc://; "" disables publishing). send_hwm: messages
    queued per subscriber before drops. heartbeat_seconds: interval of `status` messages.
    curve_secret_key: the daemon's secret CURVE certificate file ("" = no CURVE). curve_clients: the
    client public keys (Z85 strings or certificate files) allowed to connect when CURVE is on.
    memory_limit_mb: MB the publisher's own process may allocate beyond its start (subscriptions, queued
    messages); past it that process ends and a new one starts."""

    endpoint: str = DEFAULT_ENDPOINT
    send_hwm: int = 1000
    heartbeat_seconds: float = 5.0
    curve_secret_key: str = ""
    curve_clients: list[str] = field(default_factory=list)
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB

    def curve(self) -> Curve | None:
        return Curve(self.curve_secret_key, tuple(self.curve_clients)) if self.curve_secret_key else None

    def active(self) -> bool:
        return bool(self.endpoint)

    def validate(self, section: str) -> None:
        if self.endpoint:
            check_endpoint(self.endpoint, f"config {section}.endpoint")
        check(not self.curve_clients or bool(self.curve_secret_key), f"{section}.curve_clients",
              "needs curve_secret_key (the daemon's own secret certificate) too")
        check(not self.curve_secret_key or bool(self.curve_clients), f"{section}.curve_clients",
              "list the client public keys allowed to connect (CURVE is on: curve_secret_key is set)")
        check(self.send_hwm >= 1, f"{section}.send_hwm", "must be at least 1")
        check(self.heartbeat_seconds > 0, f"{section}.heartbeat_seconds", "must be positive")
        check(self.memory_limit_mb >= 64, f"{section}.memory_limit_mb", "must be at least 64")


class ZmqSink(Sink):
    name: ClassVar[str] = "publish"
    Settings: ClassVar[type[SinkSettings]] = PublishSection
    inline: ClassVar[bool] = True

    def __init__(self, settings: PublishSection, context: SinkContext) -> None:
        super().__init__(settings, context)
        self.settings: PublishSection = settings
        self.publisher: Publisher | PublisherProcess | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--endpoint", help=f"ZeroMQ PUB endpoint (default {DEFAULT_ENDPOINT}; '' disables)")

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {"endpoint": args.endpoint}

    def start(self) -> None:
        if self.settings.endpoint.startswith("inproc://"):
            self.publisher = Publisher(self.settings.endpoint, self.settings.send_hwm, self.settings.curve())
        else:
            self.publisher = PublisherProcess(self.settings.endpoint, self.settings.send_hwm, self.settings.curve(),
                                              self.settings.memory_limit_mb)

    def describe(self) -> str:
        return f"ZeroMQ on {self.publisher.bound}" if self.publisher else "ZeroMQ (not started)"

    @property
    def dropped(self) -> int:
        return self.publisher.dropped if self.publisher else 0

    @property
    def subscribers(self) -> int:
        return self.publisher.subscribers if self.publisher else 0

    def _send(self, event: TrackDone | LiveUpdate | GenreChanged | Status) -> None:
        if self.publisher is not None:
            self.publisher.publish(*event.as_message())

    track = live = genre_changed = status = _send  # type: ignore[assignment]

    def close(self, deadline: float) -> None:
        if self.publisher is not None:
            self.publisher.close()
