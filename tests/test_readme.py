"""The README stays true: its Python examples run (the ZeroMQ one against a real daemon), and its two
commands exist."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from daemon_helpers import INTERRUPTIBLE, free_endpoint, start_daemon, stop_daemon, tcp_connected, wait_until

from service.publish import DEFAULT_ENDPOINT

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
    readme_endpoint = re.search(r'sub\.connect\("([^"]+)"\)', code).group(1)
    assert readme_endpoint == DEFAULT_ENDPOINT, "the example must reach a daemon started with its defaults"
    # The example as a user copies it, on a free port: the README's may be taken on this machine (a user's
    # daemon, another test run). It is held here while it is free, so the test shows it never needs it.
    endpoint = free_endpoint()
    code = code.replace(f'"{readme_endpoint}"', f'"{endpoint}"')
    music = tmp_path / "music"
    music.mkdir()
    with socket.socket() as readme_port:
        with contextlib.suppress(OSError):  # taken already: just as good
            readme_port.bind(("127.0.0.1", int(readme_endpoint.rsplit(":", 1)[1])))
            readme_port.listen()
        _walk_the_zeromq_example(code, endpoint, tiny_model, tmp_path, music, realworld)


def _walk_the_zeromq_example(code: str, endpoint: str, tiny_model: Path, tmp_path: Path, music: Path,
                             realworld: Path) -> None:
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--settle", "0.2",
                          endpoint=endpoint)
    try:
        reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        # The subscriber connects before the file arrives (a fixed 2 s was not enough for a Python start on a
        # loaded box: the track went out before anyone listened and the example waited forever).
        assert wait_until(lambda: tcp_connected(reader.pid, endpoint) or reader.poll() is not None, 120)
        assert reader.poll() is None, reader.communicate()[1]
        time.sleep(0.5)  # the subscription itself follows the connection in ZeroMQ's handshake
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


# -- the README's command lines, walked in a fresh shell ----------------------------------------------

SETUP = ("make install", 'export PATH="$PWD/.venv/bin:$PATH"')  # the README's "Install" block, as written
# Each command line of the README: how the walk runs it, or why it does not run here (and what covers it).
#   ("run", cwd, exit code): run to completion; cwd "repo" or "work" (a scratch folder with song.flac, album/...)
#   ("serve", cwd, what to wait for): a long-running command; Ctrl-C once it has done that; exit 0
NOT_HERE = "skip"
WALK: dict[str, tuple] = {
    "make run": ("serve", "repo", "files tagged"),  # with MUSIC=~/Music, as the README offers
    "make test": (NOT_HERE, "this suite itself"),
    "make install": ("run", "repo", 0),
    'export PATH="$PWD/.venv/bin:$PATH"': ("run", "repo", 0),
    "genre-tagger models": ("run", "work", 0),
    "pipx install .": (NOT_HERE, "downloads pipx from PyPI; tried by hand; tests/test_install.py installs the wheel"),
    "make wheel && pip install dist/genre_tagger-*.whl": (
        NOT_HERE, "would replace the editable install in .venv; tests/test_install.py installs the wheel elsewhere"),
    "make install-gpu": (NOT_HERE, "downloads the 340 MB CUDA build; no GPU here"),
    "pipx runpip genre-tagger uninstall -y onnxruntime && pipx runpip genre-tagger install onnxruntime-gpu": (
        NOT_HERE, "a pipx environment and the CUDA build; no GPU here"),
    "genre-tagger tag song.flac ~/Music/Jazz": ("run", "work", 0),
    "genre-tagger tag --json --top-k 3 ~/Music > tags.jsonl": ("run", "work", 0),
    "genre-tagger tag --threshold 70% --alias hiphop=Hip-Hop --alias-file my-names.json album/": ("run", "work", 0),
    "genre-tagger daemon --folder ~/Music": ("serve", "work", "library"),
    "genre-tagger daemon --live --source radio": (
        NOT_HERE, "needs an audio input; tests/test_live.py runs live capture through PulseAudio"),
    "genre-tagger daemon --config service/genre-tagger.toml": ("serve", "repo", "started"),
    "genre-tagger daemon --live --source radio --http": (
        NOT_HERE, "needs an audio input (and the default HTTP port); tests/test_live.py, the display's tests"),
    "genre-tagger daemon --live-file demo.flac --loop --http 127.0.0.1:0": ("serve", "work", "started"),
    "genre-tagger daemon --live-file https://radio.example/stream.mp3 --http": (
        NOT_HERE, "an Internet radio stream; nothing outside this machine is reachable in tests"),
    "genre-tagger listen": ("serve", "work", "status"),
    "genre-tagger listen --topic track --json": ("serve", "work", "track"),
    "genre-tagger keys ~/.config/genre-tagger --name daemon": ("run", "work", 0),
    "genre-tagger keys ~/.config/genre-tagger --name kitchen": ("run", "work", 0),
    "genre-tagger listen tcp://music-box:5556 --server-key daemon.key --client-key kitchen.key_secret": (
        NOT_HERE, "a second machine; tests/test_publish.py connects with CURVE keys"),
    "genre-tagger library stats": ("run", "work", 0),
    "genre-tagger library list --genre jazz --min-score 0.7": ("run", "work", 0),
    "genre-tagger library list --status error": ("run", "work", 0),
    "genre-tagger library list --no-music": ("run", "work", 0),
    "genre-tagger library show ~/Music/song.flac": ("run", "work", 0),
    "genre-tagger library export-m3u metal metal.m3u --min-score 0.6": ("run", "work", 0),
    "genre-tagger library export-csv tags.csv": ("run", "work", 0),
    'sqlite3 ~/.local/state/genre-tagger/library.db "SELECT t.path, g.label, g.score FROM tracks t JOIN genres g ON '
    'g.track_id = t.id WHERE g.rank = 1"': ("run", "work", 0),
    "genre-tagger tag --write-tags --dry-run ~/Music": ("run", "work", 0),
    "genre-tagger tag --write-tags ~/Music": ("run", "work", 0),
    "genre-tagger tag --write-tags --policy merge --alias hiphop=Hip-Hop --tag-output genre --tag-output msd_genres "
    "album/": ("run", "work", 0),
    "genre-tagger library restore-tags": ("run", "work", 0),
    "genre-tagger library restore-tags --run last": ("run", "work", 0),
    "genre-tagger library retag --outdated": ("run", "work", 0),
    "genre-tagger library retry-owed": ("run", "work", 0),
    "beet import ~/Music/new-album": (NOT_HERE, "a beets library and config; tests/test_beets.py runs the plugin"),
    "beet genretag -p": (NOT_HERE, "a beets library and config; tests/test_beets.py"),
    "beet genretag --policy merge -w artist:ASC": (NOT_HERE, "a beets library and config; tests/test_beets.py"),
    "beet genretag -a album:Frontiers": (NOT_HERE, "a beets library and config; tests/test_beets.py"),
    "beet ls -f '$genres | $genretagger_model | $title'": (NOT_HERE, "a beets library; tests/test_beets.py"),
    "genre-tagger batch ~/Music --out shards/": (
        NOT_HERE, "needs the batch extra (pyarrow), which `make install` leaves out; tests/test_batch.py"),
    "genre-tagger batch catalogue.csv --out shards/ --ray auto": (
        NOT_HERE, "a Ray cluster; tests/test_batch.py starts a two-node one and loses a node midway"),
    "genre-tagger library import shards/": (NOT_HERE, "needs batch's shards; tests/test_batch.py imports them"),
    "genre-tagger models msd-musicnn-gtzan": ("run", "work", 0),
    "genre-tagger models msd-musicnn-gtzan --json": ("run", "work", 0),
    "genre-tagger bench": (NOT_HERE, "minutes of benchmark; tests/test_bench.py"),
    "genre-tagger bench --device cuda --live-seconds 0 --no-daemon": (NOT_HERE, "no GPU here; tests/test_bench.py"),
    "genre-tagger train --data folders:~/Music/by-genre --arch musicnn_transfer --out runs/mine --split fold:0/5": (
        NOT_HERE, "training takes minutes; tests/test_training.py trains on tiny data"),
    "genre-tagger train --data gtzan:../shared/data/gtzan --arch meza --augment --out runs/meza": (
        NOT_HERE, "training; tests/test_training.py"),
    "genre-tagger evaluate --model runs/mine/mine.onnx --data csv:held-out.csv --split all --out runs/mine/eval": (
        NOT_HERE, "needs the trained model; tests/test_training.py"),
    "genre-tagger tag --model runs/mine/mine.onnx song.flac": (NOT_HERE, "needs the trained model"),
    "genre-tagger compare": (NOT_HERE, "hours of cross-validation; tests/test_training.py runs a tiny comparison"),
    "make default-model": (NOT_HERE, "25 minutes of training and a musicnn download"),
}


def readme_command_lines() -> list[str]:
    """Every command line of the README's sh blocks: continuations joined, comments and blank lines left out."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(re.sub(r"\s+", " ", line))
    return lines


