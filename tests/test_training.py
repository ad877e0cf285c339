"""The training package: datasets and splits, the spectrogram cache, architectures and their export,
the training loop (early stopping, resumable checkpoints), and train → export → ``genre-tagger tag``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

from tagger import Tagger
from training.architectures import ARCHITECTURES, MFCC, build
from training.cli import ARCHITECTURE_NAMES, split_indices
from training.datasets import (
    Track,
    check_no_leak,
    grouped_folds,
    gtzan_fault_filtered_split,
    load_csv_manifest,
    load_dataset,
    load_fma,
    load_folders,
    load_gtzan,
    read_fma_tracks_csv,
)
from training.export import export_trained
from training.spectrograms import SpectrogramCache
from training.train import (
    SliceData,
    TrainConfig,
    evaluate_predictions,
    grid_starts,
    model_views,
    predict,
    prepare_data,
    train,
)

GTZAN = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gtzan"
RATE = 22050


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def synthetic_clip(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Three clearly different classes: low tones, high tones, noise bursts (random pitch and timing)."""
    t = np.arange(int(seconds * RATE)) / RATE
    if kind == "low":
        f = rng.uniform(80, 200)
        return 0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * 2 * f * t)
    if kind == "high":
        f = rng.uniform(2500, 5000)
        return 0.3 * np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    gate = (np.sin(2 * np.pi * rng.uniform(2, 6) * t) > 0).astype(float)
    return 0.3 * rng.normal(size=t.size) * gate


# Datasets and splits ------------------------------------------------------------------------------


