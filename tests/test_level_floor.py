"""The level floor: a file quieter than the model's ``level_floor_dbfs`` is analysed raised to it.

Real audio (an FMA clip the model never trained on, read from ../shared/data and written only to tmp), the
shipped default model (whose manifest states the floor) and a copy of it whose manifest lacks the key
(metadata rewritten, graph unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DATA, encode

import tagger.level
import tagger.pipeline
from tagger import Tagger
from tagger.decode import decode_file
from tagger.errors import ModelError
from tagger.level import STEP_SECONDS, LevelMeter, analyse_floored, level_dbfs
from tagger.model import MANIFEST_KEY, read_manifest

RATE = 16000
# A jazz clip (about -16 dBFS; own answer jazz) played 30 dB down: about -46 dBFS, below the floor. Without
# the floor the shipped model calls that copy classical at 95 % (models/msd-musicnn-gtzan.floor.json).
CLIP = DATA / "fma" / "001082.mp3"
QUIET_DB = -30.0


@pytest.fixture(scope="module")
def tracks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The clip at its own level (the file itself) and 30 dB down, and 10 s of digital silence (16-bit WAV)."""
    folder = tmp_path_factory.mktemp("levels")
    quiet = decode_file(CLIP, RATE) * np.float32(10.0 ** (QUIET_DB / 20.0))
    return {"own": CLIP, "quiet": encode(quiet, RATE, folder / "quiet.wav", "pcm_s16le", "wav"),
            "silence": encode(np.zeros(10 * RATE, np.float32), RATE, folder / "silence.wav", "pcm_s16le", "wav")}


def probabilities(result) -> dict[str, float]:
    return {s.label: s.score for s in result.outputs["genre"].scores}


def test_a_quiet_track_is_analysed_raised_and_keeps_its_genre(floored: Tagger, unfloored: Tagger,
                                                              tracks: dict[str, Path]) -> None:
    own = floored.tag_file(tracks["own"])
    quiet = floored.tag_file(tracks["quiet"])
    floor = floored.manifest.level_floor_dbfs
    assert quiet.level_dbfs == pytest.approx(own.level_dbfs + QUIET_DB, abs=0.1)
    assert quiet.gain_db == pytest.approx(floor - quiet.level_dbfs, abs=1e-6)
    assert quiet.music and quiet.outputs["genre"].top == own.outputs["genre"].top
    # Without the floor the same quiet file reads as a confident classical (the bug this fixes).
    before = unfloored.tag_file(tracks["quiet"])
    assert before.gain_db == 0.0 and before.outputs["genre"].top != own.outputs["genre"].top
    doc = quiet.as_dict()
    assert doc["gain_db"] == pytest.approx(quiet.gain_db, abs=0.01) and doc["level_dbfs"] < floor


def test_the_chart_and_models_say_so(floored: Tagger, tracks: dict[str, Path], capsys) -> None:
    from tagger.chart import render_track
    from tagger.cli import main

    quiet = floored.tag_file(tracks["quiet"])
    chart = render_track("quiet.wav", quiet.duration_s, quiet.outputs, 3, 100, level_dbfs=quiet.level_dbfs,
                         gain_db=quiet.gain_db)
    assert f"quiet track ({quiet.level_dbfs:.1f} dBFS): analysed raised by {quiet.gain_db:.1f} dB" in chart
    own = floored.tag_file(tracks["own"])
    assert "quiet track" not in render_track("own", own.duration_s, own.outputs, 3, 100, level_dbfs=own.level_dbfs,
                                             gain_db=own.gain_db)
    assert main(["models", str(floored.engine.path)]) == 0
    floor = floored.manifest.level_floor_dbfs
    assert f"level floor: {floor:g} dBFS" in capsys.readouterr().out


def test_a_track_inside_the_range_is_analysed_exactly_as_before(floored: Tagger, unfloored: Tagger,
                                                                tracks: dict[str, Path]) -> None:
    now, before = floored.tag_file(tracks["own"]), unfloored.tag_file(tracks["own"])
    assert now.level_dbfs > floored.manifest.level_floor_dbfs
    assert now.gain_db == 0.0 and now.level_dbfs == before.level_dbfs
    assert probabilities(now) == probabilities(before)  # identical, not close
    assert now.music_probability == before.music_probability


