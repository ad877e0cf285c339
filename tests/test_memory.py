"""A 3-hour file is tagged in the same memory as a 3-minute one (peak RSS of a fresh process)."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

# VmHWM, not ru_maxrss: the latter survives fork+exec and would report pytest's own peak.
MEASURE = """
import sys
from tagger import Tagger
result = Tagger(sys.argv[1]).tag_file(sys.argv[2])
hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print(result.duration_s, int(hwm.split()[1]))
"""


def write_long_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    """Mono 16-bit WAV of changing tones and noise, written in one-minute chunks."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        for minute in range(int(np.ceil(seconds / 60))):
            n = int(min(60, seconds - 60 * minute) * rate)
            t = np.arange(n) / rate
            chunk = 0.3 * np.sin(2 * np.pi * (100 + 40 * (minute % 50)) * t) + 0.05 * rng.standard_normal(n)
            w.writeframes((chunk * 32767).astype("<i2").tobytes())
    return path


def peak_rss_mb(model: Path, audio: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(model), str(audio)], capture_output=True, text=True,
                         check=True, timeout=1200).stdout.split()
    return float(out[0]), int(out[1]) / 1024.0


@pytest.fixture(scope="module")
def long_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("long")
    return write_long_wav(folder / "3min.wav", 180), write_long_wav(folder / "3h.wav", 3 * 3600)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny test model", "default model (fast path)", "default model, int8 file (CPU)"])
def test_three_hours_take_no_more_memory_than_three_minutes(which: str, tiny_model: Path,
                                                            long_files: tuple[Path, Path]) -> None:
    from tagger.registry import DEFAULT_CPU_MODEL, DEFAULT_MODEL, resolve_model

    model = {"tiny test model": tiny_model, "default model (fast path)": resolve_model(DEFAULT_MODEL),
             "default model, int8 file (CPU)": resolve_model(DEFAULT_CPU_MODEL)}[which]
    short, long = long_files
    short_s, short_mb = peak_rss_mb(model, short)
    long_s, long_mb = peak_rss_mb(model, long)
    print(f"\n{which}: peak RSS {short_s:.0f} s → {short_mb:.1f} MB; {long_s:.0f} s → {long_mb:.1f} MB")
    assert short_s == pytest.approx(180, abs=0.1) and long_s == pytest.approx(10800, abs=0.1)
    assert long_mb - short_mb < 30, (short_mb, long_mb)