def test_fault_filtered_split_has_the_published_sizes_and_matches_the_shared_labels() -> None:
    split = gtzan_fault_filtered_split()
    counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "valid", "test")}
    assert counts == {"train": 443, "valid": 197, "test": 290}
    with (GTZAN / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(split.get(r["gtzan_id"], "excluded") == r["fault_filtered_split"] for r in rows)
    tracks = load_gtzan(GTZAN)
    assert len(tracks) == 161 and {t.split for t in tracks} <= {"train", "valid", "test", "excluded"}
    train, test = split_indices(tracks, "dataset")
    assert len(train) + len(test) == sum(t.split != "excluded" for t in tracks)
    assert not {tracks[i].track_id for i in train} & {tracks[i].track_id for i in test}


def test_gtzan_layout_without_a_labels_file(tmp_path: Path) -> None:
    for name in ("blues/blues.00000.wav", "blues/blues.00030.wav", "rock/rock.00099.wav", "rock/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    tracks = load_gtzan(tmp_path)
    assert [(t.track_id, t.label, t.split) for t in tracks] == [
        ("blues.00000", "blues", "valid"), ("blues.00030", "blues", "train"), ("rock.00099", "rock", "train")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no GTZAN clips"):
        load_gtzan(tmp_path / "empty")


def write_fma_fixture(root: Path) -> tuple[Path, Path]:
    """A tiny FMA-shaped tracks.csv (three header rows) and audio tree."""
    meta, audio = root / "fma_metadata", root / "fma_small"
    meta.mkdir(parents=True)
    rows = [  # track_id, artist id, genre_top, split, subset
        (2, 1, "Hip-Hop", "training", "small"), (3, 1, "Hip-Hop", "training", "small"),
        (5, 2, "Pop", "validation", "small"), (10, 3, "Pop", "test", "small"),
        (20, 4, "Rock", "training", "medium"), (30, 5, "", "training", "small"),
        (140, 6, "Folk", "test", "small"),  # its audio is missing
    ]
    with (meta / "tracks.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "album", "artist", "set", "set", "track", "track"])
        w.writerow(["", "title", "id", "split", "subset", "genre_top", "title"])
        w.writerow(["track_id", "", "", "", "", "", ""])
        for tid, artist, genre, split, subset in rows:
            w.writerow([tid, "An album, with a comma", artist, split, subset, genre, f"Track {tid}"])
    for tid, *_ in rows[:-1]:
        path = audio / f"{tid:06d}"[:3] / f"{tid:06d}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ID3")
    return meta, audio


def test_fma_tracks_csv_with_its_three_row_header(tmp_path: Path) -> None:
    meta, audio = write_fma_fixture(tmp_path)
    rows = read_fma_tracks_csv(meta / "tracks.csv")
    assert rows[0]["track/genre_top"] == "Hip-Hop" and rows[0]["set/split"] == "training"
    assert rows[0]["album/title"] == "An album, with a comma"
    small = load_fma(meta, audio, "small")
    assert [(t.track_id, t.label, t.split, t.group) for t in small] == [
        ("000002", "Hip-Hop", "train", "artist:1"), ("000003", "Hip-Hop", "train", "artist:1"),
        ("000005", "Pop", "valid", "artist:2"), ("000010", "Pop", "test", "artist:3")]
    assert small[0].path == audio / "000" / "000002.mp3"
    assert [t.track_id for t in load_fma(meta, audio, "medium")][-1] == "000020"
    assert len(load_dataset(f"fma:{meta}:{audio}:medium")) == 5
    (meta / "bad.csv").write_text("track_id,title\n1,x\n")
    with pytest.raises(ValueError, match=r"not an FMA tracks\.csv"):
        read_fma_tracks_csv(meta / "bad.csv")


def test_folders_and_csv_manifests(tmp_path: Path) -> None:
    for name in ("jazz/a.wav", "jazz/live/b.flac", "rock/c.mp3", "rock/cover.jpg"):
        (tmp_path / "lib" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lib" / name).write_bytes(b"")
    tracks = load_folders(tmp_path / "lib")
    assert [(t.label, t.track_id) for t in tracks] == [("jazz", "jazz/a.wav"), ("jazz", "jazz/live/b.flac"),
                                                       ("rock", "rock/c.mp3")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,group\nlib/jazz/a.wav,jazz,artist1\n/abs/x.wav,rock,\n")
    rows = load_csv_manifest(manifest)
    assert rows[0].path == tmp_path / "lib/jazz/a.wav" and rows[0].group == "artist1"
    assert rows[1].path == Path("/abs/x.wav") and rows[1].group == "/abs/x.wav"
    (tmp_path / "bad.csv").write_text("file,genre\nx,y\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label', 'path'\]"):
        load_csv_manifest(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="expected gtzan:DIR"):
        load_dataset("mp3:/x")
    with pytest.raises(FileNotFoundError, match=str(Path.home())):  # ~ expanded after the colon
        load_dataset("folders:~/no-such-folder-here")


def test_grouped_folds_never_split_a_group() -> None:
    rng = np.random.default_rng(0)
    tracks = [Track(Path(f"{i}.wav"), f"g{i % 3}", f"artist{rng.integers(12)}", str(i)) for i in range(60)]
    folds = grouped_folds(tracks, 5, seed=1)
    assert set(folds) == set(range(5))
    for k in range(5):
        check_no_leak(tracks, np.where(folds != k)[0], np.where(folds == k)[0])
    with pytest.raises(ValueError, match="split leaks"):
        check_no_leak(tracks, np.arange(0, 40), np.arange(30, 60))


# Spectrogram cache ----------------------------------------------------------------------------------


def test_cache_is_resumable_keyed_and_reports_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = [Track(write_wav(tmp_path / f"{i}.wav", synthetic_clip("low", 1.0, rng)), "low", str(i), str(i))
            for i in range(2)]
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    tracks = [*good, Track(bad, "low", "bad", "bad")]
    _, spec = build("mfcc_cnn", 3)
    cache = SpectrogramCache(tmp_path / "cache")
    errors = cache.fill(tracks, [spec.front_end], {"none": None}, progress=False)
    assert len(errors) == 1 and errors[0].startswith(f"{bad}: ") and "\n" not in errors[0]
    first = cache.path(spec.front_end, "none", good[0])
    stamp = first.stat().st_mtime_ns
    assert cache.fill(good, [spec.front_end], {"none": None}, progress=False) == []
    assert first.stat().st_mtime_ns == stamp  # kept, not recomputed
    loaded = cache.load(spec.front_end, "none", good[0])
    with wave.open(str(good[0].path)) as w:
        pcm = np.frombuffer(w.readframes(RATE), "<i2")
    expected = spec.front_end.spectrogram(pcm.astype(np.float32) / 32767)
    np.testing.assert_allclose(loaded, expected, atol=0.05 * np.abs(expected).max())
    write_wav(good[0].path, synthetic_clip("high", 1.5, rng))  # a changed file gets a new entry
    assert cache.path(spec.front_end, "none", good[0]) != first


# Architectures ---------------------------------------------------------------------------------------


def test_cli_lists_every_architecture() -> None:
    assert set(ARCHITECTURE_NAMES) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_exports_and_tags_through_the_runtime(name: str, tmp_path: Path,
                                                                 realworld: Path) -> None:
    torch.manual_seed(0)
    net, spec = build(name, 3, **({"pretrained": False} if name == "musicnn_transfer" else {}))
    window = spec.window_frames
    logits = net.eval()(torch.randn(2, window, spec.front_end.n_mels))
    assert logits.shape == (2, 3)
    path = export_trained(net, spec, ("a", "b", "c"), tmp_path / f"{name}.onnx", name)  # checks ORT == torch
    tagger = Tagger(path)
    assert [v.name for v in tagger.views] == ["2.56s", "5.12s"]
    for view in tagger.views:
        seconds, _ = tagger.manifest.view_seconds(view)
        assert abs(seconds - 2.56 * (2 if view.name == "5.12s" else 1)) < 0.1
    result = tagger.tag_file(realworld / "warzone2100-music" / "menu.opus")
    scores = result.outputs["genre"].scores
    assert abs(sum(s.score for s in scores) - 1) < 1e-4


def test_mfcc_layer_is_the_orthonormal_dct_of_the_db_mel() -> None:
    mel = torch.randn(2, 50, 128) * 20 - 40
    layer = MFCC(128, 20).eval()
    layer.norm.running_mean.zero_()
    layer.norm.running_var.fill_(1 - layer.norm.eps)
    expected = scipy.fft.dct(mel.numpy(), type=2, norm="ortho", axis=2)[:, :, :20]
    np.testing.assert_allclose(layer(mel).detach().numpy(), expected, atol=2e-3)


def test_meza_views_are_128_by_128_at_50_and_25_frames_per_second() -> None:
    _, spec = build("meza", 10)
    views = model_views(spec)
    assert [(v.window_frames, v.front_end.n_mels, v.front_end.sample_rate / v.front_end.hop_length) for v in views] \
        == [(128, 128, 50.0), (128, 128, 25.0)]
    assert (spec.lr, spec.weight_decay) == (1e-4, 5e-5)
    assert grid_starts(300, 128, 64) == [0, 64, 128, 172]


def test_frequency_encoding_changes_the_network_input() -> None:
    plain, _ = build("cheng", 4)
    encoded, _ = build("cheng_freq", 4)
    assert encoded.convs[0].in_channels == plain.convs[0].in_channels + 4


# Training loop --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Track], SpectrogramCache]:
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(7)
    tracks = []
    for kind in ("high", "low", "noise"):
        for i in range(6):
            path = write_wav(root / "train" / kind / f"{kind}{i}.wav", synthetic_clip(kind, 4.0, rng))
            tracks.append(Track(path, kind, f"{kind}{i}", f"{kind}{i}"))
    cache = SpectrogramCache(root / "cache")
    return tracks, cache


def test_training_stops_early_resumes_from_its_checkpoint_and_logs(synthetic_set, tmp_path: Path) -> None:
    tracks, cache = synthetic_set
    labels = ["high", "low", "noise"]
    y = np.array([labels.index(t.label) for t in tracks])
    net, spec = build("mfcc_cnn", 3)
    cache.fill(tracks, [v.front_end for v in model_views(spec)], {"none": None}, progress=False)
    data = SliceData(cache, tracks, model_views(spec), ["none"])
    fit, valid = np.arange(0, 18, 2), np.arange(1, 18, 2)
    cfg = TrainConfig(epochs=2, slices_per_epoch=64, batch_size=16, seed=3)
    out = tmp_path / "run"
    first = train(net, spec, data, fit, valid, y, labels, cfg, out, progress=False)
    assert first["epochs"] == 2 and (out / "checkpoint.pt").exists() and (out / "curves.png").exists()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)  # plain tensors and strings only
    assert json.loads(saved["state"])["epoch"] == 2
    resumed_net, _ = build("mfcc_cnn", 3)
    resumed = train(resumed_net, spec, data, fit, valid, y, labels, TrainConfig(**{**cfg.__dict__, "epochs": 4}), out,
                    progress=False)
    assert resumed["epochs"] == 4 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    with (out / "train_log.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    frozen, _ = build("mfcc_cnn", 3)
    stopped = train(frozen, spec, data, fit, valid, y, labels,
                    TrainConfig(epochs=10, slices_per_epoch=32, batch_size=16, lr=0.0, patience=2), None,
                    progress=False)
    assert stopped["epochs"] == 3 and stopped["stopped"].startswith("early stop")  # nothing learns at lr 0
    report = evaluate_predictions(predict(net, data, valid), y[valid], labels)
    assert set(report) == {"slice", "track", "track_vote", "track_probs"}
    assert report["track"]["n"] == len(valid) and report["slice"]["n"] > len(valid)


def test_train_export_then_tag_classifies_held_out_synthetic_clips(synthetic_set, tmp_path: Path) -> None:
    tracks, cache = synthetic_set
    train_dir = tracks[0].path.parent.parent
    run = tmp_path / "synthetic-model"
    cmd = [sys.executable, "-m", "tagger.cli"]
    done = subprocess.run([*cmd, "train", "--data", f"folders:{train_dir}", "--arch", "mfcc_cnn", "--out", str(run),
                           "--split", "all", "--epochs", "8", "--slices-per-epoch", "128", "--seed", "1",
                           "--cache", str(cache.root), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    model = run / "synthetic-model.onnx"
    assert model.exists() and (run / "train_log.csv").exists() and (run / "curves.png").exists()
    held_out = tmp_path / "held-out"
    rng = np.random.default_rng(99)
    truth = {}
    for kind in ("high", "low", "noise"):
        for i in range(4):
            path = write_wav(held_out / kind / f"{kind}-{i}.wav", synthetic_clip(kind, 6.0, rng))
            truth[str(path)] = kind
    tagged = subprocess.run([*cmd, "tag", "--model", str(model), "--json", str(held_out)], capture_output=True,
                            text=True, timeout=300)
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    results = [json.loads(line) for line in tagged.stdout.splitlines()]
    assert len(results) == 12
    scores = {r["path"]: r["outputs"]["genre"]["scores"] for r in results}
    correct = sum(max(s, key=s.get) == truth[path] for path, s in scores.items())
    print(f"\nheld-out synthetic clips correct: {correct}/12 (chance 4/12)")
    assert correct >= 10
    evaluated = subprocess.run([*cmd, "evaluate", "--model", str(model), "--data", f"folders:{held_out}",
                                "--split", "all"], capture_output=True, text=True, timeout=300)
    assert "track accuracy" in evaluated.stdout, evaluated.stderr[-2000:]
    bad = subprocess.run([*cmd, "train", "--data", "gtzan:/nonexistent", "--arch", "meza", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such folder" in bad.stderr


@pytest.mark.parametrize(("finetune_from", "trainable"), [
    (None, {"head"}), ("backend", {"head", "pool_bn"}), ("mid", {"head", "pool_bn", "backbone.mid"}),
    ("front", {"head", "pool_bn", "backbone.mid", "backbone.front"}),
])
def test_transfer_freezes_the_backbone_below_the_chosen_layer(finetune_from: str | None, trainable: set) -> None:
    net, _ = build("musicnn_transfer", 5, pretrained=False, finetune_from=finetune_from)
    front = ("backbone.input_bn", "backbone.timbral", "backbone.temporal")
    groups = {("backbone.front" if n.startswith(front) else ".".join(n.split(".")[:2]) if n.startswith("backbone")
               else n.split(".")[0]) for n, p in net.named_parameters() if p.requires_grad}
    assert {"backbone.mid" if g.startswith("backbone.mid") else g for g in groups} == trainable
    net.train()
    assert net.backbone.training is (finetune_from is not None)  # frozen batch norms keep their statistics


def test_a_seed_reproduces_a_run(synthetic_set) -> None:
    tracks, cache = synthetic_set
    labels = ["high", "low", "noise"]
    y = np.array([labels.index(t.label) for t in tracks])
    histories = []
    for _ in range(2):
        torch.manual_seed(5)
        net, spec = build("mfcc_cnn", 3)
        data = prepare_data("mfcc_cnn", spec, net, cache, tracks, augment=True, progress=False)
        cfg = TrainConfig(epochs=2, slices_per_epoch=64, batch_size=16, seed=5, augment=True)
        histories.append([(h["train_loss"], h["valid_loss"]) for h in
                          train(net, spec, data, np.arange(0, 18, 2), np.arange(1, 18, 2), y, labels, cfg,
                                progress=False)["history"]])
    assert histories[0] == histories[1]


def test_compare_writes_a_table_and_resumes(synthetic_set, tmp_path: Path) -> None:
    from training.compare import compare

    tracks, cache = synthetic_set
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label,group\n" + "".join(f"{t.path},{t.label},{t.group}\n" for t in tracks))
    cfg = TrainConfig(epochs=2, slices_per_epoch=32, batch_size=16, seed=0)
    out, runs = tmp_path / "comparison.md", tmp_path / "runs"
    results = compare(f"csv:{manifest}", ["mfcc_cnn"], 3, out, runs, cfg, str(cache.root), progress=False)
    assert set(results) == {"mfcc_cnn", "mfcc_cnn +aug"}
    assert len(list(runs.glob("*/*.json"))) == 6
    table = out.read_text()
    assert "| mfcc_cnn | no |" in table and "| mfcc_cnn | yes |" in table and "56 % (GTZAN)" in table
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/*.json")}
    again = compare(f"csv:{manifest}", ["mfcc_cnn"], 3, out, runs, cfg, str(cache.root), progress=False)
    assert again == results and {p: p.stat().st_mtime_ns for p in runs.glob("*/*.json")} == stamps  # not re-run
    other = compare(f"csv:{manifest}", ["mfcc_cnn"], 3, out, runs, TrainConfig(**{**cfg.__dict__, "epochs": 1}),
                    str(cache.root), progress=False)
    assert len(list(runs.glob("*/*.json"))) == 12 and all(r["epochs"] == [1, 1, 1] for r in other.values())


def test_architecture_options_from_the_command_line() -> None:
    from training.cli import parse_arch_options

    options = parse_arch_options(["widths=[8,16,32]", "head=linear", "freq_encoding=true", "finetune_from=mid"])
    assert options == {"widths": (8, 16, 32), "head": "linear", "freq_encoding": True, "finetune_from": "mid"}
    net, spec = build("meza3", 3, widths=options["widths"])
    assert [m.out_channels for m in net.convs if isinstance(m, torch.nn.Conv2d)] == [8, 16, 32]
    assert spec.options == {"widths": (8, 16, 32)}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_arch_options(["widths"])
    with pytest.raises(ValueError, match="unexpected keyword argument 'nope'"):
        build("cheng", 3, nope=1)


def test_export_runs_again_after_the_interpreter_s_spurious_ast_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11 before 3.11.8 (gh-106905) can raise a spurious SystemError from ast.parse, which the exporter
    runs, while another thread builds an AST; it cannot be caused on demand, so the exporter raises it once here.
    Any other SystemError is the caller's."""
    real = torch.onnx.export
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=144, after=73)")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", flaky)
    torch.manual_seed(0)
    net, spec = build("mfcc_cnn", 3)
    path = export_trained(net, spec, ("a", "b", "c"), tmp_path / "model.onnx", "mfcc_cnn")
    assert len(calls) == 2 and Tagger(path).manifest.name == "mfcc_cnn"

    def broken(*args, **kwargs):
        raise SystemError("something else")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(SystemError, match="something else"):
        export_trained(net, spec, ("a", "b", "c"), tmp_path / "other.onnx", "mfcc_cnn")
