"""A ZeroMQ client cannot grow the daemon's memory, and a bad endpoint is one clear line (exit 2).

The abuse test runs the real daemon and attacks its socket the way issue #17 did: an XSUB client that
sends 200,000 garbage frames and 20,000 distinct subscriptions (as long as ZeroMQ lets in), with a
well-behaved subscriber beside it. ZeroMQ files subscriptions faster than anyone can count them (on a
loaded machine one such burst once grew the daemon by 430 MB), so the socket lives in a child process
with a data-segment cap; the test reads both processes' memory from /proc: the daemon must not grow, the
publisher process must stay within its cap (ending at it is allowed: a new one starts), and the healthy
subscriber must keep receiving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import zmq
from daemon_helpers import Subscriber, free_endpoint, start_daemon, stop_daemon, wait_started

from service.publish import MAX_INBOUND_BYTES

DAEMON_GROWTH_LIMIT_MB = 40  # the daemon's own peak RSS over its RSS before the attack
PUBLISHER_CAP_MB = 64  # publish.memory_limit_mb for this test


def _memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _publisher_pids(daemon_pid: int) -> list[int]:
    """The daemon's children that run the ZeroMQ publisher."""
    pids = []
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"service.publish_process" in Path(f"/proc/{child}/cmdline").read_bytes():
                    pids.append(int(child))
            except OSError:  # it ended meanwhile
                continue
    return pids


def test_garbage_and_20k_subscriptions_leave_the_daemon_small_and_serving(tiny_model: Path, tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    endpoint = free_endpoint()
    config = tmp_path / "daemon.toml"
    config.write_text(f"[publish]\nmemory_limit_mb = {PUBLISHER_CAP_MB}\n")
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--config", str(config),
                          endpoint=endpoint)
    healthy = None
    try:
        assert wait_started(daemon), daemon.log_path.read_text()
        healthy = Subscriber(endpoint, ("status",))
        healthy.wait_connected()
        before, _ = _memory_mb(daemon.pid)
        publishers = _publisher_pids(daemon.pid)
        assert len(publishers) == 1, publishers
        limits = Path(f"/proc/{publishers[0]}/limits").read_text()
        data_limit = next(line for line in limits.splitlines() if line.startswith("Max data size")).split()[3]
        publisher_start_mb = _memory_mb(publishers[0])[0]
        # the cap counts the data segment (VmData: heap and thread stacks), which RSS never exceeds
        cap_mb = int(data_limit) / 2**20
        assert cap_mb < 200 + PUBLISHER_CAP_MB, limits
        attacker = zmq.Context.instance().socket(zmq.XSUB)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.connect(endpoint)
        time.sleep(0.3)
        started = time.monotonic()
        junk = os.urandom(200)
        for _ in range(200_000):
            attacker.send(b"\x07" + junk)
        for _ in range(20_000):
            attacker.send(b"\x01" + os.urandom(MAX_INBOUND_BYTES - 1))
        for _ in range(5):
            attacker.send(b"\x07" + os.urandom(64 * 1024))  # over the limit: ZeroMQ drops this peer
        publisher_peak = 0.0
        seen = set(publishers)
        while time.monotonic() - started < 8.0:
            for pid in _publisher_pids(daemon.pid):
                seen.add(pid)
                try:
                    publisher_peak = max(publisher_peak, _memory_mb(pid)[1])
                except OSError:  # ended at its cap: a new one starts
                    continue
            time.sleep(0.05)
        attacker.close()
        count_before = len(healthy.of_type("status"))
        assert healthy.wait_for(lambda msgs: len([m for _, m in msgs if m["type"] == "status"]) > count_before + 2,
                                60), "the healthy subscriber stopped receiving"
        after, peak = _memory_mb(daemon.pid)
        log = daemon.log_path.read_text()
        print(f"\ndaemon RSS {before:.0f} MB before, {after:.0f} MB after, VmHWM {peak:.0f} MB; publisher "
              f"process {publisher_start_mb:.0f} MB at start, data cap {cap_mb:.0f} MB, peak RSS seen "
              f"{publisher_peak:.0f} MB, {len(seen)} process(es); resets logged: "
              f"{log.count('closing every connection')}, restarts logged: {log.count('publisher process ended')}")
        assert daemon.poll() is None, log
        assert peak - before < DAEMON_GROWTH_LIMIT_MB
        assert publisher_peak <= cap_mb
        assert "Traceback" not in log
    finally:
        if healthy is not None:
            healthy.close()
        assert stop_daemon(daemon) == 0


def _daemon(tmp_path: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    music = tmp_path / "music"
    music.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "tagger.cli", "daemon", "--model", str(model), "--state-dir",
                           str(tmp_path / "state"), "--folder", str(music), *args],
                          capture_output=True, text=True, timeout=120)


def test_bad_endpoints_are_one_clear_line_and_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    busy = zmq.Context.instance().socket(zmq.PUB)
    busy.setsockopt(zmq.LINGER, 0)
    busy.bind("tcp://127.0.0.1:0")
    taken = busy.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        for endpoint, reason in [
            ("tcp://127.0.0.1:99999", "port '99999' is not a number within 0..65535"),
            (f"ipc://{tmp_path}/missing/pub", f"folder '{tmp_path}/missing' does not exist"),
            ("tcp://no-such-host.invalid:5556", "'no-such-host.invalid' is not an address or network interface"),
            (taken, "address already in use"),
        ]:
            proc = _daemon(tmp_path, tiny_model, "--endpoint", endpoint)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, (endpoint, proc.stderr)
            assert len(lines) == 1 and lines[0].startswith("genre-tagger: error: "), proc.stderr
            assert endpoint in lines[0] and reason in lines[0], lines[0]
    finally:
        busy.close()
