"""The live defaults follow the music: measured on the shipped model with the daemon's own settings.

A stream is built from shared clips (classical, then metal, then talk by espeak-ng) and fed through
service.live.LiveTagger with service.config.LiveSection's defaults; training/live_eval.py measured the
defaults over many pairs (numbers in the README and the model card).
"""

from __future__ import annotations

import numpy as np
from conftest import DATA

from service.config import LiveSection
from service.live import LiveTagger
from tagger import Tagger
from tagger.decode import decode_file
from tagger.ensemble import NO_MUSIC
from training.negatives import SPEECH_TEXTS, espeak

SWITCH_LIMIT_S = 8.0  # the worst case; the measured median is lower (README)


class Changes:
    def __init__(self) -> None:
        self.events: list = []

    def live(self, event) -> None:
        pass

    def genre_changed(self, event) -> None:
        self.events.append(event)


def test_live_defaults_follow_a_switch_and_talk_without_flapping() -> None:
    tagger = Tagger()
    rate = tagger.sample_rate
    defaults = LiveSection()
    parts = [decode_file(DATA / "gtzan" / "classical" / "classical.00002.flac", rate)[: 15 * rate],
             decode_file(DATA / "gtzan" / "metal" / "metal.00002.flac", rate)[: 15 * rate],
             espeak(SPEECH_TEXTS["en"], "en", "", rate)[: 15 * rate]]
    own = []
    for audio in parts[:2]:
        stream = tagger.stream(eager=False, fast=tagger.fast)
        stream.feed(audio)
        own.append(stream.finish()["genre"].top)
    assert own[0] != own[1], own
    sink = Changes()
    live = LiveTagger(tagger, "test", rate, defaults.horizon_seconds or None, defaults.hysteresis, sink)
    block = int(defaults.block_seconds * rate * 5)  # 0.25 s: the cadence of slices is the hop, not the block
    audio = np.concatenate(parts)
    for start in range(0, audio.size, block):
        live.feed(audio[start:start + block])
    changes = [(e.stream_s, e.current) for e in sink.events]
    switches = [len(parts[0]) / rate, (len(parts[0]) + len(parts[1])) / rate]
    # One announcement per part, in order, each within the limit of its start (the first from the start).
    assert [c for _, c in changes] == [own[0], own[1], NO_MUSIC], changes
    assert changes[1][0] - switches[0] <= SWITCH_LIMIT_S, changes
    assert changes[2][0] - switches[1] <= SWITCH_LIMIT_S, changes
