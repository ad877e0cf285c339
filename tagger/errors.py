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
        super().__init__(f"{self.path}: {reason}")


class ModelError(TaggerError):
    """A model file that is missing, corrupt, or whose metadata or graph is inconsistent."""


class Cancelled(TaggerError):
    """Work stopped on request (a shutting-down daemon); nothing was recorded."""


class ConfigError(TaggerError):
    """An invalid option or configuration value."""
