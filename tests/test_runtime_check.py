"""``python -m training.default_model --runtime-check-only``: the build's runtime check again on the shipped files,
without retraining, replacing only the report's runtime entries and rewriting the card.

Runs the real shipped files (float32 and int8) on a small data folder of real clips: one quiet classical clip
under the level floor (raised), one loud excerpt, one FMA clip, one realworld track, and two generated
non-music clips (one raised), so it takes seconds rather than the full check's minute.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
from pathlib import Path

import pytest
from conftest import DATA

from tagger import Tagger
from tagger.registry import default_cpu_model
from training.shipped import MODEL_NAME

QUIET = "gtzan/classical/classical.00032.flac"  # -47 dBFS gated: raised by 15 dB to the -32 dBFS floor
LOUD = "gtzan-excerpts/blues/blues.00010.flac"
FMA = "fma/000002.mp3"
REALWORLD = "realworld/warzone2100-music/menu.opus"
NON_MUSIC = ("silence-digital", "pink-40-1")


def small_data(root: Path) -> Path:
    """A data folder holding links to a few real clips, laid out as ../shared/data is."""
    for folder, rel in (("gtzan", QUIET), ("gtzan-excerpts", LOUD)):
        (root / folder).mkdir(parents=True)
        head = (DATA / folder / "labels.csv").read_text().splitlines()
        rows = [line for line in head[1:] if line.startswith(rel + ",")]
        assert len(rows) == 1, f"{rel} not in {folder}/labels.csv"
        (root / folder / "labels.csv").write_text("\n".join([head[0], *rows]) + "\n")
    for rel in (QUIET, LOUD, FMA, REALWORLD):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(DATA / rel)
    return root


def built(out: Path, shipped: dict, track_ids: list[str], labels: list[int]) -> dict:
    """``out`` as a build leaves it for these clips: the shipped model files and a report on them."""
    out.mkdir()
    cpu = default_cpu_model()
    for name in (f"{MODEL_NAME}.onnx", f"{MODEL_NAME}-int8.onnx"):
        shutil.copyfile(cpu.parent / name, out / name)
    report = json.loads(json.dumps(shipped))
    keep = [shipped["tracks"].index(t) for t in track_ids]
    report["tracks"] = track_ids
    report["groups"] = [shipped["groups"][i] for i in keep]
    report["cv"]["genre"]["labels"] = labels
    report.pop("runtime_check", None)
    (out / f"{MODEL_NAME}.cv.json").write_text(json.dumps(report))
    return report


@pytest.fixture(scope="module")
def shipped_report() -> dict:
    return json.loads((default_cpu_model().parent / f"{MODEL_NAME}.cv.json").read_text())


def test_runtime_check_only_replaces_the_runtime_entries_and_rewrites_the_card(
        tmp_path: Path, shipped_report: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.default_model as default_model
    import training.negatives as negatives

    data = small_data(tmp_path / "data")
    out = tmp_path / "out"
    before = built(out, shipped_report, ["classical.00032", "blues.00010"], [1, 0])
    # Two of the generated non-music clips stand for the 92 (the check is the same for each).
    clips = [n for n in negatives.generated() if n.clip_id in NON_MUSIC]
    assert sorted(n.clip_id for n in clips) == sorted(NON_MUSIC)
    monkeypatch.setattr(negatives, "all_non_music", lambda: clips)

    assert default_model.main(["--data", str(data), "--out", str(out), "--runtime-check-only"]) == 0

    after = json.loads((out / f"{MODEL_NAME}.cv.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("runtime", "runtime_check")} == \
        {k: v for k, v in before.items() if k != "runtime"}
    runtime = after["runtime"]
    assert list(runtime) == ["float32", "int8"]
    for model in ("float32", "int8"):
        sets = runtime[model]
        assert [r["file"] for r in sets["labelled"]] == [str(data / QUIET), str(data / LOUD)]
        assert [r["file"] for r in sets["fma"]] == [str(data / FMA)]
        assert [r["file"] for r in sets["realworld"]] == [str(data / REALWORLD)]
        assert sorted(Path(r["file"]).stem for r in sets["non-music"]) == sorted(NON_MUSIC)
        # Each row is what the runtime answers for that file with that model file, the level floor included.
        tagger = Tagger(out / (f"{MODEL_NAME}.onnx" if model == "float32" else f"{MODEL_NAME}-int8.onnx"))
        for rel, row in ((QUIET, sets["labelled"][0]), (LOUD, sets["labelled"][1])):
            result = tagger.tag_file(data / rel)
            assert row["music_probability"] == result.music_probability
            assert row["genre"] == result.outputs["genre"].top
            assert row["gain_db"] == result.gain_db and row["level_dbfs"] == result.level_dbfs
        quiet, loud = sets["labelled"]
        assert quiet["level_dbfs"] < -32.0 and quiet["gain_db"] > 10.0
        assert loud["gain_db"] == 0.0
        assert not any(r["music"] for r in sets["non-music"])
    made = after["runtime_check"]
    assert made["command"].endswith("--runtime-check-only")
    for model, name in (("float32", f"{MODEL_NAME}.onnx"), ("int8", f"{MODEL_NAME}-int8.onnx")):
        assert made["models"][model]["file"] == name
        assert made["models"][model]["level_floor_dbfs"] == Tagger(out / name).manifest.level_floor_dbfs

    card = (out / f"{MODEL_NAME}.md").read_text()
    assert "| music | labelled | 0/2 | 0/2 |" in card
    assert "| non-music | non-music | 2/2 | 2/2 |" in card
    assert "analysed raised to it (section \"Level\"; float32 file): 1 of the 2 labelled files (by " in card
    assert "1 classical); 1 of the 2 non-music files (by " in card
    assert f"Made by `{made['command']}`" in card
    from training.model_card import seconds_per_30s

    costs = [f"- {model} file: {seconds_per_30s(rows):.2f} s wall, {seconds_per_30s(rows, 'cpu_seconds'):.2f} s CPU"
             for model, rows in ((m, runtime[m]["realworld"]) for m in ("float32", "int8"))]
    assert ("Cost per 30 s of audio (realworld tracks; decode, front end and both views; ONNX Runtime on the CPU):"
            "\n\n" + "\n".join(costs) + "\n\nMeasured on a shared 2-core machine: noisy.\n") in card


@contextlib.contextmanager
def file_size_limit(size: int):
    """Files this process writes stop at ``size`` bytes: a write past it fails for real (EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_runtime_check_only_keeps_the_old_files_when_a_new_one_cannot_be_written(
        tmp_path: Path, shipped_report: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """cv.json and the card are replaced whole or not at all (a temporary file renamed over the old one): a write
    that fails half way, here for a real cause (the process's file size limit, as a full disk would), keeps the old
    file, leaves no temporary file and says so in one line (before: the file was left cut short, and a traceback)."""
    import training.default_model as default_model
    import training.negatives as negatives
    from training.model_card import write_card

    every = negatives.all_non_music()
    data = small_data(tmp_path / "data")
    out = tmp_path / "out"
    built(out, shipped_report, ["classical.00032", "blues.00010"], [1, 0])
    stored, card = out / f"{MODEL_NAME}.cv.json", out / f"{MODEL_NAME}.md"
    card.write_text("the old card\n")
    old, names = stored.read_bytes(), sorted(p.name for p in out.iterdir())
    clips = [n for n in negatives.generated() if n.clip_id in NON_MUSIC]
    monkeypatch.setattr(negatives, "all_non_music", lambda: clips)
    limit = 2_000_000  # above the non-music clips' WAV files (10 s, 16 kHz, 16-bit: 0.32 MB), below cv.json
    assert len(old) > limit
    with file_size_limit(limit), pytest.raises(SystemExit) as stopped:
        default_model.main(["--data", str(data), "--out", str(out), "--runtime-check-only"])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"--out: {str(out)!r}: cannot write {MODEL_NAME}.cv.json (File too large); kept both old files")
    assert stored.read_bytes() == old and card.read_text() == "the old card\n"
    assert sorted(p.name for p in out.iterdir()) == names

    # The card itself (about 35 kB), written from the shipped report as --card-only does.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for figures in default_cpu_model().parent.glob(f"{MODEL_NAME}.*.json"):
        (shipped / figures.name).symlink_to(figures)
    (shipped / card.name).write_text("the old card\n")
    with file_size_limit(4096), pytest.raises(OSError, match="File too large"):
        write_card(shipped, MODEL_NAME, shipped_report, every)
    assert (shipped / card.name).read_text() == "the old card\n"
    assert sorted(p.name for p in shipped.iterdir()) == sorted([card.name, *(f.name for f in shipped.glob("*.json"))])
    assert write_card(shipped, MODEL_NAME, shipped_report, every).read_text() == \
        (default_cpu_model().parent / card.name).read_text()  # without the limit: the shipped card