def test_every_readme_command_line_is_walked_or_says_why_not() -> None:
    lines = readme_command_lines()
    assert sorted(set(lines)) == sorted(WALK), (sorted(set(lines) - set(WALK)), sorted(set(WALK) - set(lines)))
    assert lines[2:4] == list(SETUP)


def _shell(home: Path, endpoint: str) -> dict[str, str]:
    """A fresh login-like environment: a new HOME, the system PATH, nothing from this test's process."""
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "GENRE_TAGGER_PUBLISH_ENDPOINT": endpoint}  # a free port: the README's default may be in use here


def _script(line: str, cwd: Path, exec_: bool = False) -> str:
    """The line as typed after the README's setup, in ``cwd`` (``exec``: the shell becomes the command)."""
    return f'cd {REPO} && {" && ".join(SETUP[1:])} && cd {cwd} && {"exec " if exec_ else ""}{line}'


def test_the_readme_command_lines_work_in_a_fresh_shell(tmp_path: Path, format_files: dict[str, Path],
                                                        realworld: Path) -> None:
    from daemon_helpers import free_endpoint, query

    home, work = tmp_path / "home", tmp_path / "work"
    (home / "Music" / "Jazz").mkdir(parents=True)
    (work / "album").mkdir(parents=True)
    song = format_files["flac"]
    for target in (home / "Music" / "song.flac", home / "Music" / "Jazz" / "take.mp3", work / "song.flac",
                   work / "album" / "one.ogg"):
        shutil.copy(format_files[target.suffix[1:]] if target.suffix != ".flac" else song, target)
    (work / "my-names.json").write_text('{"jazz": "Jazz (modal)"}')
    env = _shell(home, free_endpoint())
    library = home / ".local" / "state" / "genre-tagger" / "library.db"
    assert subprocess.run(["bash", "-c", "genre-tagger --version"], env=env, capture_output=True).returncode == 127
    ran = []

    def run(line: str, cwd: Path, code: int) -> None:
        proc = subprocess.run(["bash", "-c", _script(line, cwd)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == code, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, f"{line}\n{proc.stderr}"
        ran.append(line)

    def serve(line: str, cwd: Path, until, then=None) -> str:
        out = tmp_path / f"serve-{len(ran)}.log"
        with open(out, "w") as log:
            proc = subprocess.Popen([*INTERRUPTIBLE, "bash", "-c", _script(line, cwd, exec_=True)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if then is not None:
                time.sleep(1.0)
                then()
            assert wait_until(lambda: until(out.read_text()), 180), f"{line}\n{out.read_text()[-3000:]}"
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(30)
        text = out.read_text()
        # make passes Ctrl-C on to the daemon, which stops cleanly, then dies of the signal itself as it should.
        assert code == (-signal.SIGINT if line.startswith("make ") else 0), f"{line}: exit {code}\n{text[-3000:]}"
        assert "Traceback" not in text, f"{line}\n{text[-3000:]}"
        ran.append(line)
        return text

    for line in ("make install", "genre-tagger models", "genre-tagger models msd-musicnn-gtzan",
                 "genre-tagger models msd-musicnn-gtzan --json", "genre-tagger tag song.flac ~/Music/Jazz",
                 "genre-tagger tag --json --top-k 3 ~/Music > tags.jsonl",
                 "genre-tagger tag --threshold 70% --alias hiphop=Hip-Hop --alias-file my-names.json album/"):
        run(line, REPO if WALK[line][1] == "repo" else work, WALK[line][2])
    assert len((work / "tags.jsonl").read_text().splitlines()) == 2

    n_files = 2
    env["MUSIC"] = str(home / "Music")
    text = serve("make run", REPO, lambda text: text.count("tagged  ") == n_files)
    assert f"scan done: {n_files} files, {n_files} queued, in " in text, text  # what `make run` shows, line by line
    assert "received SIGINT: stopping" in text, text
    for leftover in library.parent.glob("library.db*"):  # the walk below starts from an empty library again
        leftover.unlink()
    serve("genre-tagger daemon --folder ~/Music", work,
          lambda _: query(library, "SELECT count(*) FROM tracks WHERE status = 'tagged'")[0][0] == n_files)
    serve("genre-tagger daemon --config service/genre-tagger.toml", REPO, lambda text: "genre-tagger daemon:" in text)
    shutil.copy(song, work / "demo.flac")
    serve("genre-tagger daemon --live-file demo.flac --loop --http 127.0.0.1:0", work,
          lambda text: "genre-tagger daemon:" in text)

    script = _script("genre-tagger daemon --folder ~/Music", work, True)
    daemon = subprocess.Popen([*INTERRUPTIBLE, "bash", "-c", script], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        text = serve("genre-tagger listen", work, lambda text: "status  up" in text)
        assert f"{n_files} queued" in text or "tagged" in text
        text = serve("genre-tagger listen --topic track --json", work, lambda text: '"topic": "track"' in text,
                     then=lambda: shutil.copy(song, home / "Music" / "new.flac"))
    finally:
        os.killpg(daemon.pid, signal.SIGINT)
        assert daemon.wait(30) == 0

    for line, spec in WALK.items():
        if spec[0] == "run" and line not in ran and line not in SETUP:
            run(line, REPO if spec[1] == "repo" else work, spec[2])
    assert (home / ".config" / "genre-tagger" / "kitchen.key").is_file()
    assert (work / "metal.m3u").read_text().startswith("#EXTM3U")
    assert len((work / "tags.csv").read_text().splitlines()) > 1
    walked = [line for line, spec in WALK.items() if spec[0] != NOT_HERE]
    assert sorted(set(ran)) == sorted(set(walked) - {SETUP[1]})
    print(f"\nwalked {len(walked)} README command lines in a fresh shell; {len(WALK) - len(walked)} say why not")
