"""The training command lines refuse a bad argument with one error line naming what was typed (argparse, exit 2),
before any slow work: no model loads, no audio is decoded, no model trains, nothing is written.

The slow step each command would start next is replaced by one that fails the test if reached, so a check that
comes too late (or not at all) fails here in a second instead of running for minutes.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO

from tagger import Tagger

REPO_MODELS = REPO / "models"


class SlowWorkStarted(Exception):
    """Raised by the stand-in for a command's first slow step."""


def slow_work(*_args, **_kwargs):
    raise SlowWorkStarted("slow work started before the arguments were checked")


def refused(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line ``main(argv)`` exits 2 with."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in line
    return line


# (argv, a part of the error line): each refused by training.level_floor before its model loads.
LEVEL_FLOOR_REFUSALS = [
    (["--floors", "abc"], "--floors: 'abc': not comma-separated floors"),
    (["--floors", "none,-30,5"], "--floors: 'none,-30,5': not comma-separated floors, each none or a level in (-70, "),
    (["--floors", ""], "--floors: '': "),
    (["--max-gain", "-5"], "--max-gain: -5: not within (0, 60] dB"),
    (["--max-gain", "100"], "--max-gain: 100: not within (0, 60] dB"),
    (["--parts", "bogus"], "--parts: 'bogus': not comma-separated names of unseen, labelled, non-music"),
    (["--parts", "unseen,bogus"], "--parts: 'unseen,bogus': "),
    (["--data", "/nonexistent"], "--data: '/nonexistent': no fma, realworld, gtzan/labels.csv"),
    (["--parts", "non-music", "--out", "/nonexistent/floor.json"],
     "--out: '/nonexistent/floor.json': no folder '/nonexistent' to write it in"),
]
# ... by training.live_eval before a model loads or a clip is read.
LIVE_EVAL_REFUSALS = [
    (["--pairs", "0"], "--pairs: 0: not a positive number of switch streams"),
    (["--pairs", "-4"], "--pairs: -4: not a positive number"),
    (["--data", "/nonexistent"], "--data: '/nonexistent': no gtzan/labels.csv, fma, realworld"),
    (["--data", str(DATA), "--report", "/nonexistent.json"], "--report: '/nonexistent.json': no such file"),
    (["--data", str(DATA), "--in-sample", "--out", "/nonexistent/live.json"],
     "--out: '/nonexistent/live.json': no folder '/nonexistent' to write it in"),
]
# Per command: the slow steps it must not reach with a bad argument, and the --out it is given.
SLOW_STEPS = {"training.level_floor": (("Tagger",), "floor.json"),
              "training.live_eval": (("Tagger", "load_clips"), "live.json")}


@pytest.mark.parametrize(("command", "argv", "said"), [
    *[("training.level_floor", argv, said) for argv, said in LEVEL_FLOOR_REFUSALS],
    *[("training.live_eval", argv, said) for argv, said in LIVE_EVAL_REFUSALS],
])
def test_a_training_command_refuses_a_bad_argument_before_slow_work(
        command: str, argv: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(command)
    steps, out_name = SLOW_STEPS[command]
    for step in steps:
        monkeypatch.setattr(module, step, slow_work)
    out = tmp_path / out_name
    assert said in refused(module.main, ["--out", str(out), *argv], capsys)
    assert not out.exists()


def test_level_floor_asks_data_only_of_the_parts_that_read_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import training.level_floor as level_floor

    monkeypatch.setattr(level_floor, "Tagger", slow_work)
    out = ["--out", str(tmp_path / "floor.json")]
    line = refused(level_floor.main, ["--data", "/nonexistent", "--parts", "unseen", *out], capsys)
    assert line.endswith("--data: '/nonexistent': no fma, realworld there (needed by --parts unseen)")
    line = refused(level_floor.main, ["--data", str(tmp_path), "--parts", "labelled", *out], capsys)
    assert "--data: " + repr(str(tmp_path)) + ": no gtzan/labels.csv, gtzan-excerpts/labels.csv there" in line
    labelled = ["--data", str(DATA), "--parts", "labelled", *out]
    line = refused(level_floor.main, [*labelled, "--features", "/nonexistent"], capsys)
    assert "--features: '/nonexistent': no such folder" in line
    monkeypatch.chdir(tmp_path)  # where no models/ folder holds the card's cv.json
    line = refused(level_floor.main, [*labelled, "--features", str(tmp_path)], capsys)
    assert line.endswith("models/msd-musicnn-gtzan.cv.json: no such file (the labelled part retrains its head: run "
                         "from the repository root)")
    # The non-music part makes its own clips: no --data folder needed, the arguments pass on to the work.
    with pytest.raises(SlowWorkStarted):
        level_floor.main(["--data", "/nonexistent", "--parts", "non-music", "--floors", "none,-30",
                          "--max-gain", "60", *out])


def test_per_floor_tags_once_per_distinct_gain(tiny_model: Path) -> None:
    from tagger.level import floor_gain_db, level_dbfs
    from training.level_floor import per_floor, quantised16

    tagger = Tagger(tiny_model)
    rng = np.random.default_rng(5)
    audio = quantised16(0.01 * rng.standard_normal(4 * tagger.sample_rate).astype(np.float32))  # about -40 dBFS
    level = level_dbfs(audio, tagger.sample_rate)
    assert -45.0 < level < -35.0
    floors = (None, -50.0, -30.0, -20.0)
    rows = per_floor(tagger, audio, floors, 15.0)
    assert list(rows) == ["None", "-50.0", "-30.0", "-20.0"]
    for f in floors:
        assert rows[str(f)]["gain_db"] == round(floor_gain_db(level, f, 15.0), 2)
        assert rows[str(f)]["level_dbfs"] == round(level, 2)
    # No floor and a floor below the level: no gain, one tag shared; the 15 dB cap caps -20's raise.
    assert rows["None"] is rows["-50.0"] and rows["None"]["gain_db"] == 0.0
    assert 0.0 < rows["-30.0"]["gain_db"] < rows["-20.0"]["gain_db"] == 15.0


@pytest.mark.parametrize(("content", "said"), [
    (None, "No such file or directory"),
    ("[{\"artists\": [\"a\"]", "not JSON ("),
    ("{\"artists\": [\"a\"]}", "not a JSON list of halves"),
    ("[]", "not a JSON list of halves"),
    ("[{\"artist\": [\"a\"]}]", "half 0: not an object with \"artists\""),
    ("[{\"artists\": [\"a\"]}, {\"artists\": \"b\"}]", "half 1: artists 'b' is not a list of strings"),
    ("[{\"artists\": [\"a\"], \"sounds\": [\"no-such-sound\"]}]",
     "half 0: sounds ['no-such-sound'] are not non-music clips of training.negatives"),
])
def test_live_models_refuses_a_bad_halves_file(content: str | None, said: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import training.live_models as live_models

    monkeypatch.setattr(live_models, "build_half_models", slow_work)
    halves = tmp_path / "halves.json"
    if content is not None:
        halves.write_text(content)
    line = refused(live_models.main, ["--data", str(DATA), "--halves", str(halves), "--out", str(tmp_path / "m")],
                   capsys)
    assert f"--halves: {str(halves)!r}: {said}" in line
    assert not (tmp_path / "m").exists()


def test_live_models_checks_data_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import training.live_models as live_models

    monkeypatch.setattr(live_models, "build_half_models", slow_work)
    halves = tmp_path / "halves.json"
    halves.write_text(json.dumps([{"artists": ["a"]}, {"artists": ["b"], "sounds": []}]))
    line = refused(live_models.main, ["--data", "/nonexistent", "--halves", str(halves), "--out", str(tmp_path)],
                   capsys)
    assert "--data: '/nonexistent': no gtzan/labels.csv, gtzan-excerpts/labels.csv there" in line


def test_live_eval_refuses_a_model_it_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import training.live_eval as live_eval

    monkeypatch.setattr(live_eval, "load_clips", slow_work)
    base = ["--data", str(DATA), "--in-sample", "--out", str(tmp_path / "live.json")]
    assert "--model: nonexist: no such model (installed: " in refused(live_eval.main, [*base, "--model", "nonexist"],
                                                                      capsys)
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    assert f"--model: {junk}: cannot load ONNX model" in refused(live_eval.main, [*base, "--model", str(junk)], capsys)
    assert not (tmp_path / "live.json").exists()


def test_level_check_refuses_a_model_it_cannot_load_and_an_out_without_a_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import training.level_check as level_check

    out = tmp_path / "level.json"
    said = refused(level_check.main, ["--data", str(DATA), "--model", "nonexist", "--out", str(out)], capsys)
    assert "--model: nonexist: no such model (installed: " in said
    said = refused(level_check.main, ["--data", str(DATA), "--out", str(tmp_path / "nope" / "level.json")], capsys)
    assert f"--out: '{tmp_path / 'nope' / 'level.json'}': folder '{tmp_path / 'nope'}' does not exist" in said
    assert not out.exists()


def test_default_model_runtime_check_only_refuses_a_bad_argument_before_tagging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import training.default_model as default_model
    from training.shipped import MODEL_NAME

    monkeypatch.setattr(default_model, "runtime_check", slow_work)
    monkeypatch.setattr(default_model, "non_music_files", slow_work)
    out = tmp_path / "out"
    out.mkdir()
    report = out / f"{MODEL_NAME}.cv.json"

    def said(*argv: str) -> str:
        return refused(default_model.main, ["--data", str(DATA), "--out", str(out), "--runtime-check-only", *argv],
                       capsys)

    assert said().endswith(f"--out: {str(out)!r}: no {MODEL_NAME}.cv.json there (a full build writes it)")
    report.write_text("{\"tracks\": [")
    assert f"--out: {str(out)!r}: {MODEL_NAME}.cv.json is not readable JSON (" in said()
    report.write_text("{\"tracks\": []}")
    assert said().endswith(f"{MODEL_NAME}.cv.json has no runtime, tracks and cv entries (not a build's report)")
    report.write_text(json.dumps({"tracks": ["blues.00000", "nosuch.00001"], "runtime": {}, "cv": {}}))
    (out / f"{MODEL_NAME}.md").mkdir()  # the card's place taken by a folder: found before the minute of work
    assert said().endswith(f"--out: {str(out)!r}: {MODEL_NAME}.md is not a file (the card is written there)")
    (out / f"{MODEL_NAME}.md").rmdir()
    line = refused(default_model.main, ["--data", str(tmp_path), "--out", str(out), "--runtime-check-only"], capsys)
    assert line.endswith(f"--data: {str(tmp_path)!r}: no gtzan/labels.csv, gtzan-excerpts/labels.csv, fma, "
                         "realworld there")
    # A data folder whose fma and realworld folders hold no audio (the check ran to its end, then the card divided
    # by zero): refused up front.
    hollow = tmp_path / "hollow"
    for folder in ("gtzan", "gtzan-excerpts"):
        (hollow / folder).mkdir(parents=True)
        (hollow / folder / "labels.csv").symlink_to(DATA / folder / "labels.csv")
    (hollow / "fma").mkdir()
    (hollow / "realworld").mkdir()
    (hollow / "realworld" / "notes.txt").write_text("not audio")
    line = refused(default_model.main, ["--data", str(hollow), "--out", str(out), "--runtime-check-only"], capsys)
    assert line.endswith(f"--data: {str(hollow)!r}: no audio files in fma, realworld (fma/*.mp3 and realworld/ tracks: "
                         "the check tags them)")
    assert (f"--data: {str(DATA)!r}: its labelled clips are not the 2 the model was built on (391 found; missing "
            "nosuch.00001; not built on ") in said()
    shipped = json.loads((REPO_MODELS / f"{MODEL_NAME}.cv.json").read_text())
    report.write_text(json.dumps({k: shipped[k] for k in ("tracks", "runtime", "cv")}))
    assert f"--out: {str(out)!r}: " in said() and f"{MODEL_NAME}.onnx" in said()  # no model files there
    (out / f"{MODEL_NAME}.onnx").write_text("not a model")
    assert "cannot load ONNX model" in said()
    assert "not allowed with argument" in said("--card-only")
    assert json.loads(report.read_text())["runtime"] == shipped["runtime"]  # nothing rewritten
    assert not (out / f"{MODEL_NAME}.md").exists()
