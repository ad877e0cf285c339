"""A corpus of hostile and unlucky inputs, generated on the spot (no audio of ours is committed).

Each :class:`Case` is one kind of input and what must become of it: tagged, or an error whose message
matches ``expect``. Files are synthetic tones and noise (the tiny test model needs 2.56 s), plus cut,
corrupted or lying copies of files made here. :func:`build` writes them all into a folder.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

TAGGED = "tagged"


@dataclass(frozen=True)
class Case:
    """name: the file (or folder) name, as bytes when it is not UTF-8. expect: TAGGED, or a regular
    expression the error message must match. daemon/tag: whether the case applies to that front door."""

    kind: str
    name: str | bytes
    expect: str
    daemon: bool = True
    tag: bool = True

    @property
    def fsname(self) -> str:
        return os.fsdecode(self.name)


def tones(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(frames, channels) float64 in [-1, 1]: a different chord and some noise in each channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    cols = [0.25 * np.sin(2 * np.pi * (220 + 55 * c) * t) + 0.15 * np.sin(2 * np.pi * (660 + 30 * c) * t)
            + 0.03 * rng.standard_normal(t.size) for c in range(channels)]
    return np.stack(cols, axis=1)


def wav_bytes(samples: np.ndarray, rate: int, sample_format: str = "s16", data_size: int | None = None,
              riff_size: int | None = None, channel_mask: int | None = None) -> bytes:
    """A RIFF WAVE file; ``data_size``/``riff_size`` override the sizes the header declares.

    sample_format: u8, s16, s24, s32 (integer PCM), f32, f64 (IEEE float), mulaw.
    """
    channels = samples.shape[1]
    if sample_format == "u8":
        body, tag, bits = np.clip(samples * 127 + 128, 0, 255).astype(np.uint8).tobytes(), 1, 8
    elif sample_format == "s16":
        body, tag, bits = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes(), 1, 16
    elif sample_format == "s24":
        ints = (np.clip(samples, -1, 1) * 8388607).astype("<i4").reshape(-1)
        body = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in ints)
        tag, bits = 1, 24
    elif sample_format == "s32":
        body, tag, bits = (np.clip(samples, -1, 1) * 2147483647).astype("<i4").tobytes(), 1, 32
    elif sample_format == "f32":
        body, tag, bits = samples.astype("<f4").tobytes(), 3, 32
    elif sample_format == "f64":
        body, tag, bits = samples.astype("<f8").tobytes(), 3, 64
    elif sample_format == "mulaw":
        mu = np.sign(samples) * np.log1p(255 * np.abs(np.clip(samples, -1, 1))) / np.log1p(255)
        body, tag, bits = (~((mu * 127).astype(np.int8).view(np.uint8))).tobytes(), 7, 8
    else:
        raise ValueError(sample_format)
    block = channels * bits // 8
    if channel_mask is not None:
        fmt = struct.pack("<HHIIHHHHIH14s", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits,
                          channel_mask, tag, b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x008\x9bq")
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    data_size = len(body) if data_size is None else data_size
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size) + body
    riff_size = len(chunks) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff_size & 0xFFFFFFFF) + chunks


def encode(path: Path, samples: np.ndarray, rate: int, codec: str, fmt: str, layout: str) -> bytes:
    """Encode (frames, channels) samples with PyAV; returns the file's bytes."""
    channels = samples.shape[1]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":  # FFmpeg's own Vorbis encoder is marked experimental
            stream.codec_context.options = {"strict": "experimental"}
        resampler = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout=layout,
                                      rate=rate)
        for start in range(0, len(samples), 4096):
            chunk = np.ascontiguousarray(samples[start:start + 4096].astype(np.float32)).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
            frame.sample_rate = rate
            for out in resampler.resample(frame):
                container.mux(stream.encode(out))
        for out in resampler.resample(None):
            container.mux(stream.encode(out))
        container.mux(stream.encode(None))
    assert channels == len(av.AudioLayout(layout).channels)
    return path.read_bytes()


CLEAR = {
    "rate": r"sample rate .* outside",
    "truncated": r"truncated",
    "nonfinite": r"not finite|NaN|infinit",
    "range": r"out of range",
}


