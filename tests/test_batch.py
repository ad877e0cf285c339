"""``genre-tagger batch`` and ``library import``: every file once in the Parquet shards (errors as rows),
resumable, the same genres as ``tag``; locally and on a two-node Ray cluster that loses a node midway."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, FORMATS, encode

from service.batch import done_paths, read_rows, read_source, run_batch, shard_files
from tagger.decode import decode_file
from tagger.engine import EngineOptions

RATE = 22050
CLIP_SECONDS = 6
CLIPS_PER_TRACK = 5


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagger.cli", *args], capture_output=True, text=True, timeout=900)


def _tag_scores(paths: list[str], *options: str) -> dict[str, dict[str, float]]:
    done = _cli("tag", "--json", *options, *paths)
    return {r["path"]: r["outputs"]["genre"]["scores"] for r in map(json.loads, done.stdout.splitlines()) if r["ok"]}


def _library_scores(db: Path, path: str) -> dict[str, float]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT g.label, g.score FROM genres g JOIN tracks t ON t.id = g.track_id "
                                 "WHERE t.path = ? AND g.output = 'genre'", (path,)).fetchall())


def _same_genres(library: dict[str, float], tagged: dict[str, float]) -> bool:
    return bool(tagged) and all(abs(library[label] - p) < 2e-6 for label, p in tagged.items())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, realworld: Path) -> list[Path]:
    """55 real clips (5 of 6 s from each realworld track, FLAC and MP3) and one file that is not audio."""
    folder = tmp_path_factory.mktemp("catalogue")
    out = []
    for i, track in enumerate(sorted(p for p in realworld.rglob("*") if p.suffix in (".mp3", ".ogg", ".opus"))):
        audio = decode_file(track, RATE)
        for k in range(CLIPS_PER_TRACK):
            start = (k + 1) * len(audio) // (CLIPS_PER_TRACK + 2)
            suffix = "flac" if k % 2 else "mp3"
            codec, fmt, options = FORMATS[suffix]
            out.append(encode(np.clip(audio[start:start + CLIP_SECONDS * RATE], -1, 1), RATE,
                              folder / f"t{i:02d}-{k}.{suffix}", codec, fmt, options=options))
    bad = folder / "zz-not-audio.mp3"
    bad.write_text("this is not audio\n" * 200)
    return [*out, bad]


def test_local_batch_is_resumable_and_imports_the_genres_tag_gives(clips: list[Path], tmp_path: Path) -> None:
    subset = clips[:8] + clips[-1:]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,artist\n" + "".join(f"{p},someone\n" for p in subset))
    out = tmp_path / "shards"
    # A first run stops after part of the work (here: a manifest of the first five); the second finishes it.
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in subset[:5]))
    done = _cli("batch", str(first), "--out", str(out), "--jobs", "2", "--shard-rows", "2")
    assert done.returncode == 0, done.stderr
    assert len(shard_files(out)) == 3 and len(done_paths(out)) == 5
    done = _cli("batch", str(manifest), "--out", str(out), "--jobs", "2", "--shard-rows", "2")
    assert done.returncode == 1  # the file that is not audio
    assert "3 tagged, 1 failed, 5 already done of 9" in done.stderr
    rows = list(read_rows(out))
    assert sorted(r["path"] for r in rows) == sorted(map(str, subset))  # each exactly once
    bad = next(r for r in rows if not r["ok"])
    assert bad["path"].endswith("zz-not-audio.mp3") and "not a readable audio file" in bad["error"]
    good = [r for r in rows if r["ok"]]
    assert all(r["coverage"] == "full" and r["model"] and r["fingerprint"] and r["result"] for r in good)
    again = _cli("batch", str(manifest), "--out", str(out))
    assert again.returncode == 0 and "0 tagged, 0 failed, 9 already done of 9" in again.stderr
    assert len(list(read_rows(out))) == 9

    db = tmp_path / "library.db"
    imported = _cli("library", "--library", str(db), "import", str(out))
    assert imported.returncode == 0 and "imported 8 tagged and 1 failed" in imported.stderr
    tagged = _tag_scores([str(p) for p in subset[:-1]])
    for path, scores in tagged.items():
        assert _same_genres(_library_scores(db, path), scores), path
    twice = _cli("library", "--library", str(db), "import", str(out))
    # Twice changes nothing: the failed row, with the same error, is known too (it was imported again).
    assert "imported 0 tagged and 0 failed tracks" in twice.stderr and "(9 already in the library)" in twice.stderr
    listed = _cli("library", "--library", str(db), "list", "--status", "error")
    assert "zz-not-audio.mp3" in listed.stdout and "not a readable audio file" in listed.stdout


def test_manifests_and_their_errors(tmp_path: Path) -> None:
    fma = sorted((DATA / "fma").glob("*.mp3"))[:3]
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in fma) + "\n" + str(fma[0]) + "\n")
    assert read_source(tmp_path / "list.txt") == [str(p) for p in fma]  # in order, without repeats
    (tmp_path / "rel.csv").write_text("path\n" + "\n".join(f"../{p.name}" for p in fma))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rel.csv").write_text((tmp_path / "rel.csv").read_text())
    assert read_source(tmp_path / "sub" / "rel.csv") == [str(tmp_path / p.name) for p in fma]  # beside the manifest
    for name, text, message in [("bad.jsonl", "{not json\n", "bad.jsonl:1: not JSON"),
                                ("bad.json", "[]", "a manifest is .csv, .jsonl, .parquet or .txt")]:
        (tmp_path / name).write_text(text)
        done = _cli("batch", str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    missing = _cli("batch", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "no such folder or manifest" in missing.stderr


@pytest.fixture
def http_server(tmp_path: Path):
    """A real HTTP server on a free loopback port serving a folder of real audio files; yields (url, folder)."""
    import functools
    import http.server

    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # no request lines in the test output
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _closed_port() -> int:
    """A loopback port nothing listens on (the OS's free port, released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_manifest_of_urls_is_tagged_like_the_files_and_bad_urls_become_error_rows(http_server, tmp_path: Path
                                                                                   ) -> None:
    import shutil

    base, folder = http_server
    sources = sorted((DATA / "fma").glob("*.mp3"))[:3] + sorted((DATA / "gtzan" / "jazz").glob("*.flac"))[:1]
    for src in sources:
        shutil.copy(src, folder / src.name)
    urls = [f"{base}/{src.name}" for src in sources]
    missing, refused = f"{base}/missing.mp3", f"http://127.0.0.1:{_closed_port()}/a.mp3"
    local = sorted((DATA / "fma").glob("*.mp3"))[3]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([*urls, missing, refused, str(local)]) + "\n")
    assert read_source(manifest) == [*urls, missing, refused, str(local)]  # URLs kept as they are
    out = tmp_path / "shards"
    done = _cli("batch", str(manifest), "--out", str(out), "--jobs", "2")
    assert done.returncode == 1 and "5 tagged, 2 failed, 0 already done of 7" in done.stderr, done.stderr
    rows = {r["path"]: r for r in read_rows(out)}
    assert sorted(rows) == sorted([*urls, missing, refused, str(local)])
    assert rows[missing]["error"] == f"{missing}: cannot read the URL (Server returned 404 Not Found)"
    assert rows[refused]["error"] == f"{refused}: cannot read the URL (Connection refused)"
    # Read over HTTP, the same probabilities as the same files read from the disk.
    by_file = _tag_scores([str(folder / src.name) for src in sources])
    for url, src in zip(urls, sources, strict=True):
        assert rows[url]["ok"] and rows[url]["fingerprint"] is None  # no local file to fingerprint
        batch_scores = json.loads(rows[url]["result"])["outputs"]["genre"]["scores"]  # every label
        assert _same_genres(batch_scores, by_file[str(folder / src.name)])
    again = _cli("batch", str(manifest), "--out", str(out))
    assert again.returncode == 0 and "0 tagged, 0 failed, 7 already done of 7" in again.stderr
    db = tmp_path / "library.db"
    for _ in range(2):  # the URL rows (no fingerprint) are imported once, then known; so are the failed ones
        imported = _cli("library", "--library", str(db), "import", str(out))
    assert imported.returncode == 0 and "imported 0 tagged and 0 failed" in imported.stderr, imported.stderr
    assert "(7 already in the library)" in imported.stderr, imported.stderr
    assert _same_genres(_library_scores(db, urls[1]), by_file[str(folder / sources[1].name)])
    # `tag` takes a URL as well; a bad one is one error line naming it, and the rest goes on.
    tagged = _cli("tag", "--json", urls[0], refused)
    assert tagged.returncode == 1 and f"genre-tagger: error: {refused}: cannot read the URL (Connection refused)" \
        in tagged.stderr
    first = json.loads(tagged.stdout.splitlines()[0])
    assert first["path"] == urls[0] and first["outputs"]["genre"]["scores"] == by_file[str(folder / sources[0].name)]


