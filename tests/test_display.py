"""The live display end to end: the real daemon playing real clips (``--live-file``), its HTTP sink,
and the page in real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

The GTZAN clips are concatenated into a temporary file at test time (never committed). Set
GENRE_TAGGER_SCREENSHOTS=DIR to keep the page's screenshots (docs/images is made that way).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, encode
from daemon_helpers import query, start_daemon, stop_daemon, wait_until

from tagger import Tagger
from tagger.decode import decode_file

CLIPS = (DATA / "gtzan" / "classical" / "classical.00002.flac", DATA / "gtzan" / "metal" / "metal.00002.flac")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LIVE_ENV = {"GENRE_TAGGER_LIVE_HYSTERESIS": "2"}


def _need(tools: list[str], hint: str) -> None:
    missing = [t for t in tools if not (shutil.which(t) or Path(t).exists())]
    if missing:
        message = f"missing {missing} ({hint})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    _need([CHROMIUM, CHROMEDRIVER], "apt-get install chromium chromium-driver; make system-deps")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def two_genres(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A classical clip then a metal clip in one FLAC (made here, never committed), and each clip's genre
    as the offline tagger sees it."""
    tagger = Tagger()
    rate = tagger.sample_rate
    tops = [tagger.tag_file(clip).outputs["genre"].top for clip in CLIPS]
    assert tops[0] != tops[1], "the two clips must differ in genre for this test"
    audio = np.concatenate([decode_file(clip, rate) for clip in CLIPS])
    path = encode(audio, rate, tmp_path_factory.mktemp("live") / "classical-then-metal.flac", "flac", "flac")
    return path, tops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(driver, predicate: Callable[[object], object], timeout: float, what: str) -> object:
    """Poll ``predicate(driver)`` until it is truthy; fail with the page's state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate(driver)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; page: {page_state(driver)}")


def page_state(driver) -> dict:
    return driver.execute_script("""
        const s = document.querySelector('.source');
        return {connection: document.getElementById('connection').dataset.state,
                genre: s && s.querySelector('.genre').textContent, state: s && s.dataset.state,
                now: s && s.dataset.now, badge: s && s.querySelector('.badge').textContent,
                since: s && s.querySelector('.since').textContent,
                bars: s ? [...s.querySelectorAll('.bar')].map(b => b.dataset.label) : [],
                history: s ? [...s.querySelectorAll('.history li')].map(li => li.textContent) : []};""")


def shown_genre(driver) -> str | None:
    state = page_state(driver)
    return state["genre"] if state["connection"] == "connected" and state["state"] == "genre" else None


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    out = Path(os.environ.get("GENRE_TAGGER_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    assert driver.save_screenshot(str(path))
    return path


def test_the_page_follows_the_genre_of_a_live_file_and_recovers_after_a_restart(
        browser, two_genres: tuple[Path, list[str]], tmp_path: Path) -> None:
    clip, (first, second) = two_genres
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    args = ("--live-file", str(clip), "--source", "radio", "--horizon", "6", "--http", f"127.0.0.1:{port}")
    model = Path(Tagger().engine.path)
    daemon = start_daemon(tmp_path / "state", model, *args, endpoint="", env=LIVE_ENV)
    try:
        assert wait_until(lambda: _get(url) is not None, 90), "the HTTP display never answered"
        browser.get(url + "?top=3")
        until(browser, lambda d: shown_genre(d) == first, 90, f"the first clip's genre ({first})")
        started = time.monotonic()
        state = page_state(browser)
        assert len(state["bars"]) == 3 and state["bars"][0] == first  # ?top=3: three bars, the genre first
        assert state["since"].startswith("for ")
        until(browser, lambda d: shown_genre(d) == second, 90, f"the second clip's genre ({second})")
        print(f"\npage: {first} → {second} after {time.monotonic() - started:.1f} s")
        history = page_state(browser)["history"]
        assert any(first in h and second in h for h in history), history  # the change is in the history
        if os.environ.get("GENRE_TAGGER_SCREENSHOTS"):
            time.sleep(3)  # for the documentation: "for 3 s" reads better than "for 0 s"
        screenshot(browser, "display.png", tmp_path)
        browser.get(url + "?overlay=1&source=radio&top=3")
        until(browser, lambda d: shown_genre(d) == second, 30, "the overlay's genre")
        overlay = browser.execute_script("""
            return {background: getComputedStyle(document.body).backgroundColor,
                    header: getComputedStyle(document.querySelector('header')).display,
                    history: getComputedStyle(document.querySelector('.history')).display};""")
        assert overlay == {"background": "rgba(0, 0, 0, 0)", "header": "none", "history": "none"}
        # Transparent shows as white in a screenshot: paint a stand-in video scene behind it, as OBS would.
        browser.execute_script("const s = document.documentElement.style; s.minHeight = '100vh'; "
                               "s.background = 'linear-gradient(135deg, #3a5f7d 0%, #c47a3c 55%, #2d2a4a 100%)'")
        screenshot(browser, "overlay.png", tmp_path)
        browser.get(url)
        until(browser, lambda d: shown_genre(d) == second, 30, "the page again")
        stopping = time.monotonic()
        assert stop_daemon(daemon) == 0
        assert time.monotonic() - stopping < 5.0  # a connected page does not hold up SIGTERM
    finally:
        assert stop_daemon(daemon) == 0
    until(browser, lambda d: page_state(d)["connection"] == "disconnected", 30, "the page to say it is disconnected")
    assert "disconnected" in browser.find_element("id", "connection").text
    daemon = start_daemon(tmp_path / "state", model, *args, endpoint="", env=LIVE_ENV)
    try:
        until(browser, lambda d: page_state(d)["connection"] == "connected", 90, "the page to reconnect")
        until(browser, lambda d: shown_genre(d) == first, 90, "live data again after the restart")
    finally:
        assert stop_daemon(daemon) == 0


def test_the_library_page_shows_the_queue_the_files_tagged_and_the_errors(
        browser, tiny_model: Path, realworld: Path, tmp_path: Path) -> None:
    music = tmp_path / "music"
    music.mkdir()
    shutil.copy(realworld / "warzone2100-music" / "menu.opus", music / "good.opus")
    (music / "notes.mp3").write_text("not audio at all\n" * 100)
    port = free_port()
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--settle", "0",
                          "--http", f"127.0.0.1:{port}", endpoint="")
    db = tmp_path / "state" / "library.db"
    try:
        assert wait_until(lambda: query(db, "SELECT count(*) FROM tracks WHERE status IN ('tagged', 'error')")[0][0]
                          == 2, 120)
        browser.get(f"http://127.0.0.1:{port}/library?theme=light")

        def tables(d):
            return d.execute_script("""
                return {connection: document.getElementById('connection').dataset.state,
                        tagged: document.getElementById('tagged').textContent,
                        errors: document.getElementById('errors').textContent,
                        queue: document.getElementById('queue').textContent,
                        recent: [...document.querySelectorAll('#recent td.path')].map(td => td.textContent),
                        failed: [...document.querySelectorAll('#failed td')].map(td => td.textContent)};""")

        until(browser, lambda d: tables(d)["queue"] == "0" and tables(d)["tagged"] == "1", 30, "the library totals")
        state = tables(browser)
        assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
        assert state["connection"] == "connected" and state["errors"] == "1"
        assert state["recent"] == ["good.opus"]
        assert state["failed"][0] == "notes.mp3" and "not a readable audio file" in state["failed"][1]
        until(browser, lambda d: "http: " in d.find_element("id", "sinks").text, 30, "the sinks' counts")
        # A file tagged while the page is open appears without a reload.
        shutil.copy(realworld / "warzone2100-music" / "menu.opus", music / "later.opus")
        until(browser, lambda d: tables(d)["recent"][:1] == ["later.opus"], 60, "the new file on the page")
        browser.save_screenshot(str(tmp_path / "library.png"))  # made with the tiny test model: not for the docs
    finally:
        assert stop_daemon(daemon) == 0


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def test_the_display_is_read_only_and_loopback_unless_told(tmp_path: Path, tiny_model: Path) -> None:
    import subprocess
    import sys

    music = tmp_path / "music"
    music.mkdir()
    port = free_port()
    daemon = start_daemon(tmp_path / "state", tiny_model, "--folder", str(music), "--http", f"127.0.0.1:{port}",
                          endpoint="")
    try:
        assert wait_until(lambda: _get(f"http://127.0.0.1:{port}/") is not None, 60)
        page = _get(f"http://127.0.0.1:{port}/").decode()
        assert "/static/display.js" in page
        static = Path(__file__).resolve().parent.parent / "service" / "http"
        for f in static.rglob("*.*"):  # everything is served from the package: no CDN, works offline
            assert "http://" not in f.read_text() and "https://" not in f.read_text(), f
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/", "/events", "/api/state", "/library", "/static/display.js"):
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"x", method=method)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=5)
                assert refused.value.code == 405, (method, path)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/static/../../daemon.py", timeout=5)
        assert missing.value.code in (403, 404)
    finally:
        assert stop_daemon(daemon) == 0
    anywhere = f"0.0.0.0:{free_port()}"  # refused before it binds; were it not, it would bind a free port only
    done = subprocess.run([sys.executable, "-m", "tagger.cli", "daemon", "--folder", str(music), "--model",
                           str(tiny_model), "--state-dir", str(tmp_path / "s2"), "--http", anywhere],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"genre-tagger: error: config http.listen: '{anywhere}' is not a loopback "
                                   "address; set http.allow_remote = true to serve other machines")
    # Allowed explicitly: it serves, and says so in the log.
    daemon = start_daemon(tmp_path / "s3", tiny_model, "--folder", str(music), "--http", "0.0.0.0:0", endpoint="",
                          env={"GENRE_TAGGER_HTTP_ALLOW_REMOTE": "true"})
    try:
        assert wait_until(lambda: b"every machine that reaches it can see the pages" in daemon.log_path.read_bytes(),
                          60)
    finally:
        assert stop_daemon(daemon) == 0



def test_the_page_shows_uncertain_and_no_music_and_never_an_uncertain_genre(browser, tmp_path: Path) -> None:
    """The HTTP sink in this process, fed genre changes as the live path makes them; the page in Chromium."""
    from service.config import Config
    from service.events import GenreChanged
    from service.sinks import SinkContext, SinkHub
    from service.sinks.http import HttpSection, HttpSink

    sink = HttpSink(HttpSection(enabled=True, listen="127.0.0.1:0"), SinkContext(Config()))
    hub = SinkHub([sink])
    hub.start()
    try:
        browser.get(sink.url + "?source=radio")
        until(browser, lambda d: page_state(d)["connection"] == "connected", 30, "the page to connect")

        def change(previous: str | None, current: str, uncertain: bool = False, music: bool = True,
                   previous_uncertain: bool = False) -> None:
            hub.genre_changed(GenreChanged(source="radio", stream_s=10.0, previous=previous, current=current,
                                           confidence=0.9 if not uncertain else 0.4, uncertain=uncertain, music=music,
                                           previous_uncertain=previous_uncertain))

        hub.genre_changed(GenreChanged(source="other", stream_s=1.0, previous=None, current="pop", confidence=0.9))
        change(None, "jazz")
        until(browser, lambda d: page_state(d)["genre"] == "jazz", 20, "jazz")
        assert page_state(browser)["state"] == "genre"
        change("jazz", "rock", uncertain=True)
        until(browser, lambda d: page_state(d)["state"] == "uncertain", 20, "the uncertain state")
        state = page_state(browser)
        assert state["genre"] == "uncertain"  # never "rock" in large type
        assert state["badge"] == "maybe rock"  # jazz withdrawn: what the music may be, in small type
        change("rock", "rock", previous_uncertain=True)  # the uncertain rock decided: no repeat
        until(browser, lambda d: page_state(d)["state"] == "genre", 20, "the decided rock")
        state = page_state(browser)
        assert state["genre"] == "rock" and "maybe rock → rock" in state["history"][0], state
        change("rock", "no music", music=False)
        until(browser, lambda d: page_state(d)["state"] == "nomusic", 20, "the no music state")
        state = page_state(browser)
        assert state["genre"] == "no music" and len(state["history"]) == 4
        assert "(uncertain)" in state["history"][2] and "jazz → rock" in state["history"][2]
        assert browser.execute_script("return document.querySelectorAll('.source').length") == 1  # ?source=radio
    finally:
        hub.close(time.monotonic() + 2)


def test_the_page_says_a_stalled_source_delivers_no_audio_instead_of_its_last_genre(browser) -> None:
    """A capture whose device stalls (tests/test_live.py stalls a real one) is said stalled by the status heartbeat;
    the page then shows "no audio" and how long, not the genre it last heard, and the genre again once the
    heartbeat no longer says so. A page that connects meanwhile learns it from the snapshot. The HTTP sink runs in
    this process, fed the events the daemon makes (the status from a real LiveStatus)."""
    from service.config import Config
    from service.events import GenreChanged, Status
    from service.live import LiveStatus
    from service.sinks import SinkContext, SinkHub
    from service.sinks.http import HttpSection, HttpSink

    sink = HttpSink(HttpSection(enabled=True, listen="127.0.0.1:0"), SinkContext(Config()))
    hub = SinkHub([sink])
    hub.start()

    def heartbeat(live: LiveStatus) -> None:
        hub.status(Status(uptime_s=1.0, queue_depth=0, tagged=0, errors=0, audio_seconds=0.0, realtime_factor=0.0,
                          provider="cpu", model="test", live={"radio": live.as_dict()}))

    try:
        browser.get(sink.url + "?source=radio")
        until(browser, lambda d: page_state(d)["connection"] == "connected", 30, "the page to connect")
        hub.genre_changed(GenreChanged(source="radio", stream_s=10.0, previous=None, current="jazz", confidence=0.9))
        until(browser, lambda d: page_state(d)["genre"] == "jazz", 20, "jazz")
        heartbeat(LiveStatus(running=True, device="pulse"))
        stalled = LiveStatus(device="pulse", error="RuntimeError: the input device delivers no audio",
                             stalled_since=time.monotonic() - 12.0)
        heartbeat(stalled)
        until(browser, lambda d: page_state(d)["state"] == "stalled", 20, "the stalled state")
        state = page_state(browser)
        assert state["genre"] == "no audio" and state["badge"] == "the input has delivered no audio for 12 s", state
        assert state["bars"] == [] and state["since"] == "" and "jazz" in state["history"][0], state
        browser.refresh()  # connecting meanwhile: the snapshot's last status says so
        until(browser, lambda d: page_state(d)["state"] == "stalled", 20, "the stalled state after a reload")
        heartbeat(LiveStatus(running=True, device="pulse"))
        until(browser, lambda d: page_state(d)["state"] == "genre", 20, "the genre again")
        assert page_state(browser)["genre"] == "jazz"
    finally:
        hub.close(time.monotonic() + 2)


def test_a_page_that_never_reads_loses_its_oldest_events_counted_and_gets_the_newest(tmp_path: Path) -> None:
    from service.config import Config
    from service.events import TrackDone
    from service.sinks import SinkContext
    from service.sinks.http import HttpSection, HttpSink

    config = Config()
    config.daemon.library = str(tmp_path / "library.db")  # none yet: the sink reads no library
    sink = HttpSink(HttpSection(enabled=True, listen="127.0.0.1:0", client_queue=2), SinkContext(config))
    sink.start()
    page = socket.socket()
    try:
        page.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a page that reads nothing, with a small window
        page.connect(("127.0.0.1", int(sink.url.rsplit(":", 1)[1].strip("/"))))
        page.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert wait_until(lambda: sink.clients == 1, 30)
        n = 1000  # of 10 kB each: far more than the socket buffers hold
        for i in range(n):  # the sink's thread hands each over and goes on: nothing here waits for the page
            sink.track(TrackDone(i, f"/music/{i}.flac", error="x" * 10_000))
        assert wait_until(lambda: sink.dropped > 0, 60), "the unread page never lost an event"
        received = b""
        page.settimeout(30)
        while f'"track_id":{n - 1}'.encode() not in received:  # now read: the newest event still comes
            chunk = page.recv(1 << 20)
            assert chunk, "the stream ended before the newest event"
            received += chunk
        got = received.count(b"event: track\n")
        print(f"\n{n} events for a page that did not read: {sink.dropped} dropped, {got} delivered")
        assert got + sink.dropped == n and got < n
    finally:
        page.close()
        sink.close(time.monotonic() + 2)
