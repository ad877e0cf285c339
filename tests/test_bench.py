"""``genre-tagger bench`` runs end to end and reports every row (numbers are not judged here: speed
goals live in the benchmark's output, not in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import encode


def test_bench_reports_every_stage_as_a_table_and_json(excerpt, tmp_path: Path) -> None:
    audio, rate = excerpt
    folder = tmp_path / "music"
    folder.mkdir()
    encode(audio[: 8 * rate], rate, folder / "clip.flac", "flac")
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "tagger.cli", "bench", str(folder), "--live-seconds", "6",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["rows"]]
    # On the CPU the default model runs its int8 file; the float32 file gets a row of its own.
    assert report["model"].startswith("msd-musicnn-gtzan-int8 ")
    assert names[:5] == ["decode only (PyAV → mono, model rate)", "decode + front end (log-mel)",
                         "full tagging, fast path (both views, full coverage)",
                         "same, fast path, float32 file (msd-musicnn-gtzan)",
                         "same model, naive (every window through the whole net)"]
    assert names[5].startswith("live, incremental:") and names[7].startswith("live, per window")
    assert names[6] == "live, incremental, + HTTP display with 50 page clients"
    assert names[8].startswith("daemon end to end")
    # `tag --jobs` rows (1, 2 and the default count, without repeats), each file's results as one job's.
    assert names[9] == "tag --jobs 1 (this process)" and names[10].startswith("tag --jobs 2 (this process + 1 worker")
    assert report["jobs"]["2_vs_1"]["speedup"] > 0
    assert report["jobs"]["2_vs_1"]["max_abs_diff"] == {"genre": 0.0, "msd_genres": 0.0}
    assert names[11].endswith("--jobs 1") and names[12].endswith("--jobs 2") and "daemon_2_vs_1" in report["jobs"]
    assert all(r["audio_seconds"] > 0 and r["seconds"] > 0 for r in report["rows"])
    for row in report["rows"][:5]:  # the file rows: each file's fastest of 3 interleaved runs, every round kept
        runs = [float(t) for t in row["extra"]["runs_s"].split()]
        assert len(runs) == 3 and 0 < row["seconds"] <= min(runs) + 0.006
    model_cpu = report["model_cpu_s"]
    assert model_cpu["naive_over_fast"] == pytest.approx(model_cpu["naive"] / model_cpu["fast"])
    assert "the model's CPU time" in done.stdout
    assert report["rows"][5]["extra"]["hops"] > 0 and report["rows"][8]["extra"]["peak_rss_mb"] > 0
    display = report["rows"][6]["extra"]  # every page client stayed connected and got the live updates
    assert display["page_clients"] == 50 and display["live_events_per_client"] >= display["hops"] - 1
    assert display["p99_increase_ms"] == pytest.approx(display["p99_ms"] - report["rows"][5]["extra"]["p99_ms"])
    assert display["http_handoff_p99_us"] > 0  # what the live path spends handing an update to the HTTP sink
    for name in names:
        assert name in done.stdout  # the terminal table


def test_bench_only_jobs_and_only_daemon_report_the_acceptance_numbers(tmp_path: Path) -> None:
    from conftest import DATA

    folders = [tmp_path / "a", tmp_path / "b"]  # several folders: the files of both
    for folder, clips in zip(folders, (sorted((DATA / "fma").glob("*.mp3"))[:2],
                                       sorted((DATA / "gtzan" / "jazz").glob("*.flac"))[:2]), strict=True):
        folder.mkdir()
        for clip in clips:
            (folder / clip.name).symlink_to(clip)
    out = tmp_path / "jobs.json"
    done = subprocess.run([sys.executable, "-m", "tagger.cli", "bench", *map(str, folders), "--only", "jobs",
                           "--jobs", "1,2", "--repeat", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["files"] == 4 and [r["name"] for r in report["rows"]] == [
        "tag --jobs 1 (this process)", "tag --jobs 2 (this process + 1 worker process)"]
    jobs = report["jobs"]["2_vs_1"]
    assert jobs["max_abs_diff"] == {"genre": 0.0, "msd_genres": 0.0} and len(jobs["round_speedups"]) == 2
    assert jobs["speedup"] == pytest.approx(report["rows"][0]["seconds"] / report["rows"][1]["seconds"])
    assert all(c > 0 for c in jobs["cpu_per_file_s"]) and 0 <= jobs["others_cpu_share"] <= 1
    assert "tag --jobs 2 vs --jobs 1:" in done.stdout and "goal ≥ 1.30× with the same results per file:" in done.stdout
    assert "CPU-seconds per file" in done.stdout and "other processes used" in done.stdout

    out = tmp_path / "daemon.json"
    done = subprocess.run([sys.executable, "-m", "tagger.cli", "bench", str(folders[0]), "--only", "daemon",
                           "--jobs", "2", "--live-seconds", "3", "--out", str(out)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["name"].startswith("daemon end to end") and rows[0]["name"].endswith("--jobs 2")
    live = rows[1]["extra"]  # live updates came while the slots tagged the copies, and after
    assert rows[1]["name"] == "daemon --jobs 2: live latency while its slots tag files, then idle"
    assert live["busy_hops"] > 0 and live["idle_hops"] > 0 and live["busy_p50_ms"] > 0 and live["idle_p99_ms"] > 0
    assert live["busy_lag_max_ms"] >= 0 and live["idle_lag_max_ms"] >= 0
