"""Decoding through PyAV: every format, block sizes, and one clear error per bad file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tagger.decode import decode_blocks, decode_file, mpeg_audio_frame_bytes, probe
from tagger.errors import DecodeError


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3", "ogg", "opus", "m4a", "aiff"])
def test_every_format_decodes_to_mono_at_the_requested_rate(format_files: dict[str, Path], excerpt,
                                                           suffix: str) -> None:
    audio, rate = excerpt
    decoded = decode_file(format_files[suffix], 16000)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # Lossy codecs add priming samples; everything stays within 60 ms of 20 s.
    assert abs(decoded.size / 16000 - audio.size / rate) < 0.06
    assert 0.05 < float(np.sqrt(np.mean(decoded ** 2))) < 1.0


def test_realworld_formats_probe_and_decode_in_bounded_blocks(realworld: Path) -> None:
    path = realworld / "singularity-music" / "Awakening.ogg"
    info = probe(path)
    assert info.codec == "vorbis" and info.sample_rate == 48000 and info.channels == 2
    sizes = [b.size for b in decode_blocks(path, 22050, block_seconds=2.0)]
    assert max(sizes) == 44100 and all(s <= 44100 for s in sizes)
    assert abs(sum(sizes) / 22050 - info.duration_s) < 0.05


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    import av

    rate = 16000
    t = np.arange(rate) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), np.zeros(rate)
    path = tmp_path / "lr.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_f32le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([left, right]).astype(np.float32), format="fltp", layout="stereo")
        frame.sample_rate = rate
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    mono = decode_file(path, rate)
    np.testing.assert_allclose(mono, (left / 2).astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("name", ["asc-music/frontiers.mp3", "warzone2100-music/menu.opus"])
def test_resampled_stereo_is_the_mean_of_the_resampled_channels(realworld: Path, name: str) -> None:
    # Stereo is downmixed by FFmpeg before resampling (one channel to resample); the result must be the
    # channels' mean, as resampling both channels and averaging them gives.
    import av

    path = realworld / name
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 2
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=16000)
        parts = [out.to_ndarray().mean(axis=0) for frame in container.decode(stream)
                 for out in resampler.resample(frame)]
        parts += [out.to_ndarray().mean(axis=0) for out in resampler.resample(None)]
    reference = np.concatenate(parts)
    decoded = decode_file(path, 16000)
    assert decoded.size == reference.size
    np.testing.assert_allclose(decoded, reference, atol=2e-6)


def test_bad_files_raise_one_line_errors(tmp_path: Path, realworld: Path) -> None:
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 50)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    data = (realworld / "asc-music" / "machine_wars.mp3").read_bytes()
    truncated = tmp_path / "truncated.mp3"
    truncated.write_bytes(data[: len(data) // 3])
    unreadable = tmp_path / "locked.wav"
    unreadable.write_bytes(b"RIFF")
    os.chmod(unreadable, 0)
    cases = {
        text: "not a readable audio file",
        empty: "empty file",
        truncated: "truncated",
        tmp_path / "missing.mp3": "no such file",
        tmp_path: "is a directory",
    }
    if os.geteuid() != 0:  # root reads anything
        cases[unreadable] = "permission denied"
    for path, message in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_file(path, 16000)
        assert message in str(info.value)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(str(path))


def test_mpeg_frame_header_lengths() -> None:
    assert mpeg_audio_frame_bytes(bytes.fromhex("fffb9064")) == 417  # MPEG-1 L3 128 kbit/s 44.1 kHz
    assert mpeg_audio_frame_bytes(bytes.fromhex("fffb9264")) == 418  # with padding
    assert mpeg_audio_frame_bytes(bytes.fromhex("fff39064")) == 261  # MPEG-2 L3 80 kbit/s 22.05 kHz
    assert mpeg_audio_frame_bytes(b"ID3\x03") is None


def test_read_ahead_keeps_order_raises_decoder_errors_and_stops_early() -> None:
    import threading

    from tagger.decode import read_ahead

    assert [int(b[0]) for b in read_ahead(iter([np.full(3, i) for i in range(20)]), depth=2)] == list(range(20))

    def failing():
        yield np.zeros(1)
        raise DecodeError("x.mp3", "corrupt audio data at 0.1 s")

    got = []
    with pytest.raises(DecodeError, match="corrupt audio data"):
        for block in read_ahead(failing()):
            got.append(block)
    assert len(got) == 1

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield np.full(1, i)
            i += 1

    reader = read_ahead(endless(), depth=3)
    assert int(next(reader)[0]) == 0
    reader.close()  # the consumer leaves early: the decoding thread ends
    assert not any(t.name == "decode" and t.is_alive() for t in threading.enumerate())
    assert len(produced) < 10
