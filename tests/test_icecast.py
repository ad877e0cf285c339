"""Radio automation end to end: a real Icecast server (Debian's icecast2) on a free loopback port, a
source streaming a classical clip then a metal clip into it, the daemon playing that stream with
``--live-file URL`` and updating the mount's title (``/admin/metadata``) and a text file on each
genre change. The clips are concatenated and encoded at test time (GTZAN audio is never committed)."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, encode
from daemon_helpers import start_daemon, stop_daemon, wait_until

from service.config import Config
from service.events import GenreChanged
from service.sinks import SinkContext
from service.sinks.icecast import IcecastSection, IcecastSink
from service.sinks.textfile import TextFileSection, TextFileSink
from tagger import Tagger
from tagger.decode import decode_file

CLIPS = (DATA / "gtzan" / "classical" / "classical.00002.flac", DATA / "gtzan" / "metal" / "metal.00002.flac")
SOURCE_PASSWORD, ADMIN_PASSWORD = "source-pw", "admin-pw"
MOUNT = "/radio.mp3"
BITRATE = 128_000


def _config(port: int, folder: Path) -> str:
    # Icecast refuses to run as root unless told to drop to another user (CI runs as root).
    owner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>" if os.geteuid() == 0 else ""
    return f"""<icecast>
  <location>test</location><admin>test@localhost</admin><hostname>127.0.0.1</hostname>
  <limits><clients>10</clients><sources>2</sources><source-timeout>30</source-timeout>
    <burst-on-connect>1</burst-on-connect><burst-size>32768</burst-size></limits>
  <authentication><source-password>{SOURCE_PASSWORD}</source-password><admin-user>admin</admin-user>
    <admin-password>{ADMIN_PASSWORD}</admin-password></authentication>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths><basedir>/usr/share/icecast2</basedir><logdir>{folder}</logdir><webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def icecast() -> Iterator[str]:
    if shutil.which("icecast2") is None:
        message = "icecast2 missing (apt-get install icecast2; make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="gt-icecast-"))
    folder.chmod(0o777)  # its logs, written after it dropped to nobody
    port = _free_port()
    config = folder / "icecast.xml"
    config.write_text(_config(port, folder))
    config.chmod(0o644)
    proc = subprocess.Popen(["icecast2", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: _stats(url) is not None or proc.poll() is not None, 30) or proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.poll() is not None else ""
            log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
            pytest.fail(f"icecast2 did not start: {output} {log[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _stats(url: str) -> ET.Element | None:
    request = urllib.request.Request(f"{url}/admin/stats", headers={"Authorization": _basic("admin", ADMIN_PASSWORD)})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return ET.fromstring(response.read())
    except OSError:
        return None


def _title(url: str) -> str | None:
    stats = _stats(url)
    source = stats.find(f"source[@mount='{MOUNT}']") if stats is not None else None
    return source.findtext("title") if source is not None else None


class SourceClient:
    """Streams an MP3 into Icecast (HTTP PUT, as libshout does), paced to its bitrate, looping."""

    def __init__(self, url: str, mp3: bytes) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.mp3 = mp3
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        try:
            conn.putrequest("PUT", MOUNT, skip_accept_encoding=True)
            for name, value in (("Authorization", _basic("source", SOURCE_PASSWORD)),
                                ("Content-Type", "audio/mpeg"), ("Ice-Public", "0"), ("Ice-Name", "test radio")):
                conn.putheader(name, value)
            conn.endheaders()
            chunk = BITRATE // 8 // 10  # 0.1 s of audio
            started, sent = time.monotonic(), 0
            while not self.stop.is_set():
                for i in range(0, len(self.mp3), chunk):
                    if self.stop.is_set():
                        break
                    conn.send(self.mp3[i:i + chunk])
                    sent += 1
                    self.stop.wait(max(0.0, started + sent * 0.1 - time.monotonic()))
        except Exception as exc:
            self.error = exc
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def two_genres_mp3(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[str]]:
    tagger = Tagger()
    rate = tagger.sample_rate
    tops = [tagger.tag_file(clip).outputs["genre"].top for clip in CLIPS]
    assert tops[0] != tops[1]
    audio = np.concatenate([decode_file(clip, rate) for clip in CLIPS])
    path = encode(audio, rate, tmp_path_factory.mktemp("mp3") / "radio.mp3", "libmp3lame", "mp3", codec_rate=44100,
                  options={"b": str(BITRATE)})
    return path.read_bytes(), tops


def test_a_stream_played_from_icecast_sets_the_mount_title_and_the_text_file_to_its_genre(
        icecast: str, two_genres_mp3: tuple[bytes, list[str]], tmp_path: Path) -> None:
    mp3, (first, second) = two_genres_mp3
    source = SourceClient(icecast, mp3)
    try:
        assert wait_until(lambda: _stats(icecast) is not None and _stats(icecast).find(
            f"source[@mount='{MOUNT}']") is not None, 30), f"the source never reached Icecast: {source.error}"
        assert _title(icecast) in (None, "")
        genre_file = tmp_path / "now-playing-genre.txt"
        config = tmp_path / "genre-tagger.toml"
        config.write_text(f"""
[textfile]
enabled = true
path = "{genre_file}"
format = "{{genre}} ({{percent}} %)\\n"

[icecast]
enabled = true
url = "{icecast}"
mount = "{MOUNT}"
user = "source"
password = "{SOURCE_PASSWORD}"
format = "Genre: {{genre}}"
""")
        daemon = start_daemon(tmp_path / "state", Path(Tagger().engine.path), "--config", str(config),
                              "--live-file", f"{icecast}{MOUNT}", "--source", "radio", "--horizon", "6", endpoint="",
                              env={"GENRE_TAGGER_LIVE_HYSTERESIS": "2"})
        try:
            assert wait_until(lambda: _title(icecast) == f"Genre: {first}", 120), \
                (_title(icecast), daemon.log_path.read_text()[-3000:])
            text = genre_file.read_text()
            assert text.startswith(f"{first} (") and text.endswith(" %)\n")
            assert wait_until(lambda: _title(icecast) == f"Genre: {second}", 120), \
                (_title(icecast), daemon.log_path.read_text()[-3000:])
            assert wait_until(lambda: genre_file.read_text().startswith(f"{second} ("), 10)
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".now-playing")] == []  # no temp left
        finally:
            assert stop_daemon(daemon) == 0
        print(f"\nIcecast title: Genre: {first} → Genre: {second}")
    finally:
        source.close()


