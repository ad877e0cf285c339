"""Run genre-tagger as an unprivileged user (``nobody``) from a test that may itself run as root.

Root reads every file, so permission cases only mean something for another user. When the tests run
as root, commands are prefixed with ``setpriv`` to become nobody. Nobody must then be able to run the
interpreter and read the code and its packages: a checkout under /root (CI clones anywhere, as root)
is not. In that case the runtime (``tagger``, ``service`` and the site packages they import) is
copied into a world-readable temporary folder and run from there. When even the interpreter cannot
be run by nobody, :meth:`Unprivileged.skip_reason` says so plainly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# Imports the runtime, and starts the interpreter again (the decoding child, multiprocessing's helpers).
_PROBE = ("import subprocess, sys, service.daemon, service.cli, tagger.cli, tagger.isolated\n"
          "subprocess.run([sys.executable, '-c', 'pass'], check=True)\nprint('ok')")



class Unprivileged:
    """How to run ``python -m …`` as nobody: :attr:`command` and :attr:`env`, or :attr:`skip_reason`."""

    def __init__(self) -> None:
        self.root = os.geteuid() == 0
        self._copy: Path | None = None
        self._python = sys.executable
        self._home = world_readable_tmp("gt-home-")  # nobody's HOME (its default state folder lives there)

    @cached_property
    def skip_reason(self) -> str | None:
        if not self.root:
            return None  # already unprivileged
        if shutil.which("setpriv") is None:
            return "running as root, and setpriv (util-linux) is missing: cannot become nobody"
        if self._runs([sys.executable, "-c", _PROBE], cwd=REPO, env=None):
            return None
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
                      shutil.which(f"python{version}"), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
        check = (f"import subprocess, sys; assert sys.version_info[:2] == ({version.replace('.', ', ')}); "
                 "subprocess.run([sys.executable, '-c', 'pass'], check=True); print('ok')")
        usable = [c for c in dict.fromkeys(candidates) if c and self._runs([c, "-c", check], cwd="/", env={})]
        if not usable:
            return (f"running as root, and nobody can run neither this virtual environment's interpreter nor a "
                    f"Python {version} of its own (a parent folder is not searchable by others): the unprivileged "
                    "run is impossible here")
        self._python = usable[0]
        self._copy = self._copy_runtime()
        if not self._runs([self._python, "-c", _PROBE], cwd=self._copy, env=self.env):
            return f"nobody cannot import genre-tagger even from a world-readable copy in {self._copy}"
        return None

    @property
    def python(self) -> str:
        return self._python

    @property
    def prefix(self) -> list[str]:
        return list(SETPRIV) if self.root else []

    @property
    def command(self) -> list[str]:
        """The start of a command line: ``[*setpriv, python]``."""
        return [*self.prefix, self.python]

    @property
    def cwd(self) -> Path:
        return self._copy or REPO

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["HOME"] = str(self._home)
        if self._copy is not None:
            env["PYTHONPATH"] = f"{self._copy}{os.pathsep}{self._copy / 'site'}"
        return env

    def close(self) -> None:
        for folder in (self._copy, self._home):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _runs(self, args: list[str], cwd: Path | str, env: dict[str, str] | None) -> bool:
        try:
            proc = subprocess.run([*SETPRIV, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and proc.stdout.strip().endswith("ok")

    def _copy_runtime(self) -> Path:
        """tagger/ and service/ from the checkout, and the installed files of every distribution the
        runtime depends on (genre-tagger's requirements without extras, recursively)."""
        folder = Path(tempfile.mkdtemp(prefix="gt-nobody-"))
        folder.chmod(0o755)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in ("tagger", "service"):
            shutil.copytree(REPO / package, folder / package, ignore=ignore)
        site = Path(sysconfig.get_paths()["purelib"])
        (folder / "site").mkdir()
        tops: set[str] = set()
        for dist in runtime_distributions():
            for file in dist.files or ():
                top = Path(file).parts[0]
                if top not in ("..", "__pycache__") and not top.startswith("__editable__"):
                    tops.add(top)
        for top in sorted(tops):
            entry = site / top
            if entry.is_dir():
                shutil.copytree(entry, folder / "site" / top, ignore=ignore, symlinks=True)
            elif entry.is_file():
                shutil.copy2(entry, folder / "site" / top)
        for dirpath, dirnames, filenames in os.walk(folder):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                p = os.path.join(dirpath, f)
                if not os.path.islink(p):
                    os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
        return folder


def runtime_distributions() -> list:
    """The installed distributions genre-tagger's runtime needs (its requirements without extras, recursively)."""
    import re
    from importlib import metadata

    found: dict[str, metadata.Distribution] = {}
    todo = [req for req in metadata.requires("genre-tagger") or () if "extra ==" not in req]
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop().strip(), maxsplit=1)[0].lower().replace("_", "-")
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        todo += [req for req in dist.requires or () if "extra ==" not in req]
    return list(found.values())


def world_readable_tmp(prefix: str) -> Path:
    """A fresh folder under the system temp dir that nobody can use (pytest's own is root-only)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o777)
    return folder
