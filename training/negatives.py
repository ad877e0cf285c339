"""Audio that is not music, for training and testing the model's music detector.

Every clip is mono float32 at the requested rate, made here or read from Debian packages (each kind
says where it comes from and under which licence in :data:`SOURCES`). A clip has a ``kind`` (silence,
white/pink/brown noise, hum, tone, sweep, applause, synthetic speech, recorded speech, effects) and a
``group``: the unit the detector's evaluation holds out (a kind, a kind in one language, one package),
plus ``voice`` for speech (held out on its own too).

- Generated (seeded): digital silence and near-silence (dither at -90/-70 dBFS), white, pink and brown
  noise at -40, -25 and -10 dBFS RMS, 50/60 Hz mains hum with harmonics (alone and under noise),
  steady tones, DTMF digits, logarithmic sweeps, and applause (Poisson trains of 1-8 ms hand-clap
  bursts: band-passed noise with a fast decay, a crowd of 20-200 clappers).
- espeak-ng (GPL-3+): synthetic speech in 6 languages and 4 voices of each (espeak's default male,
  ``+f3``, ``+m3`` and ``+klatt`` variants), about 15 s per clip.
- asterisk-core-sounds-{en,es,fr,it}-wav (CC BY-SA 3.0, Digium / Allison Smith and others): recorded
  voice prompts (8 kHz), joined into about 15 s clips.
- sound-theme-freedesktop (GPL-2+ / CC BY-SA), pingus-data and frozen-bubble-data (GPL-2+): short
  sound effects (their music files are left out), joined into about 5 s clips.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLIP_SECONDS = 10.0
SPEECH_SECONDS = 15.0

SOURCES = {
    "generated": "made by training/negatives.py (seeded numpy); no licence needed",
    "espeak-ng": "Debian package espeak-ng 1.51 (GPL-3+); texts written for genre-tagger",
    "asterisk-core-sounds": "Debian packages asterisk-core-sounds-{en,es,fr,it}-wav (CC BY-SA 3.0, Digium, Inc.)",
    "sound-theme-freedesktop": "Debian package sound-theme-freedesktop (GPL-2+, CC BY-SA 3.0, CC BY 3.0 per file)",
    "pingus-data": "Debian package pingus-data (GPL-3+): sounds/ only, not music/",
    "frozen-bubble-data": "Debian package frozen-bubble-data (GPL-2): snd/ without its music (*zik*)",
}

# Short texts per language (written for this purpose): news-reader and talk-show style.
SPEECH_TEXTS = {
    "en": "Good evening and welcome back to the programme. Tonight we talk about the weather, the traffic on "
          "the northern roads and the results of the local elections. Our reporter joins us from the town hall, "
          "where the counting went on until late in the afternoon. Please stay with us after the short break.",
    "de": "Guten Abend und willkommen zurück. Heute sprechen wir über das Wetter, den Verkehr auf den Straßen "
          "im Norden und die Ergebnisse der Wahlen. Unsere Reporterin ist im Rathaus, wo bis zum späten "
          "Nachmittag gezählt wurde. Bleiben Sie nach der kurzen Pause bei uns.",
    "fr": "Bonsoir et bienvenue. Ce soir nous parlons de la météo, de la circulation sur les routes du nord et "
          "des résultats des élections locales. Notre reporter est à la mairie, où le dépouillement a duré "
          "jusqu'en fin d'après-midi. Restez avec nous après une courte pause.",
    "es": "Buenas noches y bienvenidos de nuevo. Esta noche hablamos del tiempo, del tráfico en las carreteras "
          "del norte y de los resultados de las elecciones locales. Nuestra reportera está en el ayuntamiento, "
          "donde el recuento siguió hasta tarde. Quédense con nosotros después de una breve pausa.",
    "it": "Buonasera e bentornati. Stasera parliamo del tempo, del traffico sulle strade del nord e dei "
          "risultati delle elezioni locali. La nostra inviata è in municipio, dove lo spoglio è andato avanti "
          "fino al tardo pomeriggio. Restate con noi dopo una breve pausa.",
    "pl": "Dobry wieczór i witamy ponownie. Dziś mówimy o pogodzie, o ruchu na drogach na północy i o "
          "wynikach wyborów lokalnych. Nasza reporterka jest w ratuszu, gdzie liczenie głosów trwało do "
          "późnego popołudnia. Zostańcie z nami po krótkiej przerwie.",
}
ESPEAK_VOICES = ("", "+f3", "+m3", "+klatt")
ASTERISK_LANGUAGES = ("en", "es", "fr", "it")
EFFECT_FOLDERS = {
    "sound-theme-freedesktop": Path("/usr/share/sounds/freedesktop/stereo"),
    "pingus-data": Path("/usr/share/games/pingus/data/sounds"),
    "frozen-bubble-data": Path("/usr/share/games/frozen-bubble/snd"),
}


@dataclass(frozen=True)
class NonMusic:
    """One non-music clip: ``make(sample_rate)`` returns its audio (mono float32)."""

    clip_id: str
    kind: str
    group: str
    source: str
    make: Callable[[int], np.ndarray]
    voice: str = ""
    language: str = ""


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power ∝ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _at_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    rms = np.sqrt(np.mean(np.square(audio))) + 1e-12
    return (audio / rms * 10 ** (dbfs / 20)).astype(np.float32)


def hum(n: int, sample_rate: int, mains_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: the fundamental and odd/even harmonics to 1 kHz with random phases and falling levels."""
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for k in range(1, int(1000 // mains_hz) + 1):
        out += np.sin(2 * np.pi * mains_hz * k * t + rng.uniform(0, 2 * np.pi)) / k ** 1.2
    return out


def tone(n: int, sample_rate: int, hz: float, shape: str = "sine") -> np.ndarray:
    t = np.arange(n) / sample_rate
    wave = np.sin(2 * np.pi * hz * t)
    return np.sign(wave) if shape == "square" else wave


def dtmf(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Telephone keypad digits: 100 ms tone pairs with 100 ms gaps."""
    low, high = (697, 770, 852, 941), (1209, 1336, 1477)
    step = int(0.1 * sample_rate)
    out = np.zeros(n)
    t = np.arange(step) / sample_rate
    for start in range(0, n - step, 2 * step):
        pair = np.sin(2 * np.pi * rng.choice(low) * t) + np.sin(2 * np.pi * rng.choice(high) * t)
        out[start:start + step] = pair
    return out


def sweep(n: int, sample_rate: int, lo: float = 20.0, hi: float = 7900.0, repeats: int = 1) -> np.ndarray:
    """Logarithmic sine sweeps from ``lo`` to ``hi`` Hz, ``repeats`` of them back to back."""
    m = n // repeats
    t = np.arange(m) / sample_rate
    dur = m / sample_rate
    k = np.log(hi / lo)
    one = np.sin(2 * np.pi * lo * dur / k * (np.exp(t / dur * k) - 1))
    return np.pad(np.tile(one, repeats), (0, n - m * repeats))


def applause(n: int, sample_rate: int, clappers: int, rng: np.random.Generator) -> np.ndarray:
    """A crowd clapping: each clapper claps about 3-5 times a second with jitter; a clap is a 1-8 ms
    band-passed noise burst with an exponential decay."""
    from scipy.signal import butter, sosfilt

    out = np.zeros(n)
    for _ in range(clappers):
        rate = rng.uniform(3.0, 5.0)
        gain = rng.uniform(0.3, 1.0)
        centre = rng.uniform(800, 3000)
        sos = butter(2, (centre / 2, min(centre * 2, sample_rate / 2 - 100)), btype="bandpass", fs=sample_rate,
                     output="sos")
        times = np.cumsum(rng.normal(1 / rate, 0.03 / rate, int(n / sample_rate * rate) + 2))
        times += rng.uniform(0, 1 / rate)
        length = int(rng.uniform(0.001, 0.008) * sample_rate) + 1
        burst = sosfilt(sos, rng.normal(size=length * 4)) * np.exp(-np.arange(length * 4) / length)
        for t0 in times:
            start = int(t0 * sample_rate)
            if start + burst.size < n:
                out[start:start + burst.size] += gain * burst
    return out


def espeak(text: str, language: str, voice: str, sample_rate: int, speed: int = 160) -> np.ndarray:
    """Speech by espeak-ng (it must be installed: ``apt-get install espeak-ng``), resampled to ``sample_rate``."""
    from tagger.decode import decode_file

    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-v", f"{language}{voice}", "-s", str(speed), "-w", str(wav), text], check=True,
                       capture_output=True)
        return decode_file(wav, sample_rate)


def _joined(files: list[Path], sample_rate: int, seconds: float, gap: float = 0.3) -> np.ndarray:
    """Files decoded and joined with ``gap`` s of silence until ``seconds`` are filled (cut there)."""
    from tagger.decode import decode_file

    parts, total = [], 0
    target = int(seconds * sample_rate)
    for path in files:
        audio = decode_file(path, sample_rate)
        parts += [audio, np.zeros(int(gap * sample_rate), np.float32)]
        total += audio.size + int(gap * sample_rate)
        if total >= target:
            break
    return np.concatenate(parts)[:target] if parts else np.zeros(0, np.float32)


def _chunks(files: list[Path], sample_rate: int, seconds: float, clips: int) -> list[list[Path]]:
    """``clips`` disjoint runs of files (sorted order), each long enough for ``seconds``, by probing sizes."""
    from tagger.decode import probe

    runs, current, length = [], [], 0.0
    for path in files:
        try:
            length += probe(path).duration_s or 0.0
        except Exception:  # an unreadable file in a package is skipped, not fatal
            continue
        current.append(path)
        if length >= seconds:
            runs.append(current)
            current, length = [], 0.0
            if len(runs) == clips:
                break
    return runs


def generated(seconds: float = CLIP_SECONDS, seed: int = 0) -> list[NonMusic]:
    """The generated kinds (no package needed)."""
    clips: list[NonMusic] = []

    def add(clip_id: str, kind: str, make: Callable[[int, np.random.Generator], np.ndarray]) -> None:
        index = len(clips)

        def build(sr: int) -> np.ndarray:
            return make(sr, np.random.default_rng(seed * 1000 + index)).astype(np.float32)

        clips.append(NonMusic(clip_id, kind, kind, "generated", build))

    def n(sr: int) -> int:
        return int(seconds * sr)

    add("silence-digital", "silence", lambda sr, rng: np.zeros(n(sr)))
    for db in (-90, -70):
        add(f"silence-dither{db}", "silence", lambda sr, rng, db=db: _at_level(rng.normal(size=n(sr)), db))
    for colour, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0)):
        for db in (-40, -25, -10):
            for take in (1, 2):
                add(f"{colour}{db}-{take}", f"{colour} noise",
                    lambda sr, rng, e=exponent, db=db: _at_level(colored_noise(n(sr), e, rng), db))
    for mains in (50, 60):
        for db in (-40, -20):
            add(f"hum{mains}{db}", "hum", lambda sr, rng, m=mains, db=db: _at_level(hum(n(sr), sr, m, rng), db))
            add(f"hum{mains}{db}-noisy", "hum", lambda sr, rng, m=mains, db=db: _at_level(
                hum(n(sr), sr, m, rng), db) + _at_level(colored_noise(n(sr), 1.0, rng), db - 15))
    for hz, shape in ((100, "sine"), (440, "sine"), (1000, "sine"), (3000, "sine"), (440, "square")):
        add(f"tone{hz}-{shape}", "tone", lambda sr, rng, hz=hz, s=shape: 0.3 * tone(n(sr), sr, hz, s))
    add("dtmf", "tone", lambda sr, rng: 0.3 * dtmf(n(sr), sr, rng))
    for repeats in (1, 3, 10):
        add(f"sweep-x{repeats}", "sweep", lambda sr, rng, r=repeats: 0.3 * sweep(n(sr), sr, repeats=r))
    for clappers in (20, 60, 200):
        for take in (1, 2):
            add(f"applause{clappers}-{take}", "applause",
                lambda sr, rng, c=clappers: _at_level(applause(n(sr), sr, c, rng), -20))
    return clips


def synthetic_speech(seconds: float = SPEECH_SECONDS) -> list[NonMusic]:
    """espeak-ng in every language of :data:`SPEECH_TEXTS` and every voice of :data:`ESPEAK_VOICES`."""
    clips = []
    for language, text in SPEECH_TEXTS.items():
        for voice in ESPEAK_VOICES:
            name = voice.lstrip("+") or "default"
            speed = 150 + 10 * ESPEAK_VOICES.index(voice)

            def build(sr: int, text: str = text, language: str = language, voice: str = voice,
                      speed: int = speed) -> np.ndarray:
                return espeak(text, language, voice, sr, speed)[: int(seconds * sr)]

            clips.append(NonMusic(f"espeak-{language}-{name}", "synthetic speech", f"synthetic speech:{language}",
                                  "espeak-ng", build, voice=f"espeak:{name}", language=language))
    return clips


def recorded_speech(seconds: float = SPEECH_SECONDS, clips_per_language: int = 4,
                    root: Path = Path("/usr/share/asterisk/sounds")) -> list[NonMusic]:
    """Asterisk's recorded prompts, where the packages are installed (else none)."""
    clips = []
    for language in ASTERISK_LANGUAGES:
        folder = root / language
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*.wav") if p.stat().st_size > 16000)
        # Spread over the whole package: every k-th file, so a clip is not one word list.
        step = max(1, len(files) // (clips_per_language * 30))
        for i, run in enumerate(_chunks(files[::step], 16000, seconds, clips_per_language)):
            clips.append(NonMusic(f"asterisk-{language}-{i}", "recorded speech", f"recorded speech:{language}",
                                  "asterisk-core-sounds", lambda sr, run=run: _joined(run, sr, seconds),
                                  voice=f"asterisk:{language}", language=language))
    return clips


def effects(seconds: float = 5.0, clips_per_package: int = 6) -> list[NonMusic]:
    """Sound effects from the packages of :data:`EFFECT_FOLDERS` that are installed (else none)."""
    clips = []
    for package, folder in EFFECT_FOLDERS.items():
        if not folder.is_dir():
            continue
        # Frozen Bubble's music ("*zik*") is music, not an effect.
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".ogg", ".oga")
                       and "zik" not in p.name)
        rng = np.random.default_rng(len(package))
        files = [files[i] for i in rng.permutation(len(files))]
        for i, run in enumerate(_chunks(files, 16000, seconds, clips_per_package)):
            clips.append(NonMusic(f"effects-{package}-{i}", "effects", f"effects:{package}", package,
                                  lambda sr, run=run: _joined(run, sr, seconds, gap=0.5)))
    return clips


def all_non_music() -> list[NonMusic]:
    """Every kind available here (recorded speech and effects only where their packages are installed)."""
    return [*generated(), *synthetic_speech(), *recorded_speech(), *effects()]


def iter_audio(clips: list[NonMusic], sample_rate: int) -> Iterator[tuple[NonMusic, np.ndarray]]:
    for clip in clips:
        yield clip, clip.make(sample_rate)
