"""``python -m training.default_model --runtime-check-only``: the build's runtime check again on the shipped files,
without retraining, replacing only the report's runtime entries and rewriting the card.

Runs the real shipped files (float32 and int8) on a small data folder of real clips: one quiet classical clip
under the level floor (raised), one loud excerpt, one FMA clip, one realworld track, and two generated
non-music clips (one raised), so it takes seconds rather than the full check's minute.
"""

from __future__ import annotations

import json
import shutil
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
