"""``genre-tagger bench``: where the time goes, side by side on the same files, in one run.

Rows: decode only (the floor), decode + front end, full tagging (fast path: frame features once per
track), the same model run naively (every window through the whole network), live per-hop latency on a
stream played in real time (also with the HTTP display sink serving 50 page clients: its p99 increase
over the plain row, and the time the live path spends handing each update to that sink), and the daemon
end to end (files per second into SQLite, peak RSS).
Throughput is × real time for one process; the machine's core count is reported beside it. The file
rows run ``repeat`` times, interleaved file by file, and add up each file's fastest run (every round's
total is kept).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.cli import DEFAULT_BENCH_FOLDER
from service.events import LiveUpdate
from service.sinks import Sink, SinkContext, SinkHub, SinkSettings
from tagger.cli import iter_audio_files
from tagger.decode import decode_blocks, decode_file
from tagger.engine import EngineOptions, usable_cores
from tagger.errors import TaggerError
from tagger.frontend import StreamingFrontEnd
from tagger.pipeline import Tagger
from tagger.registry import resolve_model


@dataclass
class Row:
    name: str
    seconds: float
    audio_seconds: float
    files: int
    extra: dict = field(default_factory=dict)

    @property
    def realtime(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds > 0 else float("inf")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_decode(files: list[Path], rate: int) -> Row:
    total = 0

    def run() -> None:
        nonlocal total
        for f in files:
            total += sum(b.size for b in decode_blocks(f, rate))

    seconds = _timed(run)
    return Row("decode only (PyAV → mono, model rate)", seconds, total / rate, len(files))


def bench_front_end(files: list[Path], tagger: Tagger) -> Row:
    config = next(iter(tagger.manifest.front_ends.values()))
    total = 0

    def run() -> None:
        nonlocal total
        for f in files:
            front_end = StreamingFrontEnd(config)
            for block in decode_blocks(f, tagger.sample_rate, tagger.block_seconds):
                front_end.push(block)
                total += block.size
            front_end.flush()

    seconds = _timed(run)
    return Row("decode + front end (log-mel)", seconds, total / tagger.sample_rate, len(files))


def bench_tagging(files: list[Path], tagger: Tagger, name: str) -> tuple[Row, dict[str, dict[str, np.ndarray]]]:
    results = {}
    total = 0.0

    def run() -> None:
        nonlocal total
        for f in files:
            r = tagger.tag_file(f)
            total += r.duration_s
            results[str(f)] = _scores(r)

    seconds = _timed(run)
    return Row(name, seconds, total, len(files)), results


class _LatencyProbe(Sink):
    """An inline sink placed after the others: block arrival → every sink handed the update, ms."""

    name = "bench-probe"
    inline = True

    def __init__(self) -> None:
        super().__init__(SinkSettings(), SinkContext(None))  # type: ignore[arg-type]
        self.arrival = 0.0
        self.latencies: list[float] = []

    def live(self, event: LiveUpdate) -> None:
        self.latencies.append(1000 * (time.perf_counter() - self.arrival))


def bench_live(file: Path, tagger: Tagger, seconds: float, block_seconds: float = 0.05, page_clients: int = 0) -> Row:
    """Play ``seconds`` of ``file`` in real time through the live path (the daemon's live defaults,
    ``[live]`` in the config); latency per published hop.

    The live path reports to a :class:`service.sinks.SinkHub` with the ZeroMQ sink, as in the daemon.
    With ``page_clients``, the HTTP display sink is there too, with that many page clients reading its
    feed from another process (as browsers would). With a fast-path tagger the live path is incremental
    (each block computes its new frames' features); otherwise every completed window runs through the
    whole network."""
    from service.config import LiveSection
    from service.live import LiveTagger
    from service.sinks.zmq import PublishSection, ZmqSink

    audio = decode_file(file, tagger.sample_rate)[: int(seconds * tagger.sample_rate)]
    extra: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        probe = _LatencyProbe()
        before_http = _LatencyProbe()  # just before the HTTP sink: probe − this = what handing it over costs
        context = SinkContext(None, {o.name: tuple(o.labels) for o in tagger.manifest.outputs},  # type: ignore
                              f"{tagger.manifest.name} {tagger.manifest.version}")
        sinks: list[Sink] = [ZmqSink(PublishSection(endpoint=f"ipc://{tmp}/bench"), context)]
        http = None
        if page_clients:
            from service.sinks.http import HttpSection, HttpSink

            http = HttpSink(HttpSection(enabled=True, listen="127.0.0.1:0"), context)
            sinks.append(http)
        hub = SinkHub([*sinks[:1], before_http, *sinks[1:], probe])
        hub.start()
        clients = None
        try:
            if http is not None:
                clients = subprocess.Popen([sys.executable, "-c", "from service.bench import page_clients; "
                                            f"page_clients({http.url + 'events'!r}, {page_clients})"],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                deadline = time.monotonic() + 60
                while http.clients < page_clients and time.monotonic() < deadline and clients.poll() is None:
                    time.sleep(0.05)
                if http.clients < page_clients:
                    raise RuntimeError(f"only {http.clients} of {page_clients} page clients connected: "
                                       f"{clients.stderr.read()[-500:] if clients.poll() is not None else ''}")
            live = LiveTagger(tagger, "bench", tagger.sample_rate, LiveSection().change_settings(), hub)
            block = int(block_seconds * tagger.sample_rate)
            started = time.perf_counter()
            for i, pos in enumerate(range(0, audio.size, block)):
                due = started + i * block_seconds
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                probe.arrival = before_http.arrival = time.perf_counter()
                live.feed(audio[pos:pos + block])
            elapsed = time.perf_counter() - started
            if http is not None:
                extra["page_clients"] = http.clients
                extra["client_drops"] = http.dropped
                handoff = 1000 * (np.array(probe.latencies) - np.array(before_http.latencies))  # µs
                extra["http_handoff_p99_us"] = float(np.percentile(handoff, 99)) if handoff.size else 0.0
        finally:
            if clients is not None:
                clients.terminate()
                out, _ = clients.communicate(timeout=30)
                received = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
                extra["live_events_per_client"] = received.get("min_live_events", 0)
            hub.close(time.monotonic() + 2.0)
    latencies = probe.latencies
    lat = np.array(latencies) if latencies else np.zeros(1)
    extra = {"hops": len(latencies), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
             "max_ms": float(lat.max()), "block_s": block_seconds, **extra}
    mode = "incremental" if tagger.fast else "per window"
    name = f"live, {mode}: block arrival → message published"
    if page_clients:
        name = f"live, {mode}, + HTTP display with {page_clients} page clients"
    return Row(name, elapsed, audio.size / tagger.sample_rate, 1, extra)


def page_clients(url: str, n: int) -> None:
    """Hold ``n`` Server-Sent Events clients on ``url`` until SIGTERM; print the fewest live events any
    of them received, as JSON (run in its own process by :func:`bench_live`, as browsers would be)."""
    import asyncio
    import signal

    import aiohttp

    counts = [0] * n

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        async with session.get(url) as response:
            async for line in response.content:
                if line.startswith(b"event: live"):
                    counts[i] += 1

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            tasks = [asyncio.create_task(client(i, session)) for i in range(n)]
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        print(json.dumps({"min_live_events": min(counts), "max_live_events": max(counts)}), flush=True)

    asyncio.run(main())


def bench_daemon(files: list[Path], model: str | None, jobs: int | None = None) -> Row:
    """Start the daemon on a folder of copies; time until every file is in SQLite; its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music"
        music.mkdir()
        for i, f in enumerate(files):
            shutil.copy(f, music / f"{i:03d}{f.suffix}")
        state = Path(tmp) / "state"
        cmd = [sys.executable, "-m", "tagger.cli", "daemon", "--folder", str(music), "--state-dir", str(state),
               "--endpoint", "", "--settle", "0", *(["--model", model] if model else []),
               *(["--jobs", str(jobs)] if jobs else [])]
        cpu = _children_cpu_s()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        db = state / "library.db"
        done = 0
        peak_kb = 0
        try:
            while done < len(files):
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)
                peak_kb = max(peak_kb, _hwm_kb(proc.pid))
                if db.exists():
                    try:
                        with sqlite3.connect(db, timeout=1) as conn:
                            done = conn.execute("SELECT count(*) FROM tracks WHERE status IN ('tagged', 'error')"
                                                ).fetchone()[0]
                            audio = conn.execute("SELECT coalesce(sum(duration_s), 0) FROM tracks").fetchone()[0]
                    except sqlite3.OperationalError:
                        continue
            elapsed = time.perf_counter() - started
            peak_kb = max(peak_kb, _hwm_kb(proc.pid))
        finally:
            proc.terminate()
            proc.wait(10)
    name = "daemon end to end (start → all files in SQLite)" + (f", --jobs {jobs}" if jobs else "")
    # CPU of the daemon and its decoding children, start and stop included (counted once they are reaped).
    return Row(name, elapsed, audio, len(files),
               {"files_per_s": len(files) / elapsed, "peak_rss_mb": peak_kb / 1024,
                "cpu_s": _children_cpu_s() - cpu})


