"""tagger.interpreter.start_python: a child on this interpreter, through /proc/self/exe when its path is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from unprivileged import Unprivileged

from tagger.interpreter import SELF_EXE, start_python

# What the child reports: the interpreter it runs, the import path it was handed, an environment value
# of the caller's, and whether it can import this project (cwd "/" so that nothing comes from the folder).
_REPORT = ("import json, os, sys, tagger.interpreter\n"
           "print(json.dumps({'version': sys.version, 'pythonpath': os.environ.get('PYTHONPATH'),"
           " 'probe': os.environ.get('GT_PROBE')}))")


def _report(child: subprocess.Popen) -> dict:
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    return json.loads(out)


def test_a_reachable_interpreter_is_started_by_its_own_path_with_the_environment_given() -> None:
    env = {**os.environ, "GT_PROBE": "given"}
    env.pop("PYTHONPATH", None)
    child = start_python(["-c", _REPORT], env, stdout=subprocess.PIPE, cwd="/")
    assert child.args[0] == sys.executable
    report = _report(child)
    assert report == {"version": sys.version, "pythonpath": None, "probe": "given"}


def test_an_interpreter_this_user_may_not_run_is_started_through_proc_self_exe_with_our_import_path(
        tmp_path: Path) -> None:
    # A path the kernel refuses with EACCES, as it refuses nobody a link into /root: here a file without
    # an execute bit (refused to root too).
    refused = tmp_path / "python3"
    shutil.copyfile(sys.executable, refused)  # the very binary, less its execute bits
    refused.chmod(0o644)
    env = {**os.environ, "GT_PROBE": "given", "PYTHONPATH": "/replaced"}
    child = start_python(["-c", _REPORT], env, interpreter=str(refused), stdout=subprocess.PIPE, cwd="/")
    assert child.args[0] == SELF_EXE
    report = _report(child)
    assert report == {"version": sys.version, "pythonpath": os.pathsep.join(p for p in sys.path if p),
                      "probe": "given"}
    assert env["PYTHONPATH"] == "/replaced", "the caller's environment was changed"


def test_an_interpreter_that_is_gone_is_an_oserror_not_a_fallback(tmp_path: Path) -> None:
    # The publisher turns it into its one-line error; /proc/self/exe would hide a rebuilt environment.
    with pytest.raises(FileNotFoundError):
        start_python(["-c", "pass"], dict(os.environ), interpreter=str(tmp_path / "gone" / "python3"))


def test_nobody_behind_a_folder_it_cannot_search_gets_the_child_through_proc_self_exe(tmp_path: Path) -> None:
    # The daemon's case for real: the interpreter's path runs through a folder this user may not search.
    runner = Unprivileged()
    try:
        if runner.skip_reason:
            pytest.skip(runner.skip_reason)
        hidden = tmp_path / "hidden"
        hidden.mkdir()
        (hidden / "python3").symlink_to(runner.python)
        hidden.chmod(0o000)  # not searchable by nobody (root owns it) nor by its owner when the tests are not root
        script = ("import json, subprocess, sys\nfrom tagger.interpreter import start_python\n"
                  f"child = start_python(['-c', {_REPORT!r}], {{'GT_PROBE': 'given'}}, "
                  f"interpreter={str(hidden / 'python3')!r}, stdout=subprocess.PIPE, cwd='/')\n"
                  "out, _ = child.communicate(timeout=60)\n"
                  "print(json.dumps({'args0': child.args[0], 'code': child.returncode, 'report': json.loads(out),"
                  " 'path': [p for p in sys.path if p]}))")
        try:
            done = subprocess.run([*runner.command, "-c", script], cwd=runner.cwd, env=runner.env,
                                  capture_output=True, text=True, timeout=120)
        finally:
            hidden.chmod(0o700)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["args0"] == SELF_EXE and seen["code"] == 0
        assert seen["report"]["probe"] == "given"
        assert seen["report"]["pythonpath"] == os.pathsep.join(seen["path"])
    finally:
        runner.close()


def test_the_helper_and_the_publisher_child_load_neither_numpy_nor_onnx_runtime() -> None:
    # The ZeroMQ publisher's child imports tagger.interpreter (through service.publish_process): ~20 MB, not ~90.
    check = ("import sys, tagger.interpreter, service.publish_process\n"
             "print(sorted(m for m in ('numpy', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