def test_uncertain_or_no_music_changes_never_become_a_title_or_a_file(icecast: str, two_genres_mp3, tmp_path) -> None:
    mp3, _ = two_genres_mp3
    source = SourceClient(icecast, mp3)
    try:
        assert wait_until(lambda: _stats(icecast).find(f"source[@mount='{MOUNT}']") is not None, 30)
        context = SinkContext(Config())
        sink = IcecastSink(IcecastSection(enabled=True, url=icecast, mount=MOUNT, password=SOURCE_PASSWORD), context)
        path = tmp_path / "genre.txt"
        text = TextFileSink(TextFileSection(enabled=True, path=str(path), no_music="(talk)\n"), context)

        def change(current: str, uncertain: bool = False, music: bool = True) -> GenreChanged:
            return GenreChanged(source="radio", stream_s=1.0, previous=None, current=current, confidence=0.5,
                                uncertain=uncertain, music=music)

        for s in (sink, text):
            s.genre_changed(change("jazz"))
        assert wait_until(lambda: _title(icecast) == "jazz", 10) and path.read_text() == "jazz\n"
        # Jazz withdrawn (the music left it, its successor undecided): the file no longer says jazz, and
        # never rock; the title is left (uncertain = "" by default, as no_music).
        assert sink.genre_changed(change("rock", uncertain=True)) is False
        assert text.genre_changed(change("rock", uncertain=True)) is True and path.read_text() == ""
        for s in (sink, text):
            s.genre_changed(change("no music", uncertain=False, music=False))
        wrong = IcecastSink(IcecastSection(enabled=True, url=icecast, mount=MOUNT, password="wrong"), context)
        with pytest.raises(ConnectionError, match=r"refused the update of /radio\.mp3: HTTP 401"):
            wrong.genre_changed(change("blues"))
        time.sleep(1.5)  # Icecast's statistics follow an update within a second (the first one above)
        assert _title(icecast) == "jazz"  # not the uncertain rock, not "no music" (no_music = "" leaves it)
        assert path.read_text() == "(talk)\n"  # the file says no music, never an uncertain genre
        assert sink.updates == 1 and text.writes == 3
        # With an `uncertain` title, a withdrawn genre's title is replaced by it (never by the uncertain genre).
        said = IcecastSink(IcecastSection(enabled=True, url=icecast, mount=MOUNT, password=SOURCE_PASSWORD,
                                          uncertain="Live music"), context)
        assert said.genre_changed(change("rock", uncertain=True)) is True
        assert wait_until(lambda: _title(icecast) == "Live music", 10), _title(icecast)
    finally:
        source.close()


def test_the_text_file_is_replaced_whole_with_the_umask_applied_and_no_temp_left(tmp_path: Path) -> None:
    import stat

    from service.sinks.textfile import write_atomically

    path = tmp_path / "now.txt"
    previous = os.umask(0o027)
    try:
        write_atomically(path, "jazz\n")
        write_atomically(path, "rock\n")
        assert os.umask(0o027) == 0o027  # the writes left the process's umask alone
    finally:
        os.umask(previous)
    assert path.read_text() == "rock\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0666 less the umask
    assert os.listdir(tmp_path) == ["now.txt"]