def bench_daemon_live(files: list[Path], model: str | None, jobs: int, live_seconds: float,
                      idle_seconds: float = 10.0) -> Row:
    """Live latency in the daemon while its ``jobs`` tagging slots are busy, and once they are idle.

    The daemon plays ``files[0]`` in real time as a live source (``--live-file --loop``; each update is
    published on ZeroMQ with its ``latency_ms``: block arrival to published) while it tags copies of
    ``files`` in a watched folder, added as it goes so that files are always waiting, for ``live_seconds``
    from the first live update after its first tagged file; then ``idle_seconds`` more of live updates
    once every file is tagged give the idle latency of the same daemon. Updates before the first tagged
    file (start-up) are left out. Beside ``latency_ms``, ``*_lag_max_ms`` is how far an update trailed
    real time beyond the least-late update (a live thread starved of CPU feeds its blocks late, which
    ``latency_ms`` does not count)."""
    import zmq

    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music"
        music.mkdir()
        copied = 0

        def add_copies() -> None:
            nonlocal copied
            for f in files:
                shutil.copy(f, music / f"{copied:05d}{f.suffix}")
                copied += 1

        add_copies()
        state, endpoint = Path(tmp) / "state", f"ipc://{tmp}/publish"
        cmd = [sys.executable, "-m", "tagger.cli", "daemon", "--folder", str(music), "--state-dir", str(state),
               "--endpoint", endpoint, "--settle", "0", "--live-file", str(files[0]), "--loop", "--jobs", str(jobs),
               *(["--model", model] if model else [])]
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"live.")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(endpoint)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        db = state / "library.db"
        busy: list[float] = []
        idle: list[float] = []
        behind: list[tuple[bool, float]] = []  # (slots busy, receive time − audio seconds played)
        started = time.perf_counter()
        first_done: float | None = None  # the slots are tagging from then on
        busy_from: float | None = None  # the first live update after that: live_seconds are counted from it
        all_done: float | None = None
        checked, done, audio = 0.0, 0, 0.0
        try:
            while all_done is None or time.perf_counter() - all_done < idle_seconds:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {proc.stderr.read().decode()[-500:]}")  # type: ignore
                if time.perf_counter() - started > 600 + live_seconds:
                    raise RuntimeError(f"daemon --jobs {jobs}: {copied} files not tagged within 10 minutes")
                if sub.poll(50):
                    message = json.loads(sub.recv_multipart()[-1])
                    if message.get("type") == "live" and message.get("latency_ms") is not None and first_done:
                        (busy if all_done is None else idle).append(float(message["latency_ms"]))
                        busy_from = busy_from or time.perf_counter()
                        # How far the update trails real time: a starved live thread feeds its blocks late,
                        # which latency_ms (from a block's arrival) does not show.
                        behind.append((all_done is None, time.perf_counter() - float(message["stream_s"])))
                if all_done is None and time.perf_counter() - checked > 0.25 and db.exists():
                    checked = time.perf_counter()
                    try:
                        with sqlite3.connect(db, timeout=1) as conn:
                            done, audio = conn.execute(
                                "SELECT count(*), coalesce(sum(duration_s), 0) FROM tracks "
                                "WHERE status IN ('tagged', 'error')").fetchone()
                    except sqlite3.OperationalError:
                        continue
                    if done and first_done is None:
                        first_done = checked
                    feeding = busy_from is None or checked - busy_from < live_seconds
                    if feeding and copied - done < max(8, 4 * jobs):
                        add_copies()
                    elif not feeding and done >= copied:
                        all_done = checked
            elapsed = all_done - started  # type: ignore[operator]
        finally:
            sub.close()
            proc.terminate()
            proc.wait(30)

    def stats(name: str, values: list[float]) -> dict:
        v = np.array(values) if values else np.zeros(1)
        return {f"{name}_hops": len(values), f"{name}_p50_ms": float(np.percentile(v, 50)),
                f"{name}_p99_ms": float(np.percentile(v, 99)), f"{name}_max_ms": float(v.max())}

    # Lag behind real time, relative to the update that trailed it least (the source's own start offset).
    least = min((t for _, t in behind), default=0.0)
    lag = {f"{name}_lag_max_ms": 1000 * max((t - least for b, t in behind if b == flag), default=0.0)
           for name, flag in (("busy", True), ("idle", False))}
    return Row(f"daemon --jobs {jobs}: live latency while its slots tag files, then idle", elapsed, audio, copied,
               {**stats("busy", busy), **stats("idle", idle), **lag, "files_per_s": copied / elapsed})