def test_a_model_without_the_key_raises_nothing(unfloored: Tagger, tracks: dict[str, Path]) -> None:
    assert unfloored.manifest.level_floor_dbfs is None
    result = unfloored.tag_file(tracks["quiet"])
    assert result.gain_db == 0.0 and result.level_dbfs < -35.0
    # As before the floor existed: the stream fed the decoded samples as they are.
    stream = unfloored.stream(eager=False, fast=unfloored.fast)
    stream.feed(decode_file(tracks["quiet"], RATE))
    assert {s.label: s.score for s in stream.finish()["genre"].scores} == pytest.approx(probabilities(result),
                                                                                      abs=1e-6)


def test_the_library_keeps_each_tracks_level_and_gain_and_shows_them(floored: Tagger, tracks: dict[str, Path],
                                                                     tmp_path: Path, capsys) -> None:
    """Schema v10: the daemon's record (record_result) and tag --write-tags' (record_file_result) store the
    level and the gain; `library show` and `list --json` show them."""
    from service.library import Library
    from tagger.cli import main

    db = tmp_path / "library.db"
    library = Library(db)
    results = {}
    for name in ("quiet", "own"):  # as the daemon does: discovered, queued, tagged, recorded
        copy = tmp_path / f"{name}{tracks[name].suffix}"
        copy.write_bytes(tracks[name].read_bytes())
        assert library.discover(copy) == "queued"
        row = library.next_pending()
        results[name] = floored.tag_file(copy)
        assert library.record_result(row.id, results[name], row.fingerprint)
    silence = floored.tag_file(tracks["silence"])
    library.record_file_result(tracks["silence"], silence, 0, 0.0, "")
    stored = dict((Path(p).stem, (level, gain)) for p, level, gain in
                  library.db.execute("SELECT path, level_dbfs, gain_db FROM tracks").fetchall())
    library.close()
    quiet, own = results["quiet"], results["own"]
    assert quiet.gain_db > 0.0 and own.gain_db == 0.0
    assert stored == {"quiet": (quiet.level_dbfs, quiet.gain_db), "own": (own.level_dbfs, 0.0),
                      "silence": (None, 0.0)}
    lib = ["library", "--library", str(db)]
    assert main([*lib, "show", str(tmp_path / "quiet.wav")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["level_dbfs"], shown["gain_db"]) == (quiet.level_dbfs, quiet.gain_db)
    assert shown["level"] == (f"{quiet.level_dbfs:.1f} dBFS: quiet, analysed raised by {quiet.gain_db:.1f} dB to "
                              "the model's level floor")
    assert main([*lib, "show", str(tracks["silence"])]) == 0
    assert json.loads(capsys.readouterr().out)["level"] == "silence (nothing above -70 dBFS): not raised"
    assert main([*lib, "list", "--json"]) == 0
    listed = {Path(r["path"]).stem: (r["level_dbfs"], r["gain_db"]) for r in
              map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed == stored
    assert main([*lib, "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["level"] == {"raised": 1, "unknown": 0}
    assert main([*lib, "stats"]) == 0
    shown = capsys.readouterr().out
    assert "  1 file quieter than its model's level floor: analysed raised to it\n" in shown
    assert "level unknown" not in shown


def test_digital_silence_stays_no_music_and_is_not_raised(floored: Tagger, tracks: dict[str, Path]) -> None:
    result = floored.tag_file(tracks["silence"])
    assert result.music is False and result.level_dbfs is None and result.gain_db == 0.0


def test_the_ray_path_raises_a_quiet_track_as_tag_file_does(floored: Tagger, tracks: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from service.batch_ray import ModelActor, track_frames

    # Both paths run their passes through the one helper (tagger.level.analyse_floored).
    calls: list[float] = []

    def spy(*args, **kwargs):
        passes = analyse_floored(*args, **kwargs)
        calls.append(passes.gain_db)
        return passes

    monkeypatch.setattr(tagger.level, "analyse_floored", spy)
    monkeypatch.setattr(tagger.pipeline, "analyse_floored", spy)
    arguments = {"model": None, "coverage": "full"}
    data = track_frames(str(tracks["quiet"]), arguments)
    direct = floored.tag_file(tracks["quiet"])
    assert calls == [data["gain_db"], direct.gain_db]
    assert data["gain_db"] == pytest.approx(direct.gain_db) and data["gain_db"] > 0.0
    result = ModelActor(arguments)._tag(str(tracks["quiet"]), data)
    assert result.gain_db == direct.gain_db and result.level_dbfs == direct.level_dbfs
    assert probabilities(result) == pytest.approx(probabilities(direct), abs=1e-4)


def test_the_daemons_isolated_decoder_is_raised_the_same(floored: Tagger, tracks: dict[str, Path]) -> None:
    """The daemon tags library files with tag_file and its crash-isolated decoder: the quiet file is decoded
    twice there too, and raised."""
    from tagger.isolated import IsolatedDecoder

    direct = floored.tag_file(tracks["quiet"])
    with IsolatedDecoder() as decoder:
        isolated = floored.tag_file(tracks["quiet"], decode=decoder.blocks)
    assert isolated.gain_db == direct.gain_db > 0.0
    assert probabilities(isolated) == pytest.approx(probabilities(direct), abs=1e-6)


@pytest.mark.parametrize(("edit", "message"), [
    ({"level_floor_dbfs": -80}, r"level_floor_dbfs -80 is not within \(-70, 0\) dBFS"),
    ({"level_floor_dbfs": 3}, r"level_floor_dbfs 3 is not within"),
    ({"level_floor_dbfs": "quiet"}, r"level_floor_dbfs 'quiet' is not a number"),
    ({"level_floor_dbfs": True}, r"level_floor_dbfs True is not a number"),
    ({"level_floor_dbfs": -30, "level_max_gain_db": 0}, r"level_max_gain_db 0 is not within \(0, 60\] dB"),
    ({"level_floor_dbfs": -30, "level_max_gain_db": 90}, r"level_max_gain_db 90 is not within"),
    ({"level_max_gain_db": 20}, r"level_max_gain_db without level_floor_dbfs"),
])
def test_a_bad_floor_in_a_manifest_is_a_clear_error(tiny_model: Path, tmp_path: Path, edit: dict,
                                                    message: str) -> None:
    proto = onnx.load(str(tiny_model))
    entry = next(p for p in proto.metadata_props if p.key == MANIFEST_KEY)
    entry.value = json.dumps({**json.loads(entry.value), **edit})
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelError, match=f"{bad}: {message}"):
        read_manifest(bad)


def test_the_gated_level_ignores_silence_and_how_samples_are_split() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(5 * RATE) / RATE
    sine = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    assert level_dbfs(sine, RATE) == pytest.approx(-3.01, abs=0.01)  # a full-scale sine, RMS
    # A 20 s silent intro and a 0.5 s pause barely move it (the blocks straddling the pause's edges count,
    # 0.2 dB); the plain RMS of the whole file reads 4.8 dB quieter.
    with_silence = np.concatenate([np.zeros(20 * RATE, np.float32), 0.1 * sine, np.zeros(RATE // 2, np.float32),
                                   0.1 * sine])
    assert level_dbfs(with_silence, RATE) == pytest.approx(-23.01, abs=0.3)
    plain = 10 * np.log10(np.mean(np.square(with_silence, dtype=np.float64)))
    assert plain < level_dbfs(with_silence, RATE) - 4.0
    meter = LevelMeter(RATE)
    cuts = np.sort(rng.integers(0, with_silence.size, 50))
    for part in np.split(with_silence, cuts):
        meter.push(part)
    assert meter.level_dbfs == pytest.approx(level_dbfs(with_silence, RATE), abs=1e-9)
    assert level_dbfs(np.zeros(RATE, np.float32), RATE) is None


def test_the_meter_says_whether_its_last_sub_block_was_audible_and_its_horizon_full() -> None:
    """What RunningFloor asks the meter: the newest 0.1 s sub-block over -70 dBFS, and a horizon's worth held."""
    step = round(RATE * STEP_SECONDS)
    meter = LevelMeter(RATE, horizon_seconds=1.0)
    assert not meter.last_step_audible and not meter.horizon_full
    meter.push(np.full(step - 1, 10 ** (-60 / 20), np.float32))  # -60 dBFS, one sample short of a sub-block
    assert not meter.last_step_audible
    meter.push(np.full(1, 10 ** (-60 / 20), np.float32))
    assert meter.last_step_audible and not meter.horizon_full
    meter.push(np.full(8 * step, 10 ** (-75 / 20), np.float32))  # under the gate
    assert not meter.last_step_audible and not meter.horizon_full  # 9 of the horizon's 10 sub-blocks
    meter.push(np.full(step, 10 ** (-75 / 20), np.float32))
    assert meter.horizon_full and meter.level_dbfs is not None  # the -60 dBFS sub-block is still in it
    meter.push(np.full(step, 10 ** (-75 / 20), np.float32))
    assert meter.horizon_full and meter.level_dbfs is None  # ... and now dropped
    assert not LevelMeter(RATE).horizon_full  # no horizon: never full
    unbounded = LevelMeter(RATE)
    unbounded.push(np.full(20 * step, 0.5, np.float32))
    assert unbounded.last_step_audible and not unbounded.horizon_full


def test_the_two_pass_helper_raises_only_a_file_under_the_floor() -> None:
    """analyse_floored: one measured pass; a second pass raised by one constant gain only under the floor."""
    t = np.arange(3 * RATE) / RATE
    sine = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)  # -3.01 dBFS
    blocks = np.array_split(sine, 7)

    def run(scale: float, floor: float | None, cap: float = 30.0):
        seen: list[np.ndarray] = []

        def one_pass(prepare):
            out = [prepare(b * np.float32(scale)) for b in blocks]
            seen.append(np.concatenate(out))
            return len(seen)

        return analyse_floored(one_pass, RATE, floor, cap), seen

    loud, seen = run(1.0, -32.0)
    assert (loud.result, loud.gain_db) == (1, 0.0) and loud.level_dbfs == pytest.approx(-3.01, abs=0.01)
    assert np.array_equal(seen[0], sine)
    quiet, seen = run(10.0 ** (-40 / 20), -32.0)  # -43 dBFS: raised by 11 dB on a second pass
    assert quiet.result == 2 and quiet.level_dbfs == pytest.approx(-43.01, abs=0.01)
    assert quiet.gain_db == pytest.approx(-32.0 - quiet.level_dbfs)
    assert level_dbfs(seen[1], RATE) == pytest.approx(-32.0, abs=1e-4)
    assert np.allclose(seen[1], seen[0] * 10.0 ** (quiet.gain_db / 20.0), rtol=1e-6)
    capped, _ = run(10.0 ** (-40 / 20), -32.0, cap=5.0)
    assert (capped.result, capped.gain_db) == (2, 5.0)
    no_floor, _ = run(10.0 ** (-40 / 20), None)
    assert (no_floor.result, no_floor.gain_db) == (1, 0.0) and no_floor.level_dbfs is not None
    silence, _ = run(0.0, -32.0)
    assert (silence.result, silence.gain_db, silence.level_dbfs) == (1, 0.0, None)
    # A quiet file never holds both passes' results (a long track's features twice): the measured one is gone
    # when the raised pass starts.
    import weakref

    class Features:
        pass

    firsts: list[weakref.ref] = []

    def one_pass(prepare):
        alive_before = [ref() is not None for ref in firsts]
        for b in blocks:
            prepare(b * np.float32(10.0 ** (-40 / 20)))
        features = Features()
        features.alive_before = alive_before
        firsts.append(weakref.ref(features))
        return features

    second = analyse_floored(one_pass, RATE, -32.0).result
    assert second.alive_before == [False] and firsts[1]() is second


def test_a_batch_shard_from_before_the_floor_imports_its_level_as_unknown_not_silence(
        floored: Tagger, tracks: dict[str, Path], tmp_path: Path) -> None:
    """A shard written before results carried level_dbfs and gain_db (before 708eadb) is still imported: its
    files' level is unknown (NULL, as a row tagged before v10), never "silence" nor counted as not raised; a
    shard that carries them keeps them."""
    from service.batch import ShardWriter, file_identity, import_shards, result_row
    from service.library import Library

    result = floored.tag_file(tracks["quiet"])
    assert result.gain_db > 0.0
    row = result_row(str(tracks["quiet"]), result, None, file_identity(str(tracks["quiet"])))
    old = json.loads(row["result"])
    del old["level_dbfs"], old["gain_db"]
    for name, shard_row in (("new", row), ("old", {**row, "result": json.dumps(old)})):
        writer = ShardWriter(tmp_path / name)
        writer.add(shard_row)
        writer.flush()
        library = Library(tmp_path / f"{name}.db")
        assert import_shards(library, tmp_path / name)["tagged"] == 1
        track = library.track(str(tracks["quiet"]))
        if name == "new":
            # (a shard's result JSON rounds them to 0.01 dB)
            assert (track["level_dbfs"], track["gain_db"]) == pytest.approx((result.level_dbfs, result.gain_db),
                                                                             abs=0.006)
            assert library.stats()["level"] == {"raised": 1, "unknown": 0}
        else:
            assert (track["level_dbfs"], track["gain_db"]) == (None, None) and track["level"].startswith("unknown")
            assert library.stats()["level"] == {"raised": 0, "unknown": 1}
        assert track["genres"]  # the genres are imported either way
        library.close()
