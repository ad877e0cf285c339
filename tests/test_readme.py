"""The README stays true: its Python examples run (the ZeroMQ one against a real daemon), and its two
commands exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from daemon_helpers import start_daemon, stop_daemon

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_api_example_runs() -> None:
    (code,) = [b for b in BLOCKS if "from tagger import Tagger" in b]
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0].split()
    assert first[0] in ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
    assert 0.0 < float(first[1]) <= 1.0


def test_training_example_runs() -> None:
    (code,) = [b for b in BLOCKS if "from training.datasets import" in b]
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("161 ['excluded', 'test', 'train', 'valid'] [")


def test_zeromq_example_receives_a_track_from_the_daemon(tiny_model: Path, tmp_path: Path, realworld: Path) -> None:
    (code,) = [b for b in BLOCKS if "import json, zmq" in b]
    endpoint = re.search(r'sub\.connect\("([^"]+)"\)', code).group(1)
    music = tmp_path / "music"
    music.mkdir()
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--settle", "0.2",
                          endpoint=endpoint)
    try:
        reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        time.sleep(2.0)  # the subscriber connects before the file arrives
        shutil.copy(realworld / "warzone2100-music" / "menu.opus", music / "menu.opus")
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        assert out.strip() in ("low", "mid", "high")
    finally:
        assert stop_daemon(daemon) == 0


def test_the_two_commands_are_make_targets_and_ci_runs_the_test_one() -> None:
    commands = re.search(r"## Two commands\n\n```sh\n(.*?)```", README, flags=re.S).group(1)
    targets = [line.split()[1] for line in commands.strip().splitlines()]
    assert targets == ["run", "test"]
    makefile = (REPO / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