# The speed-up issue #18 asks of `tag --jobs N` over one job on a 2-core machine (docs/scaling.md).
JOBS_GOAL = 1.3


def bench_jobs(files: list[Path], model: str | None, device: str, job_counts: list[int], repeat: int
               ) -> tuple[list[Row], dict]:
    """``tag`` over all ``files`` with each job count in ``job_counts``, ``repeat`` rounds interleaved
    (1 job, 2 jobs, … then again), each count's fastest round kept; its results compared file by file
    with the first count's (the same numbers are expected: each file runs the same sessions).

    A round is :func:`tagger.parallel.tag_files` on a tagger whose model is loaded, as ``tag`` runs once it
    has started: worker processes start (and load their model) inside the round. CPU time counts every
    thread of this process and of the workers; CPU-seconds per file barely move with the machine's load,
    unlike the wall times, and the load average is kept beside them."""
    from tagger.parallel import engine_options_for_jobs, tag_files

    taggers = {n: Tagger(model, engine_options=engine_options_for_jobs(EngineOptions(device=device), n))
               for n in job_counts}
    for tagger in taggers.values():
        tagger.prepare()
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in job_counts}
    results: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    audio = 0.0
    machine, ours, began = _machine_cpu_s(), _cpu_with_children(), time.perf_counter()
    for _ in range(max(1, repeat)):
        for n in job_counts:
            cpu, started = _cpu_with_children(), time.perf_counter()
            outcomes = list(tag_files(taggers[n], files, n))  # the worker processes are reaped when it ends
            runs[n].append((time.perf_counter() - started, _cpu_with_children() - cpu))
            results[n] = {str(o.path): _scores(o.result) for o in outcomes if o.result is not None}
            audio = sum(o.result.duration_s for o in outcomes if o.result is not None)
    # What the rest of the machine ran meanwhile: its CPU time beyond ours, as a share of every core.
    others = _machine_cpu_s() - machine - (_cpu_with_children() - ours)
    others_share = max(0.0, others) / ((os.cpu_count() or 1) * (time.perf_counter() - began)) if machine else None
    rows = []
    for n in job_counts:
        wall, cpu = min(runs[n])
        threads = taggers[n].engine.options.intra_op_threads or "auto"
        where = f"this process + {n - 1} worker process{'es' if n > 2 else ''}" if n > 1 else "this process"
        rows.append(Row(f"tag --jobs {n} ({where})", wall, audio, len(files),
                        {"cpu_s": cpu, "cpu_per_wall": cpu / wall, "cpu_per_file_s": cpu / len(files),
                         "intra_op_threads": threads, "runs_s": " ".join(f"{w:.2f}" for w, _ in runs[n]),
                         "runs_cpu_s": " ".join(f"{c:.2f}" for _, c in runs[n])}))
    base = job_counts[0]
    comparison = {}
    for n, row in zip(job_counts[1:], rows[1:], strict=True):
        rounds = [one[0] / many[0] for one, many in zip(runs[base], runs[n], strict=True)]
        comparison[f"{n}_vs_{base}"] = {
            "speedup": rows[0].seconds / row.seconds, "round_speedups": rounds,
            "cpu_per_file_s": [rows[0].extra["cpu_per_file_s"], row.extra["cpu_per_file_s"]],
            "files": len(files), "others_cpu_share": others_share, "goal": JOBS_GOAL,
            **compare(results[n], results[base])}
    return rows, comparison


