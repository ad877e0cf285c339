"""`genre-tagger tag` and `genre-tagger models`, run as a user runs them (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_tag_prints_a_bar_chart_per_file(tiny_model: Path, format_files: dict[str, Path]) -> None:
    proc = run_cli("tag", "--model", str(tiny_model), "--top-k", "2", *map(str, format_files.values()))
    assert proc.returncode == 0, proc.stderr
    for path in format_files.values():
        assert str(path) in proc.stdout
    assert proc.stdout.count("Genre  →") == len(format_files)
    assert "█" in proc.stdout and "%" in proc.stdout
    assert proc.stderr == ""


def test_tag_a_folder_as_json_lines(tiny_model: Path, realworld: Path) -> None:
    proc = run_cli("tag", "--model", str(tiny_model), "--json", "--top-k", "3", str(realworld))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 11
    assert {Path(r["path"]).suffix for r in lines} == {".mp3", ".ogg", ".opus"}
    for r in lines:
        assert r["ok"] and r["duration_s"] > 100
        assert len(r["outputs"]["genre"]["scores"]) == 3
        assert r["outputs"]["genre"]["top"] in ("low", "mid", "high")


def test_bad_files_each_give_one_error_line_and_the_rest_are_tagged(tiny_model: Path, tmp_path: Path,
                                                                    realworld: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "readme.mp3").write_text("a text file renamed .mp3\n" * 40)
    (folder / "zero.flac").write_bytes(b"")
    data = (realworld / "asc-music" / "time_to_strike.mp3").read_bytes()
    (folder / "truncated.mp3").write_bytes(data[: len(data) // 2])
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", folder / "good.opus")
    proc = run_cli("tag", "--model", str(tiny_model), "--json", str(folder), str(tmp_path / "missing.mp3"))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("genre-tagger: error:")]
    assert len(errors) == 4, proc.stderr
    for name, reason in [("readme.mp3", "not a readable audio file"), ("zero.flac", "empty file"),
                         ("truncated.mp3", "truncated"), ("missing.mp3", "no such file")]:
        assert any(name in e and reason in e for e in errors), (name, errors)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["path"]).name for r in results if r["ok"]] == ["good.opus"]
    assert sum(not r["ok"] for r in results) == 4
    assert "4 of 5 files failed" in proc.stderr


def test_threshold_alias_and_progress_options(tiny_model: Path, realworld: Path) -> None:
    path = str(realworld / "warzone2100-music" / "menu.opus")
    proc = run_cli("tag", "--model", str(tiny_model), "--json", "--threshold", "99%", "--alias", "low=Bass-heavy",
                   "--progress", path)
    assert proc.returncode == 0, proc.stderr
    genre = json.loads(proc.stdout)["outputs"]["genre"]
    assert genre["uncertain"] and genre["threshold"] == 0.99
    assert "Bass-heavy" in genre["scores"] and "low" not in genre["scores"]
    assert "file/s" in proc.stderr or "it/s" in proc.stderr or "1/1" in proc.stderr


def test_usage_and_model_errors_exit_2(tmp_path: Path, realworld: Path) -> None:
    missing = run_cli("tag", "--model", str(tmp_path / "none.onnx"), str(realworld))
    assert missing.returncode == 2 and "no such model file" in missing.stderr
    bad_threshold = run_cli("tag", "--threshold", "150", str(realworld))
    assert bad_threshold.returncode == 2


def test_models_lists_and_inspects(tiny_model: Path) -> None:
    env = {"GENRE_TAGGER_MODELS": str(tiny_model.parent)}
    listing = run_cli("models", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "tiny-test" in listing.stdout and "genre: 3 softmax" in listing.stdout
    shown = run_cli("models", "tiny-test", env=env)
    assert "view 2.56s: 160 frames (2.56 s), hop 80 (1.28 s)" in shown.stdout
    assert "16000 Hz" in shown.stdout
    as_json = json.loads(run_cli("models", "tiny-test", "--json", env=env).stdout)
    assert as_json["outputs"][0]["labels"] == ["low", "mid", "high"]


@pytest.mark.parametrize("argv", [["--version"], ["tag", "--help"]])
def test_help_and_version(argv: list[str]) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 0 and proc.stdout