def build(folder: Path) -> list[Case]:
    """Write every case into ``folder`` (created); return the cases. Needs no network and no data."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(kind: str, name: str | bytes, expect: str, content: bytes | None = None,
            make: Callable[[Path], None] | None = None, daemon: bool = True, tag: bool = True) -> None:
        path = folder / os.fsdecode(name)
        if content is not None:
            path.write_bytes(content)
        if make is not None:
            make(path)
        cases.append(Case(kind, name, expect, daemon, tag))

    rate = 16000
    mono = tones(3.0, rate)
    # -- valid but unusual: every one of these must be tagged -----------------------------------------
    add("mono 16-bit WAV", "good.wav", TAGGED, wav_bytes(mono, rate))
    for channels in (3, 4, 6, 8, 16, 32):
        add(f"{channels}-channel WAV, no layout", f"ch{channels}.wav", TAGGED,
            wav_bytes(tones(3.0, rate, channels), rate))
    add("5.1 WAV with a channel mask", "mask51.wav", TAGGED,
        wav_bytes(tones(3.0, rate, 6), rate, "s16", channel_mask=0x3F))
    add("7.1 WAV with a channel mask", "mask71.wav", TAGGED,
        wav_bytes(tones(3.0, rate, 8), rate, "s16", channel_mask=0x63F))
    add("two channels that are not left/right", "dual.wav", TAGGED,
        wav_bytes(tones(3.0, rate, 2), rate, "s16", channel_mask=0x5))  # left + centre
    add("5.1 FLAC", "surround.flac", TAGGED,
        make=lambda p: encode(p, tones(3.0, 48000, 6), 48000, "flac", "flac", "5.1"))
    add("7.1 Opus", "surround.opus", TAGGED,
        make=lambda p: encode(p, tones(3.0, 48000, 8), 48000, "libopus", "ogg", "7.1"))
    add("7.1 AAC", "surround.m4a", TAGGED,
        make=lambda p: encode(p, tones(3.0, 48000, 8), 48000, "aac", "ipod", "7.1"))
    for sample_format in ("u8", "s24", "s32", "f32", "f64", "mulaw"):
        add(f"WAV {sample_format}", f"fmt-{sample_format}.wav", TAGGED, wav_bytes(mono, rate, sample_format))
    add("8 kHz WAV", "low8k.wav", TAGGED, wav_bytes(tones(3.0, 8000), 8000))
    add("192 kHz WAV", "high192k.wav", TAGGED, wav_bytes(tones(3.0, 192000), 192000))
    add("upper-case extension", "LOUD.WAV", TAGGED, wav_bytes(mono, rate))
    add("name that is not UTF-8", b"caf\xe9-\xff.wav", TAGGED, wav_bytes(mono, rate))
    add("name with a newline", "two\nlines.wav", TAGGED, wav_bytes(mono, rate))
    add("name starting with a dash", "-dash.wav", TAGGED, wav_bytes(mono, rate))
    add("255-byte name", "n" * 251 + ".wav", TAGGED, wav_bytes(mono, rate))
    add("emoji and combining marks in the name", "e\u0301te\u0301 \U0001f3b5.wav", TAGGED, wav_bytes(mono, rate))
    add("same content as another file", "twin.wav", TAGGED, wav_bytes(mono, rate))
    add("junk chunk after the data", "trailing-junk.wav", TAGGED,
        wav_bytes(mono, rate) + b"LIST" + struct.pack("<I", 4) + b"INFO")

    # -- lying rates and sizes ---------------------------------------------------------------------
    add("WAV at 1 Hz (8 MB: 46 days)", "rate1.wav", CLEAR["rate"],
        wav_bytes(np.zeros((4 * 1024 * 1024, 1)), 1))
    add("WAV at 100 Hz", "rate100.wav", CLEAR["rate"], wav_bytes(tones(7200.0, 100), 100))
    add("WAV at 3 MHz", "rate3m.wav", CLEAR["rate"], wav_bytes(tones(1.0, 3_000_000), 3_000_000))
    add("WAV declaring 4 GiB with a 1 KB body", "huge-header.wav", CLEAR["truncated"],
        wav_bytes(mono[:512], rate, data_size=0xFFFFFF00, riff_size=0xFFFFFFF0))
    add("WAV declaring twice its body", "half.wav", CLEAR["truncated"],
        wav_bytes(mono, rate, data_size=2 * mono.size * 2))
    add("WAV header without samples", "header-only.wav", r"no audio samples|too short",
        wav_bytes(mono[:0], rate))
    add("10 ms of audio", "short.wav", r"too short", wav_bytes(mono[:160], rate))
    add("WAV with 100 channels", "ch100.wav", r"channels", wav_bytes(tones(0.5, rate, 100), rate))

    # -- cut and corrupted ---------------------------------------------------------------------------
    ogg = encode(folder / "whole.ogg.tmp", tones(20.0, 44100, 2), 44100, "vorbis", "ogg", "stereo")
    (folder / "whole.ogg.tmp").unlink()
    add("Ogg Vorbis cut at 1 %", "cut1.ogg", CLEAR["truncated"], ogg[: len(ogg) // 100])
    add("Ogg Vorbis cut at 50 %", "cut50.ogg", CLEAR["truncated"], ogg[: len(ogg) // 2])
    flac = encode(folder / "whole.flac.tmp", tones(20.0, 44100, 2), 44100, "flac", "flac", "stereo")
    (folder / "whole.flac.tmp").unlink()
    add("FLAC header followed by garbage", "garbage.flac", r"truncated|corrupt",
        flac[:8192] + np.random.default_rng(5).bytes(len(flac) - 8192))
    add("FLAC cut at 30 %", "cut30.flac", r"truncated|corrupt", flac[: len(flac) * 3 // 10])
    mp3 = encode(folder / "whole.mp3.tmp", tones(20.0, 44100, 2), 44100, "libmp3lame", "mp3", "stereo")
    (folder / "whole.mp3.tmp").unlink()
    add("MP3 cut mid-frame", "cut.mp3", CLEAR["truncated"], mp3[: len(mp3) // 3 + 7])
    add("random bytes", "noise.flac", r"not a readable audio file|no audio|corrupt",
        np.random.default_rng(1).bytes(50_000))
    add("text named .mp3", "notes.mp3", r"not a readable audio file", b"this is not audio\n" * 100)
    add("empty file", "empty.wav", r"empty file", b"")

    # -- samples no model should see -------------------------------------------------------------------
    nan = mono.copy()
    nan[rate: rate + 10] = np.nan
    add("NaN samples", "nan.wav", CLEAR["nonfinite"], wav_bytes(nan, rate, "f32"))
    inf = mono.copy()
    inf[2 * rate] = np.inf
    add("infinite samples", "inf.wav", CLEAR["nonfinite"], wav_bytes(inf, rate, "f64"))
    add("samples of 1e30", "huge-values.wav", CLEAR["range"], wav_bytes(mono * 1e30, rate, "f32"))

    # -- not regular files -----------------------------------------------------------------------------
    add("FIFO named .wav", "pipe.wav", r"FIFO", make=lambda p: os.mkfifo(p))
    add("socket named .wav", "sock.wav", r"socket", make=_bind_socket)
    add("symlink to /dev/zero", "zero.wav", r"character device", make=lambda p: p.symlink_to("/dev/zero"))
    add("dangling symlink", "dangling.wav", r"dangling", make=lambda p: p.symlink_to(folder / "no-such-file"))
    add("symlink loop", "loop.wav", r"symlink loop", make=lambda p: p.symlink_to(p.name))
    add("folder named like audio (holding a good file)", "folder.mp3", TAGGED,
        make=lambda p: (p.mkdir(), (p / "inner.wav").write_bytes(wav_bytes(tones(3.0, rate, seed=7), rate))))
    add("unreadable file", "locked.wav", r"ermission denied",
        make=lambda p: (p.write_bytes(wav_bytes(mono, rate)), p.chmod(0o000)))
    add("unreadable folder", "locked-folder", r"ermission denied", tag=False,
        make=lambda p: (p.mkdir(), (p / "hidden.wav").write_bytes(wav_bytes(mono, rate)), p.chmod(0o000)))
    return cases


def _bind_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the socket file stays


def outcome_path(folder: Path, case: Case) -> Path:
    """The path the case's outcome is recorded under (the inner file for a folder named like audio)."""
    path = folder / case.fsname
    return path / "inner.wav" if case.fsname == "folder.mp3" else path