def _machine_cpu_s() -> float:
    """CPU-seconds every process of the machine has run since it started (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended and been waited for (every thread)."""
    t = os.times()
    return t.children_user + t.children_system


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its children that have ended (every thread)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _scores(result) -> dict[str, np.ndarray]:
    return {k: np.array([s.score for s in sorted(v.scores, key=lambda s: s.label)]) for k, v in result.outputs.items()}


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def compare(fast: dict, naive: dict) -> dict:
    """Largest |fast - naive| track-level probability per output, and how often the top label agrees."""
    diffs: dict[str, float] = {}
    agree: dict[str, int] = {}
    for path, outputs in fast.items():
        for name, probs in outputs.items():
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(probs - naive[path][name]).max()))
            agree[name] = agree.get(name, 0) + int(probs.argmax() == naive[path][name].argmax())
    return {"max_abs_diff": diffs, "top_label_agreement": {k: f"{v}/{len(fast)}" for k, v in agree.items()}}


def best_of(jobs: list[Callable[[list[Path]], tuple[Row, dict]]], files: list[Path], repeat: int
            ) -> list[tuple[Row, dict]]:
    """Run every job on every file ``repeat`` times, interleaved file by file (each job on the first
    file, then each on the second…), so that a slow spell of a shared machine hits every row alike.
    A row's time is the sum over files of each file's fastest run; ``extra['runs_s']`` holds each
    round's total and ``extra['cpu_s']`` the process's CPU time (every thread, seconds) in the runs kept."""
    from tqdm import tqdm

    rounds = max(1, repeat)
    runs: list[list[list[tuple[float, float, Row, dict]]]] = [[[] for _ in files] for _ in jobs]
    with tqdm(total=rounds * len(files), unit="file", disable=not sys.stderr.isatty(), file=sys.stderr,
              dynamic_ncols=True, leave=False) as progress:
        for _ in range(rounds):
            for i, path in enumerate(files):
                for j, job in enumerate(jobs):
                    cpu = time.process_time()
                    row, results = job([path])
                    runs[j][i].append((row.seconds, time.process_time() - cpu, row, results))
                progress.update(1)
    out = []
    for per_file in runs:
        kept = [min(file_runs, key=lambda run: run[0]) for file_runs in per_file]
        first = kept[0][2]
        row = Row(first.name, sum(k[0] for k in kept), sum(k[2].audio_seconds for k in kept), len(files),
                  dict(first.extra))
        row.extra["cpu_s"] = sum(k[1] for k in kept)
        row.extra["runs_s"] = " ".join(f"{sum(f[r][0] for f in per_file):.2f}" for r in range(rounds))
        results: dict = {}
        for k in kept:
            results.update(k[3])
        out.append((row, results))
    return out


