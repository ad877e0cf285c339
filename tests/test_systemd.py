"""The systemd units verify and are hardened; the daemon speaks the notify protocol for real."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import start_daemon, stop_daemon

UNITS = Path(__file__).resolve().parent.parent / "systemd"
BIN = str(Path(sys.executable).parent / "genre-tagger")


def _installed_copy(unit: str, tmp_path: Path) -> Path:
    """The unit as installed here: ExecStart pointing at this checkout's own genre-tagger."""
    text = (UNITS / unit).read_text().replace("/opt/genre-tagger/.venv/bin/genre-tagger", BIN)
    path = tmp_path / unit
    path.write_text(text)
    return path


def _analyze(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _exposure(output: str) -> float:
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", output).group(1))


def test_system_unit_verifies_and_scores_at_most_2(tmp_path: Path) -> None:
    unit = _installed_copy("genre-tagger.service", tmp_path)
    verify = _analyze("verify", str(unit))
    assert verify.returncode == 0, verify.stderr
    security = _analyze("security", "--offline=true", str(unit))
    print(f"\nsystem unit exposure {_exposure(security.stdout)}")
    assert _exposure(security.stdout) <= 2.0


def test_user_unit_verifies(tmp_path: Path) -> None:
    unit = _installed_copy("genre-tagger-live.service", tmp_path)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    verify = _analyze("--user", "verify", str(unit), env=env)
    assert verify.returncode == 0, verify.stderr
    security = _analyze("--user", "security", "--offline=true", str(unit), env=env)
    print(f"\nuser unit exposure {_exposure(security.stdout)}")
    assert _exposure(security.stdout) <= 3.0


def test_daemon_sends_ready_status_and_watchdog(tiny_model: Path, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    music = tmp_path / "music"
    music.mkdir()
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), endpoint="",
                          env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    try:
        seen: list[str] = []
        while not (any("READY=1" in m for m in seen) and any("WATCHDOG=1" in m for m in seen)):
            seen.append(sock.recv(4096).decode())
        ready = next(m for m in seen if "READY=1" in m)
        assert "STATUS=0 tagged, 0 errors, 0 queued; model tiny-test on CPUExecutionProvider" in ready
        assert f"MAINPID={daemon.pid}" in ready
    finally:
        assert stop_daemon(daemon) == 0
    sock.settimeout(2)
    after: list[str] = []
    try:
        while True:
            after.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    sock.close()
    assert any("STOPPING=1" in m for m in after)
