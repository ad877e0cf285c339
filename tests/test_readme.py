"""The README stays true: its Python example runs and its two commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip()


def test_the_two_commands_are_make_targets_and_ci_runs_the_test_one() -> None:
    commands = re.search(r"## Two commands\n\n```sh\n(.*?)```", README, flags=re.S).group(1)
    targets = [line.split()[1] for line in commands.strip().splitlines()]
    assert targets == ["run", "test"]
    makefile = (REPO / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
