"""The Icecast sink: the stream's title set to the genre on each change (``/admin/metadata``).

Section ``[icecast]``. On every ``genre_changed`` of the chosen source it asks the server for
``/admin/metadata?mount=MOUNT&mode=updinfo&song=TEXT`` (HTTP basic auth: the mount's source
credentials or the admin's) and checks Icecast's XML answer. An uncertain change sends ``uncertain``,
never its genre (contract §3), and a change to "no music" sends ``no_music``; either sends nothing when it
is "" (the default). A server
that does not answer costs counted errors and a backoff (the hub's), never the live path.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from service.sinks import ChangeSection, ChangeSink, SinkContext, SinkSettings, check

MAX_ANSWER_BYTES = 64 * 1024  # Icecast's answer is a few hundred bytes of XML; more is read no further


@dataclass
class IcecastSection(ChangeSection):
    """enabled: update the metadata. url: the Icecast server (http:// or https://). mount: the mount
    point, e.g. /stream. user, password: the mount's source credentials or the admin's (or
    password_file: a file holding it, first line). format: the title for a genre (fields as in
    [textfile]). no_music: the title when the stream turns to talk or silence ("" = leave it).
    uncertain: the title while the music's genre is not decided, never the genre ("" = leave it).
    source: the live source to follow ("" = every source). timeout_seconds: per request."""

    url: str = "http://127.0.0.1:8000"
    mount: str = "/stream"
    user: str = "source"
    password: str = ""
    password_file: str = ""
    timeout_seconds: float = 5.0

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.url.startswith(("http://", "https://")), f"{section}.url", "must start with http:// or https://")
        check(self.mount.startswith("/"), f"{section}.mount", "must start with / (e.g. /stream)")
        check(self.timeout_seconds > 0, f"{section}.timeout_seconds", "must be positive")
        if self.enabled:
            check(bool(self.password or self.password_file), f"{section}.password",
                  "set password or password_file (Icecast needs credentials to change metadata)")
            if self.password_file:
                check(Path(self.password_file).expanduser().is_file(), f"{section}.password_file",
                      f"{self.password_file!r} is not a readable file")


class IcecastSink(ChangeSink):
    name: ClassVar[str] = "icecast"
    Settings: ClassVar[type[SinkSettings]] = IcecastSection

    def __init__(self, settings: IcecastSection, context: SinkContext) -> None:
        super().__init__(settings, context)
        self.settings: IcecastSection = settings
        password = settings.password
        if settings.password_file:
            lines = Path(settings.password_file).expanduser().read_text().splitlines()
            password = lines[0] if lines else ""
        token = base64.b64encode(f"{settings.user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.updates = 0

    def describe(self) -> str:
        return f"Icecast metadata of {self.settings.url.rstrip('/')}{self.settings.mount}"

    def show(self, text: str) -> bool:
        if not text:  # "" (no_music and uncertain by default): leave the title as it is
            return False
        self.update(text)
        return True

    def update(self, title: str) -> None:
        """Set the mount's title; raise with Icecast's reason when it refuses."""
        s = self.settings
        query = urllib.parse.urlencode({"mount": s.mount, "mode": "updinfo", "song": title, "charset": "UTF-8"})
        request = urllib.request.Request(f"{s.url.rstrip('/')}/admin/metadata?{query}",
                                         headers={"Authorization": self._auth, "User-Agent": "genre-tagger"})
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_seconds) as response:
                body = response.read(MAX_ANSWER_BYTES)  # a server that never stops talking costs no memory
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"Icecast {s.url} refused the update of {s.mount}: HTTP {exc.code} "
                                  f"{exc.reason}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(f"Icecast {s.url} unreachable: {reason}") from None
        try:
            root = ET.fromstring(body)
            ok, message = root.findtext("return"), root.findtext("message") or ""
        except ET.ParseError:
            ok, message = None, body[:200].decode(errors="replace")
        if ok != "1":
            raise ConnectionError(f"Icecast {s.url} did not update {s.mount}: {message.strip() or 'no reason given'}")
        self.updates += 1
