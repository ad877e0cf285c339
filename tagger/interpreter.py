"""Start a child Python process on this very interpreter, also when this user cannot reach its path.

A daemon run as an unprivileged user (``nobody``) from a virtual environment whose interpreter is a link
into a folder only root may search (``/root``, mode 700) runs fine, yet cannot start ``sys.executable``
again: the kernel refuses the path (``PermissionError``). The binary it runs on is still reachable as
``/proc/self/exe``; started through it, the child lacks only the environment's import path, which it gets
from this process's ``sys.path`` as ``PYTHONPATH``.

Standard library only: the ZeroMQ publisher's child imports this and must not load numpy or ONNX Runtime.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

# This process's own binary, reachable whatever the path it was started by (Linux).
SELF_EXE = "/proc/self/exe"


def start_python(args: Sequence[str], env: Mapping[str, str], interpreter: str | None = None,
                 **popen: Any) -> subprocess.Popen:
    """Start ``interpreter *args`` as a child process, through :data:`SELF_EXE` when it may not be run.

    Args:
        args: the interpreter's arguments, e.g. ``["-m", "service.publish_process"]``.
        env: the child's whole environment; on the fallback ``PYTHONPATH`` is set (replaced) in a copy.
        interpreter: the path this interpreter is known by; None (the default) for ``sys.executable``.
            It must be the binary this process runs on: the fallback starts that one.
        **popen: passed to :class:`subprocess.Popen` as they are (pipes, ``start_new_session``, ...).

    Returns:
        The started child.

    Raises:
        OSError: neither path could be started (the interpreter is gone, or no process can be made now);
            a ``PermissionError`` from the fallback means ``/proc/self/exe`` is refused too.
    """
    path = sys.executable if interpreter is None else interpreter
    try:
        return subprocess.Popen([path, *args], env=dict(env), **popen)
    except PermissionError:
        # A folder on the way to the path is not searchable by this user: the same binary, our import path.
        fallback = {**env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return subprocess.Popen([SELF_EXE, *args], env=fallback, **popen)
