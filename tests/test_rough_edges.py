"""The rough edges a new user met (issue #14), each run as that user ran it: a subprocess, real files."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from daemon_helpers import Subscriber, free_endpoint, query, start_daemon, stop_daemon, wait_started, wait_until

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("genre-tagger: error: "), proc.stderr
    return lines[0]


def test_bad_option_values_name_the_option_and_the_words_typed(tiny_model: Path, tmp_path: Path) -> None:
    line = one_error_line(run_cli("tag", "--threshold", "abc", str(tmp_path)))
    assert "--threshold" in line and "abc" in line and "_fraction" not in line, line
    line = one_error_line(run_cli("tag", "--top-k", "many", str(tmp_path)))
    assert "--top-k" in line and "many" in line and "_positive_int" not in line, line


def test_a_command_group_without_its_command_lists_its_commands() -> None:
    proc = run_cli("library")
    assert proc.returncode == 2 and "library_command" not in proc.stderr
    for command in ("stats", "list", "show", "export-m3u", "export-csv"):
        assert command in proc.stderr


def test_an_alias_for_a_label_the_model_lacks_is_refused(tiny_model: Path, realworld: Path, tmp_path: Path) -> None:
    song = str(realworld / "warzone2100-music" / "menu.opus")
    line = one_error_line(run_cli("tag", "--model", str(tiny_model), "--alias", "nolabel=X", song))
    assert "--alias nolabel=X" in line and "no label 'nolabel'" in line and "low, mid, high" in line, line
    names = tmp_path / "names.json"
    names.write_text('{"mid": "Middle", "treble": "Treble"}')
    line = one_error_line(run_cli("tag", "--model", str(tiny_model), "--alias-file", str(names), song))
    assert f"--alias-file {names}" in line and "no label 'treble'" in line, line


def test_models_name_prints_its_metrics_as_readable_lines() -> None:
    proc = run_cli("models", "msd-musicnn-gtzan")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = lines.index("  metrics:")
    metrics = lines[start + 1:]
    assert len(metrics) > 3 and all(line.startswith("    ") for line in metrics)
    assert max(map(len, lines)) < 400 and any(re.search(r"accuracy:? 0\.\d{3}\b", line) for line in metrics), \
        proc.stdout
    assert "{" not in "".join(metrics)


def _dataset(tmp_path: Path, realworld: Path) -> Path:
    """A labelled CSV of three real tracks, with the tiny model's labels."""
    folder = tmp_path / "clips"
    folder.mkdir()
    rows = ["path,label"]
    for name, label in (("asc-music/frontiers.mp3", "low"), ("warzone2100-music/menu.opus", "mid"),
                        ("asc-music/machine_wars.mp3", "high")):
        shutil.copy(realworld / name, folder / Path(name).name)
        rows.append(f"{Path(name).name},{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_evaluate_without_matplotlib_writes_its_report_and_says_why_no_figure(
        tiny_model: Path, tmp_path: Path, realworld: Path) -> None:
    data = _dataset(tmp_path, realworld)
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--model", str(tiny_model), "--data", f"csv:{data}", "--split", "all", "--out",
                   str(out), env={"PYTHONPATH": f"{blocker.parent}{os.pathsep}{REPO}"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "matplotlib is not installed" in proc.stderr, proc.stderr
    assert json.loads((out / "report.json").read_text())["track"]["confusion"]
    assert not (out / "confusion.png").exists()
    assert "own training data" not in proc.stderr  # the tiny model names no training data


def test_evaluate_on_the_models_own_training_clips_warns(tmp_path: Path, realworld: Path) -> None:
    from models import SpectralCentroidNet, manifest
    from training.export import export_model

    data = _dataset(tmp_path, realworld)
    spec = dataclasses.replace(manifest(name="trained-here"), training_data=f"csv:{data}")
    model = export_model(SpectralCentroidNet(), spec, tmp_path / "trained-here.onnx")
    proc = run_cli("evaluate", "--model", str(model), "--data", f"csv:{data}", "--split", "all")
    assert proc.returncode == 0, proc.stderr
    assert "warning: 3 of 3 tracks are from the model's own training data" in proc.stderr, proc.stderr


def test_library_show_takes_a_relative_path_and_list_says_when_nothing_matches(
        tiny_model: Path, tmp_path: Path, realworld: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", music / "menu.opus")
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--settle", "0.2",
                          endpoint="")  # no ZeroMQ: the default port may be a user's daemon
    db = tmp_path / "state" / "library.db"
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status = 'tagged'")[0][0] == 1, 120)
    finally:
        assert stop_daemon(daemon) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = run_cli("library", "--library", str(db), "show", "../music/menu.opus", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["path"] == str(music / "menu.opus")

    unknown = run_cli("library", "--library", str(db), "list", "--genre", "jazz")
    assert unknown.returncode == 0 and unknown.stdout == ""
    assert unknown.stderr.strip() == ("genre-tagger: no track has the genre 'jazz' (tagged tracks) (genres in the "
                                      "library: bright, busy, calm, dark, high, low, mid)"), unknown.stderr
    known = run_cli("library", "--library", str(db), "list", "--genre", "high", "--min-score", "0.999")
    assert known.returncode == 0 and known.stdout == ""
    assert known.stderr.strip() == "genre-tagger: no track has high at 100 % or more (tagged tracks)", known.stderr


def test_the_example_config_with_no_music_folder_waits_for_it(tiny_model: Path, tmp_path: Path,
                                                             realworld: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "genre-tagger.toml"
    shutil.copy(REPO / "service" / "genre-tagger.toml", config)  # roots = ["~/Music"], which does not exist
    daemon = start_daemon(tmp_path / "state", tiny_model, "--config", str(config), "--settle", "0.2",
                          endpoint="", env={"HOME": str(home)})
    try:
        assert wait_started(daemon), daemon.log_path.read_text()
        assert wait_until(lambda: "does not exist: watching for it" in daemon.log_path.read_text(), 30)
        (home / "Music").mkdir()
        shutil.copy(realworld / "warzone2100-music" / "menu.opus", home / "Music" / "menu.opus")
        db = tmp_path / "state" / "library.db"
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status = 'tagged'")[0][0] == 1, 120), \
            daemon.log_path.read_text()
    finally:
        assert stop_daemon(daemon) == 0
    log = daemon.log_path.read_text()
    assert f"folder {home / 'Music'} appeared" in log and "Traceback" not in log


def test_a_folder_typed_on_the_command_line_must_exist(tiny_model: Path, tmp_path: Path) -> None:
    line = one_error_line(run_cli("daemon", "--model", str(tiny_model), "--state-dir", str(tmp_path / "s"),
                                  "--folder", str(tmp_path / "Muisc")))
    assert f"--folder {tmp_path / 'Muisc'}: no such folder" in line, line


def test_live_without_an_audio_device_says_so_once_and_keeps_trying(tiny_model: Path, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    heartbeats = Subscriber(endpoint, ("status",))
    daemon = start_daemon(tmp_path / "state", tiny_model, "--live", endpoint=endpoint,
                          env={"PULSE_SERVER": "unix:/nonexistent/pulse"})
    try:
        assert wait_started(daemon), daemon.log_path.read_text()
        assert wait_until(lambda: "no audio input device" in daemon.log_path.read_text(), 30), \
            daemon.log_path.read_text()

        def retried(times: int) -> bool:  # the heartbeat counts the attempts after the first
            return any(live.get("restarts", 0) >= times and "no audio input device" in live.get("error", "")
                       for status in heartbeats.of_type("status") for live in status.get("live", {}).values())

        # three more attempts (0.5 + 1 + 2 s pauses), each failed and counted
        assert heartbeats.wait_for(lambda _: retried(4), 60), heartbeats.of_type("status")[-1:]
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        heartbeats.close()
    lines = [line for line in daemon.log_path.read_text().splitlines() if "live input" in line]
    assert len(lines) == 1, lines
    assert "PortAudioError" not in lines[0] and "Traceback" not in daemon.log_path.read_text()
