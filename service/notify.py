"""systemd's notify protocol (sd_notify): READY, STATUS, WATCHDOG and STOPPING datagrams.

A no-op outside systemd (no ``$NOTIFY_SOCKET``). The protocol is one datagram of ``KEY=VALUE`` lines
to a Unix socket; an address starting with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_seconds = int(usec) / 1e6 if wanted else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, target)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def stopping(self) -> bool:
        return self.send(stopping=1, status="stopping")