def _say(stage: str) -> None:
    """What the bench runs now, on stderr: a full run takes minutes."""
    print(f"genre-tagger bench: {stage}…", file=sys.stderr, flush=True)


def readable_files(folders: list[str]) -> list[Path]:
    """The audio files under ``folders`` that open as audio; each one that does not is left out with a
    warning line on stderr (one broken file must not cost the whole run). A missing folder is an error."""
    from tagger.decode import probe

    for folder in folders:
        if not Path(folder).exists():
            raise TaggerError(f"{folder}: no such folder or file" + (
                " (the default folder is relative to the repository: run from there, or name a folder)"
                if folder == DEFAULT_BENCH_FOLDER else ""))
    files = []
    for path in iter_audio_files(folders):
        try:
            probe(path)
        except TaggerError as exc:
            print(f"genre-tagger: warning: {exc}: left out of the bench", file=sys.stderr)
            continue
        files.append(path)
    return files


def run_bench(folder: str | list[str], model: str | None, device: str, live_seconds: float, out: Path | None,
              skip_daemon: bool = False, repeat: int = 3, job_counts: list[int] | None = None,
              page_clients: int = 50, only: str | None = None) -> dict:
    """Every row on the audio files of ``folder`` (one folder or several), or only some: ``only="jobs"``
    runs the `tag --jobs` rows alone, ``only="daemon"`` the daemon rows alone (end to end per job count,
    and live latency while the daemon's slots tag files). Writes the JSON report to ``out``."""
    folders = [folder] if isinstance(folder, str) else list(folder)
    files = readable_files(folders)
    if not files:
        raise TaggerError(f"{', '.join(folders)}: no audio files there")
    if only is not None:
        return _run_only(only, files, folders, model, device, live_seconds, out, repeat, job_counts or [1])
    folder = ", ".join(folders)
    options = EngineOptions(device=device)
    fast = Tagger(model, engine_options=options, fast=True)
    naive = Tagger(model, engine_options=options, fast=False)
    jobs: list[Callable[[list[Path]], tuple[Row, dict]]] = [
        lambda fs: (bench_decode(fs, fast.sample_rate), {}),
        lambda fs: (bench_front_end(fs, fast), {})]
    fast_job = len(jobs)
    if fast.fast:
        jobs.append(lambda fs: bench_tagging(fs, fast, "full tagging, fast path (both views, full coverage)"))
        if fast.engine.path != resolve_model(model):  # the CPU ran the default model's int8 file
            float32 = Tagger(resolve_model(model), engine_options=options, fast=True)
            jobs.append(lambda fs: bench_tagging(fs, float32,
                                                 f"same, fast path, float32 file ({float32.manifest.name})"))
    jobs.append(lambda fs: bench_tagging(fs, naive, "same model, naive (every window through the whole net)"))
    _say(f"file rows: {len(jobs)} rows × {len(files)} files × {max(1, repeat)} rounds")
    measured = best_of(jobs, files, repeat)
    rows = [row for row, _ in measured]
    fast_results, naive_results = measured[fast_job][1] if fast.fast else {}, measured[-1][1]
    # The model's own share: CPU time beyond decoding and the front end, which both paths pay alike.
    front_end_cpu = rows[1].extra["cpu_s"]
    model_cpu = {"fast": rows[fast_job].extra["cpu_s"] - front_end_cpu if fast.fast else None,
                 "naive": rows[-1].extra["cpu_s"] - front_end_cpu}
    if live_seconds > 0:
        live_taggers = ([fast] if fast.fast else []) + [naive]
        _say(f"live rows: {live_seconds:g} s played in real time, {len(live_taggers) + bool(page_clients)} times")
        for i, live_tagger in enumerate(live_taggers):
            plain = bench_live(files[0], live_tagger, live_seconds)
            rows.append(plain)
            if i == 0 and page_clients:  # right after the plain row, so that both see the machine alike
                loaded = bench_live(files[0], live_tagger, live_seconds, page_clients=page_clients)
                loaded.extra["p99_increase_ms"] = loaded.extra["p99_ms"] - plain.extra["p99_ms"]
                rows.append(loaded)
    if not skip_daemon:
        _say("daemon end to end")
        rows.append(bench_daemon(files, model))
    jobs_comparison = None
    if job_counts:
        _say(f"tag --jobs rows: {', '.join(map(str, job_counts))} jobs × {max(1, repeat)} rounds"
             + ("" if skip_daemon else ", then the daemon with each"))
        job_rows, jobs_comparison = bench_jobs(files, model, device, job_counts, repeat)
        rows.extend(job_rows)
        if not skip_daemon:  # one run each: the daemon's start-up is part of what it measures
            daemon_rows = [bench_daemon(files, model, n) for n in job_counts]
            rows.extend(daemon_rows)
            for n, row in zip(job_counts[1:], daemon_rows[1:], strict=True):
                jobs_comparison[f"daemon_{n}_vs_{job_counts[0]}"] = {"speedup": daemon_rows[0].seconds / row.seconds}
    report = {
        "machine": {"cores": usable_cores(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "provider": fast.provider},
        "model": f"{fast.manifest.name} {fast.manifest.version}",
        "files": len(files), "folder": str(folder),
        "rows": [{**asdict(r), "realtime": r.realtime} for r in rows],
    }
    if fast.fast:
        report["fast_vs_naive"] = compare(fast_results, naive_results)
        report["model_cpu_s"] = {**model_cpu, "naive_over_fast": model_cpu["naive"] / max(model_cpu["fast"], 1e-9)}
    if jobs_comparison is not None:
        report["jobs"] = jobs_comparison
    decode = rows[0].realtime
    report["ratios"] = {r.name: r.realtime / decode for r in rows[1:] if "live" not in r.name}
    if out:
        out.write_text(json.dumps(report, indent=1))
    return report


def _run_only(only: str, files: list[Path], folders: list[str], model: str | None, device: str, live_seconds: float,
              out: Path | None, repeat: int, job_counts: list[int]) -> dict:
    rows: list[Row] = []
    comparison: dict = {}
    if only == "jobs":
        _say(f"tag --jobs rows: {', '.join(map(str, job_counts))} jobs × {max(1, repeat)} rounds")
        rows, comparison = bench_jobs(files, model, device, job_counts, repeat)
    elif only == "daemon":
        _say(f"daemon end to end with {', '.join(map(str, job_counts))} jobs"
             + (f", then live latency ({live_seconds:g} s) while it tags" if live_seconds > 0 else ""))
        rows = [bench_daemon(files, model, n) for n in job_counts]
        for n, row in zip(job_counts[1:], rows[1:], strict=True):
            comparison[f"daemon_{n}_vs_{job_counts[0]}"] = {"speedup": rows[0].seconds / row.seconds}
        if live_seconds > 0:
            rows += [bench_daemon_live(files, model, n, live_seconds) for n in job_counts]
    else:
        raise SystemExit(f"genre-tagger bench: --only {only}: expected jobs or daemon")
    probe = Tagger(model, engine_options=EngineOptions(device=device))
    report = {
        "machine": {"cores": usable_cores(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "provider": probe.provider},
        "model": f"{probe.manifest.name} {probe.manifest.version}", "files": len(files),
        "folder": ", ".join(folders), "only": only,
        "rows": [{**asdict(r), "realtime": r.realtime} for r in rows], "jobs": comparison,
    }
    if out:
        out.write_text(json.dumps(report, indent=1))
    return report


def jobs_summary(name: str, c: dict) -> str:
    """The `tag --jobs` comparison as the lines the bench prints: speed-up (best rounds, and round by round),
    CPU per file, the results per file, and whether the goal was reached on how busy a machine."""
    many, one = name.split("_vs_")
    same = all(v == 0 for v in c["max_abs_diff"].values())
    lines = [f"tag --jobs {many} vs --jobs {one}: {c['speedup']:.2f}× the files per second (best rounds; round by "
             "round "
             + " ".join(f"{r:.2f}×" for r in c.get("round_speedups", [])) + ")",
             f"    CPU-seconds per file {c['cpu_per_file_s'][0]:.3f} with {one} job{'s' if one != '1' else ''}, "
             f"{c['cpu_per_file_s'][1]:.3f} with {many} ({c['files']} files)" if "cpu_per_file_s" in c else "",
             "    per file max |Δp| " + ", ".join(f"{k} {v:.2g}" for k, v in c["max_abs_diff"].items())
             + ("" if same else " (NOT the same results)") + "; same top label "
             + ", ".join(f"{k} {v}" for k, v in c["top_label_agreement"].items())]
    if "goal" in c:
        share = c.get("others_cpu_share")
        busy = "" if share is None else (f"; other processes used {100 * share:.0f} % of the cores meanwhile" + (
            ": a busy machine, so this verdict is not trustworthy (run it again on an idle one)"
            if share > 0.05 else ""))
        met = c["speedup"] >= c["goal"] and same
        lines.append(f"    goal ≥ {c['goal']:.2f}× with the same results per file: {'met' if met else 'NOT met'}{busy}")
    return "\n".join(line for line in lines if line)


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"model {report['model']} on {m['provider']}, {m['cores']} cores ({m['cpu']}), "
          f"{report['files']} files from {report['folder']}")
    print(f"{'stage':58s} {'wall s':>8s} {'audio s':>9s} {'× real time':>12s}"
          + ("" if "only" in report else f" {'vs decode':>10s}"))
    decode = report["rows"][0]["realtime"] if "only" not in report else None  # the decode row comes first
    for r in report["rows"]:
        ratio = "" if "live" in r["name"] or decode is None else f"{r['realtime'] / decode:9.2f}×"
        print(f"{r['name']:58s} {r['seconds']:8.2f} {r['audio_seconds']:9.1f} {r['realtime']:11.1f}× {ratio:>10s}")
        if r["extra"]:
            details = (f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["extra"].items())
            print("    " + ", ".join(details))
    if "model_cpu_s" in report:
        m = report["model_cpu_s"]
        print(f"the model's CPU time (beyond decode + front end): fast {m['fast']:.2f} s, naive {m['naive']:.2f} s "
              f"({m['naive_over_fast']:.2f}×)")
    for name, c in report.get("jobs", {}).items():
        if "max_abs_diff" not in c:
            print(f"jobs {name.replace('_vs_', ' vs ').replace('_', ' ')}: {c['speedup']:.2f}× the files per second")
            continue
        print(jobs_summary(name, c))
    if "fast_vs_naive" in report:
        c = report["fast_vs_naive"]
        print("fast vs naive, track level: max |Δp| " + ", ".join(f"{k} {v:.4f}" for k, v in c["max_abs_diff"].items())
              + "; same top label " + ", ".join(f"{k} {v}" for k, v in c["top_label_agreement"].items()))
    sys.stdout.flush()