def test_url_timeouts_and_what_is_not_audio_are_one_line_errors_naming_the_url(http_server, monkeypatch) -> None:
    import socket

    from tagger import decode
    from tagger.errors import DecodeError

    base, folder = http_server
    (folder / "page.mp3").write_text("<html><body>not audio</body></html>\n" * 50)
    with pytest.raises(DecodeError, match=r"/page\.mp3: not a readable audio file \("):
        list(decode.decode_blocks(f"{base}/page.mp3", 16000))
    with pytest.raises(DecodeError, match=r"^nope://x/a\.mp3: FFmpeg cannot open nope:// URLs"):
        list(decode.decode_blocks("nope://x/a.mp3", 16000))
    with pytest.raises(DecodeError, match=r"^https://me:\*\*\*@127\.0\.0\.1:\d+/a\.mp3: cannot read the URL"):
        list(decode.decode_blocks(f"https://me:secret@127.0.0.1:{_closed_port()}/a.mp3", 16000))
    monkeypatch.setattr(decode, "URL_TIMEOUT_S", 1.0)
    # A server that takes the connection and never answers, and one that stops sending halfway.
    data = (DATA / "fma" / "000002.mp3").read_bytes()
    with socket.socket() as silent, socket.socket() as stalling:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        stalling.bind(("127.0.0.1", 0))
        stalling.listen(4)
        release = threading.Event()

        def stall() -> None:
            connection, _ = stalling.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: %d\r\n\r\n"
                                   % len(data) + data[: len(data) // 3])
                release.wait(60)

        server = threading.Thread(target=stall, daemon=True)
        server.start()
        try:
            url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.mp3"
            timeout = r"no answer from the server within 1 s \(network timeout\)"
            with pytest.raises(DecodeError, match=timeout + "$") as silent_error:
                list(decode.decode_blocks(url, 16000))
            assert str(silent_error.value).startswith(url)
            with pytest.raises(DecodeError, match=timeout + r" at \d+\.\d s$"):  # where the transfer stopped
                list(decode.decode_blocks(f"http://127.0.0.1:{stalling.getsockname()[1]}/a.mp3", 16000))
        finally:
            release.set()
            server.join(10)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of two nodes with fixed CPUs (the head and one worker node), shared by the session."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 200 * 1024 * 1024, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ray_batch_survives_a_lost_node_and_writes_every_file_once(ray_cluster, clips: list[Path],
                                                                  tmp_path: Path) -> None:
    import ray

    worker = ray_cluster.add_node(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    ray_cluster.wait_for_nodes()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    manifest = tmp_path / "catalogue.txt"
    manifest.write_text("".join(f"{p}\n" for p in clips))
    out = tmp_path / "shards"
    arguments = {"model": None, "engine_options": EngineOptions(device="cpu"), "coverage": "full"}
    summary: dict = {}

    def run() -> None:
        summary["first"] = run_batch(manifest, out, arguments, jobs=1, ray_address=ray_cluster.address,
                                     shard_rows=4, ray_options={"actors": 1})

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 600
    while len(shard_files(out)) < 2 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner.is_alive(), "the batch finished before the node could be killed: give it more files"
    ray_cluster.remove_node(worker)  # midway: its tasks, actors and objects are lost
    runner.join(900)
    assert not runner.is_alive() and "first" in summary
    rows = list(read_rows(out))
    counts = collections.Counter(r["path"] for r in rows)
    assert set(counts) == {str(p) for p in clips} and set(counts.values()) == {1}  # every file exactly once
    errors = [r for r in rows if not r["ok"]]
    assert [Path(r["path"]).name for r in errors] == ["zz-not-audio.mp3"] and errors[0]["error"]
    assert summary["first"].tagged == len(clips) - 1 and summary["first"].errors == 1

    again = run_batch(manifest, out, arguments, jobs=1, ray_address=ray_cluster.address)
    assert (again.tagged, again.errors, again.skipped) == (0, 0, len(clips))  # a re-run skips them all

    db = tmp_path / "library.db"
    assert _cli("library", "--library", str(db), "import", str(out)).returncode == 0
    sample = [str(p) for p in clips[:-1:6]]
    tagged = _tag_scores(sample, "--device", "cpu")
    assert len(tagged) == len(sample)
    for path, scores in tagged.items():
        assert _same_genres(_library_scores(db, path), scores), path
