"""The ZeroMQ sink: every event as a [topic, JSON] message on the daemon's XPUB socket.

Inline: :class:`service.publish.Publisher` never blocks (a full subscriber costs counted drops), so
the live path publishes in its own thread with no queue in between and its latency is unchanged.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, ClassVar

from service.events import GenreChanged, LiveUpdate, Status, TrackDone
from service.publish import DEFAULT_ENDPOINT, Publisher
from service.sinks import Sink, SinkContext, SinkSettings, check


@dataclass
class PublishSection(SinkSettings):
    """endpoint: ZeroMQ bind address (tcp:// or ipc://; "" disables publishing). send_hwm: messages
    queued per subscriber before drops. heartbeat_seconds: interval of `status` messages."""

    endpoint: str = DEFAULT_ENDPOINT
    send_hwm: int = 1000
    heartbeat_seconds: float = 5.0

    def active(self) -> bool:
        return bool(self.endpoint)

    def validate(self, section: str) -> None:
        check(not self.endpoint or self.endpoint.startswith(("tcp://", "ipc://", "inproc://")),
              f"{section}.endpoint", "must start with tcp://, ipc:// or inproc://")
        check(self.send_hwm >= 1, f"{section}.send_hwm", "must be at least 1")
        check(self.heartbeat_seconds > 0, f"{section}.heartbeat_seconds", "must be positive")


class ZmqSink(Sink):
    name: ClassVar[str] = "publish"
    Settings: ClassVar[type[SinkSettings]] = PublishSection
    inline: ClassVar[bool] = True

    def __init__(self, settings: PublishSection, context: SinkContext) -> None:
        super().__init__(settings, context)
        self.publisher: Publisher | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--endpoint", help=f"ZeroMQ PUB endpoint (default {DEFAULT_ENDPOINT}; '' disables)")

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {"endpoint": args.endpoint}

    def start(self) -> None:
        settings: PublishSection = self.settings  # type: ignore[assignment]
        self.publisher = Publisher(settings.endpoint, settings.send_hwm)

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
