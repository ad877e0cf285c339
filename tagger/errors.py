"""Typed errors. Each carries a one-line message fit for a log line or a terminal."""

from __future__ import annotations

from pathlib import Path


class TaggerError(Exception):
    """Base class of every error the tagger raises on purpose."""


class DecodeError(TaggerError):
    """A file that cannot be read as audio (missing, empty, not audio, truncated, corrupt)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{without_password(self.path)}: {reason}")


def without_password(location: str) -> str:
    """``location`` as messages show it: a URL's password replaced by ``***`` (``https://user:***@host/…``)."""
    if "://" not in location or "@" not in location:
        return location
    import urllib.parse

    parts = urllib.parse.urlsplit(location)
    if parts.password is None:
        return location
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


class ModelError(TaggerError):
    """A model file that is missing, corrupt, or whose metadata or graph is inconsistent."""


class Cancelled(TaggerError):
    """Work stopped on request (a shutting-down daemon); nothing was recorded."""


class ConfigError(TaggerError):
    """An invalid option or configuration value."""
