"""Several files at once (``tag --jobs``, :mod:`tagger.parallel`): the same results per file as one job,
in the input order, bad files as errors in their place, and a worker that dies is replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA

from tagger.engine import EngineOptions
from tagger.parallel import (
    WorkerPool,
    decode_ahead_for_jobs,
    default_jobs,
    engine_options_for_jobs,
    largest_first,
    tag_files,
)
from tagger.pipeline import Tagger


def _tag_json(*args: str) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "tagger.cli", "tag", "--json", *args], capture_output=True,
                          text=True, timeout=900)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "elapsed_s"}


def test_jobs_give_the_same_results_per_file_in_the_input_order(tmp_path: Path) -> None:
    folder = tmp_path / "music"
    folder.mkdir()
    # Real clips of different lengths and formats, so that files finish out of order, and a bad one.
    sources = sorted((DATA / "fma").glob("*.mp3"))[:4] + sorted((DATA / "gtzan" / "jazz").glob("*.flac"))[:2]
    for i, src in enumerate(sources):
        (folder / f"{i:02d}{src.suffix}").symlink_to(src)
    (folder / "03b.mp3").write_text("not audio at all\n" * 100)
    code1, one, err1 = _tag_json("--jobs", "1", str(folder))
    code3, three, err3 = _tag_json("--jobs", "3", str(folder))
    assert code1 == code3 == 1, (err1, err3)
    assert [r["path"] for r in one] == [r["path"] for r in three] == sorted(str(p) for p in folder.iterdir())
    assert [_without_timing(r) for r in one] == [_without_timing(r) for r in three]  # probabilities bit for bit
    bad = next(r for r in three if r["path"].endswith("03b.mp3"))
    assert not bad["ok"] and "not a readable audio file" in bad["error"]
    assert sum(r["ok"] for r in three) == len(sources)
    assert err3.count("genre-tagger: error:") == 1 and "1 of 7 files failed" in err3


def test_thread_and_job_arithmetic() -> None:
    assert default_jobs(cores=8) == 8 and default_jobs(cores=1) == 1
    # A decoding thread per job only while each job has two cores: jobs that fill the cores decode serially.
    assert decode_ahead_for_jobs(1, cores=2) and decode_ahead_for_jobs(2, cores=4)
    assert not decode_ahead_for_jobs(2, cores=2) and not decode_ahead_for_jobs(3, cores=2)
    assert not decode_ahead_for_jobs(1, cores=1)
    options = EngineOptions()
    assert engine_options_for_jobs(options, 1, cores=2) is options  # one job: the model's own default
    assert engine_options_for_jobs(options, 2, cores=2).intra_op_threads == 1
    assert engine_options_for_jobs(options, 2, cores=16).intra_op_threads == 7
    assert engine_options_for_jobs(EngineOptions(intra_op_threads=3), 4, cores=16).intra_op_threads == 3


def test_files_go_out_largest_first_and_decoding_in_or_beside_the_model_gives_the_same_result(
        tiny_model: Path, realworld: Path, tmp_path: Path) -> None:
    files = sorted(realworld.rglob("*.ogg"))[:2] + sorted((DATA / "fma").glob("*.mp3"))[:2]
    missing = tmp_path / "gone.mp3"
    items = [(0, missing), (1, "https://example.org/a.mp3"), *((i + 2, f) for i, f in enumerate(files))]
    order = largest_first(items)
    sizes = [f.stat().st_size for _, f in order[:4]]
    assert sizes == sorted(sizes, reverse=True) and [i for i, _ in order[4:]] == [0, 1]  # size unknown: last
    tagger = Tagger(tiny_model)
    ahead, serial = (tagger.tag_file(files[0], decode_ahead=flag) for flag in (True, False))
    assert ahead.outputs["genre"].scores == serial.outputs["genre"].scores and ahead.duration_s == serial.duration_s


def test_a_worker_process_that_dies_is_replaced_and_its_file_tried_again(tiny_model: Path, realworld: Path) -> None:
    tagger = Tagger(tiny_model)
    track = realworld / "asc-music" / "frontiers.mp3"
    pool = WorkerPool(tagger, jobs=2)
    try:
        # Keep the local slot busy so that the next file goes to the worker process, then kill the worker.
        local = pool.submit(0, track)
        remote = pool.submit(1, track)
        deadline = time.monotonic() + 300
        while not (remote.running() and pool._executor._processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        processes = list(pool._executor._processes.values())  # the worker, started for this file
        assert len(processes) == 1 and not remote.done()
        os.kill(processes[0].pid, signal.SIGKILL)
        first, second = local.result(timeout=600), remote.result(timeout=600)
    finally:
        pool.close()
    assert first.ok and second.ok, (first.error, second.error)
    assert second.result.outputs["genre"].scores == first.result.outputs["genre"].scores


@pytest.mark.parametrize("jobs", [1, 2])
def test_tag_files_stops_the_workers_when_the_consumer_leaves(tiny_model: Path, realworld: Path, jobs: int) -> None:
    tagger = Tagger(tiny_model)
    files = sorted(realworld.rglob("*.ogg"))
    outcomes = tag_files(tagger, files, jobs)
    first = next(outcomes)
    outcomes.close()  # what a Ctrl-C or a broken pipe does to the generator
    assert first.ok and first.path == files[0]


def test_the_daemon_tags_with_several_jobs_each_file_once_as_tag_does(tmp_path: Path) -> None:
    from daemon_helpers import query, start_daemon, stop_daemon, wait_until

    from tagger.registry import DEFAULT_CPU_MODEL

    music, state = tmp_path / "music", tmp_path / "state"
    music.mkdir()
    sources = sorted((DATA / "fma").glob("*.mp3"))[:5] + sorted((DATA / "gtzan" / "rock").glob("*.flac"))[:2]
    for i, src in enumerate(sources):
        (music / f"{i:02d}{src.suffix}").symlink_to(src)
    (music / "bad.mp3").write_text("not audio at all\n" * 100)
    daemon = start_daemon(state, Path(DEFAULT_CPU_MODEL), "--folder", str(music), "--settle", "0", "--jobs", "3",
                          "--coverage", "excerpts:1x10", endpoint="")
    db = state / "library.db"
    try:
        assert wait_until(lambda: db.exists() and query(
            db, "SELECT count(*) FROM tracks WHERE status IN ('tagged', 'error')")[0][0] == 8, 600)
    finally:
        assert stop_daemon(daemon) == 0
    rows = query(db, "SELECT path, status, tag_count, coverage FROM tracks ORDER BY path")
    assert [(Path(p).name, s, n) for p, s, n, _ in rows] == [
        *((f"{i:02d}{src.suffix}", "tagged", 1) for i, src in enumerate(sources)), ("bad.mp3", "error", 0)]
    assert {c for _, s, _, c in rows if s == "tagged"} == {"excerpts:1x10"}  # 15-30 s clips: one excerpt
    code, tagged, _ = _tag_json("--model", DEFAULT_CPU_MODEL, "--jobs", "1", "--coverage", "excerpts:1x10", str(music))
    assert code == 1
    for record in tagged:
        if not record["ok"]:
            continue
        stored = dict(query(db, "SELECT g.label, g.score FROM genres g JOIN tracks t ON t.id = g.track_id "
                                "WHERE t.path = ? AND g.output = 'genre'", (record["path"],)))
        expected = record["outputs"]["genre"]["scores"]  # the best five, rounded
        assert expected and all(abs(stored[label] - p) < 1e-5 for label, p in expected.items()), record["path"]
