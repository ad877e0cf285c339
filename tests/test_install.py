"""Installed like a user installs it: the wheel, in a fresh virtual environment outside the checkout.

One wheel and one environment for the module (pip's own cache and index settings keep the install
fast here; CI downloads from PyPI). Every command runs from a folder that is not the repository, with
no PYTHONPATH, so nothing can come from the checkout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import zmq
from daemon_helpers import free_endpoint

REPO = Path(__file__).resolve().parent.parent
# The wheel carries two model files of about 0.9 MB each: well under this, and far from the 340 MB of
# CUDA libraries a GPU build would bring.
MAX_WHEEL_BYTES = 8 * 1024 * 1024


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GENRE_TAGGER_MODELS")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the wheel, the environment's bin folder, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(REPO)],
                   check=True, timeout=600, env=_env(), cwd=root)
    (wheel,) = dist.glob("genre_tagger-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", str(wheel)],
                   check=True, timeout=900, env=_env(), cwd=root)
    work = root / "elsewhere"
    work.mkdir()
    return wheel, venv / "bin", work


def _run(bin_dir: Path, work: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "genre-tagger"), *args], capture_output=True, text=True, cwd=work,
                          env=_env(), timeout=timeout)


def test_the_wheel_carries_the_models_and_no_tests(installed) -> None:
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    print(f"\n{wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB, {len(names)} files")
    assert wheel.stat().st_size < MAX_WHEEL_BYTES
    shipped = sorted(p.name for p in (REPO / "models").glob("*.onnx"))
    assert shipped and sorted(Path(n).name for n in names if n.startswith("tagger/models/") and n.endswith(".onnx")) \
        == shipped
    for data in ("service/schema/messages-v1.json", "service/genre-tagger.toml"):
        assert data in names
    tops = {n.split("/")[0] for n in names if not n.startswith("genre_tagger-")}
    assert tops == {"tagger", "service", "training", "beetsplug"}, tops  # why service and training stay: README
    # beets' plugins share the beetsplug namespace package: ours must not bring an __init__.py
    assert "beetsplug/genretagger.py" in names and "beetsplug/__init__.py" not in names
    assert not any(n.endswith((".png", ".cv.json")) for n in names)  # the card's figures stay in the repository


def test_the_installed_environment_has_one_cpu_onnxruntime(installed) -> None:
    _, bin_dir, work = installed
    check = subprocess.run([str(bin_dir / "python"), "-m", "pip", "check"], capture_output=True, text=True,
                           env=_env(), cwd=work, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True,
                            text=True, env=_env(), cwd=work, timeout=120, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert "torch" not in names


def test_models_lists_the_shipped_models_from_the_package(installed) -> None:
    _, bin_dir, work = installed
    proc = _run(bin_dir, work, "models")
    assert proc.returncode == 0, proc.stderr
    site = str(bin_dir.parent / "lib")
    lines = proc.stdout.splitlines()
    assert any(line.startswith("msd-musicnn-gtzan (default)") for line in lines), proc.stdout
    assert all(site in line for line in lines), proc.stdout  # found inside the installed package


def test_tag_a_real_file_from_another_folder(installed, realworld: Path) -> None:
    _, bin_dir, work = installed
    song = realworld / "warzone2100-music" / "menu.opus"
    proc = _run(bin_dir, work, "tag", "--json", str(song))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["duration_s"] > 100
    assert result["outputs"]["genre"]["top"] in ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal",
                                                 "pop", "reggae", "rock")


def test_the_daemon_tags_a_folder_and_publishes(installed, realworld: Path) -> None:
    _, bin_dir, work = installed
    music = work / "music"
    music.mkdir()
    (music / "menu.opus").write_bytes((realworld / "warzone2100-music" / "menu.opus").read_bytes())
    config = work / "genre-tagger.toml"
    printed = _run(bin_dir, work, "daemon", "--print-config")
    assert printed.returncode == 0 and "[publish]" in printed.stdout
    config.write_text(printed.stdout.replace('roots = ["~/Music"]', f'roots = ["{music}"]'))
    endpoint = free_endpoint()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    sub.subscribe(b"track")
    log = work / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(bin_dir / "genre-tagger"), "daemon", "--config", str(config), "--state-dir",
                                   str(work / "state"), "--endpoint", endpoint, "--settle", "0.2"],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=work, env=_env())
    try:
        deadline = time.monotonic() + 180
        message = None
        while message is None and time.monotonic() < deadline and daemon.poll() is None:
            if sub.poll(200):
                _, body = sub.recv_multipart()
                message = json.loads(body)
        assert message is not None, log.read_text()
        assert message["ok"] and message["path"] == str(music / "menu.opus")
    finally:
        sub.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_this_environment_has_exactly_one_onnxruntime_build() -> None:
    from tagger.engine import installed_onnxruntime_builds

    assert len(installed_onnxruntime_builds()) == 1, installed_onnxruntime_builds()


def _fake_wheel(folder: Path, name: str, version: str, build: str) -> Path:
    """A minimal wheel of distribution ``name`` that installs the package ``onnxruntime`` saying ``build``."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    files = {
        "onnxruntime/__init__.py": f"BUILD = {build!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = [f"{p},,\n" for p in files] + [f"{dist}.dist-info/RECORD,,\n"]
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{dist}.dist-info/RECORD", "".join(records))
    return path


def test_make_swaps_the_onnxruntime_build_and_never_keeps_both(tmp_path: Path) -> None:
    """The Makefile's install-gpu / install-cpu mechanics, on stand-in wheels of both builds (no 340 MB download)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, "onnxruntime", "9.9.9", "cpu")
    _fake_wheel(wheels, "onnxruntime-gpu", "9.9.9", "gpu")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {**_env(), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "onnxruntime==9.9.9"], check=True, env=env, timeout=300)
    (venv / ".runtime-installed").touch()  # the package itself is not what this test installs

    def state() -> tuple[list[str], str]:
        probe = ("import importlib.metadata as m, onnxruntime\n"
                 "names = sorted(d.metadata['Name'].lower() for d in m.distributions() if 'onnxruntime' in "
                 "d.metadata['Name'].lower())\nprint(','.join(names), onnxruntime.BUILD)")
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env, timeout=60).stdout.split()
        return out[0].split(","), out[1]

    def make(target: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target, f"VENV={venv}"],
                              capture_output=True, text=True, env=env, timeout=600)

    assert state() == (["onnxruntime"], "cpu")
    swapped = make("install-gpu")
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert state() == (["onnxruntime-gpu"], "gpu")
    assert (venv / ".onnxruntime-gpu").exists()
    back = make("install-cpu")
    assert back.returncode == 0, back.stdout + back.stderr
    assert state() == (["onnxruntime"], "cpu")
    (wheels / "onnxruntime_gpu-9.9.9-py3-none-any.whl").unlink()  # no GPU build to be had: the CPU one stays
    failed = make("install-gpu")
    assert failed.returncode != 0
    assert state() == (["onnxruntime"], "cpu")
