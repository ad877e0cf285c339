"""``genre-tagger train | evaluate | export | compare``: the training package's commands.

Registered on the main CLI when the ``train`` extra is installed. Datasets are named as
``gtzan:DIR``, ``fma:METADATA_DIR:AUDIO_DIR[:small|medium|large]``, ``folders:DIR`` or ``csv:FILE``
(see :func:`training.datasets.load_dataset`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CACHE = ".cache/spectrograms"
# Checked against training.architectures.ARCHITECTURES by the tests (this module must not import torch).
ARCHITECTURE_NAMES = ("meza", "meza3", "choi_fcn", "choi_crnn", "mfcc_cnn", "mfcc_lstm", "cheng", "cheng_freq",
                      "musicnn_transfer")


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("genre-tagger: training needs the 'train' extra (pip install torch==2.13.0, then "
                         "pip install -e '.[train]')") from None


def register(sub: argparse._SubParsersAction) -> None:
    # No torch import here: the core CLI registers these on every start.
    arch_help = "architecture: " + ", ".join(ARCHITECTURE_NAMES)
    train = sub.add_parser("train", help="train a model on a labelled dataset and export it",
                           description="Train an architecture on a dataset, split by track (grouped by artist "
                                       "where known), and export the best epoch as a genre-tagger model file.")
    train.add_argument("--data", required=True, help="gtzan:DIR, fma:META:AUDIO[:subset], folders:DIR or csv:FILE")
    train.add_argument("--arch", required=True, choices=ARCHITECTURE_NAMES, metavar="ARCH", help=arch_help)
    train.add_argument("--out", required=True, help="run folder: logs, checkpoints, curves, the model file")
    train.add_argument("--split", default="dataset", type=_split,
                       help="'dataset' (the dataset's own train/valid/test), 'fold:K/N' (grouped fold K of N "
                            "is the test set) or 'all' (no test set); default dataset")
    train.add_argument("--name", help="model name in the file (default: the run folder's name)")
    train.add_argument("--arch-option", action="append", default=[], metavar="KEY=VALUE",
                       help="an architecture parameter, VALUE as JSON or a plain string (repeatable), e.g. "
                            "widths=[32,64,128,256,256], finetune_from=mid, head=linear, freq_encoding=true")
    _train_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a model file on a labelled dataset through the runtime")
    evaluate.add_argument("--model", "-m", required=True, help="model name or .onnx path")
    evaluate.add_argument("--data", required=True, help="dataset (as for train)")
    evaluate.add_argument("--split", default="test", choices=("test", "valid", "train", "all"),
                          help="which tracks: test, valid, train or all (default test)")
    evaluate.add_argument("--out", help="folder for report.json and confusion.png")
    evaluate.add_argument("--naive", action="store_true", help="run every window through the whole network")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="export a training run's best checkpoint as a model file")
    export.add_argument("run", help="a run folder written by 'genre-tagger train'")
    export.add_argument("--out", help="model file (default <run>/<name>.onnx)")
    export.set_defaults(func=cmd_export)

    compare = sub.add_parser("compare", help="grouped k-fold comparison of architectures, as a Markdown table")
    compare.add_argument("--data", default="gtzan:../shared/data/gtzan", help="dataset (default the shared GTZAN)")
    compare.add_argument("--arch", action="append", choices=ARCHITECTURE_NAMES, metavar="ARCH",
                         help=arch_help + " (repeatable; default all)")
    compare.add_argument("--folds", type=_at_least_two, default=5, help="number of grouped folds (default 5)")
    compare.add_argument("--out", default="docs/training-comparison.md", help="Markdown report")
    compare.add_argument("--runs", default=".cache/compare", help="per-run results (resumable)")
    _train_options(compare, epochs=12, budget=90.0, slices=256, threads=2)
    compare.set_defaults(func=cmd_compare)


def _train_options(p: argparse.ArgumentParser, epochs: int = 30, budget: float = 0.0, slices: int = 0,
                   threads: int = 0) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"most epochs (default {epochs})")
    p.add_argument("--slices-per-epoch", type=int, default=slices,
                   help=f"training slices per epoch (default {slices or '8 per track'})")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the architecture's paper)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the architecture's paper)")
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience in epochs (default 6)")
    p.add_argument("--augment", action="store_true", help="audio bank, SpecAugment and mixup")
    p.add_argument("--budget-seconds", type=float, default=budget,
                   help=f"stop after the epoch passing this much training time (default {budget:g}; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--threads", type=int, default=threads,
                   help=f"torch CPU threads (default {threads or 'torch' + chr(39) + 's'})")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"spectrogram cache (default {DEFAULT_CACHE})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_arch_options(items: list[str]) -> dict:
    """``["widths=[8,16]", "head=linear"]`` → ``{"widths": (8, 16), "head": "linear"}``."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--arch-option {item!r}: expected KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return options


def _config(args: argparse.Namespace):
    from training.train import TrainConfig

    return TrainConfig(arch_options=parse_arch_options(getattr(args, "arch_option", [])), epochs=args.epochs,
                       slices_per_epoch=args.slices_per_epoch, batch_size=args.batch_size,
                       lr=args.lr, weight_decay=args.weight_decay, patience=args.patience, augment=args.augment,
                       budget_seconds=args.budget_seconds, seed=args.seed, threads=args.threads)


def _user_errors(fn):
    """One line on stderr and exit status 2 for a bad dataset, split or option, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            # An OSError's own text is "[Errno 2] No such file or directory: 'x.csv'": say it as "x.csv: ...".
            reason = (f"{exc.filename}: {exc.strerror.lower()}" if isinstance(exc, OSError) and exc.filename
                      else str(exc))
            print(f"genre-tagger: error: {reason}".splitlines()[0], file=sys.stderr)
            return 2

    return wrapper


def _at_least_two(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text}: a number of folds, 2 or more")
    return int(text)


def _split(text: str) -> str:
    """A --split value, checked before any data is read: dataset, all, or fold:K/N with 0 <= K < N, N >= 2."""
    if text in ("dataset", "all"):
        return text
    k, slash, n = text.removeprefix("fold:").partition("/")
    if not text.startswith("fold:") or not slash or not k.isdigit() or not n.isdigit():
        raise argparse.ArgumentTypeError(f"{text}: expected dataset, all or fold:K/N (e.g. fold:0/5)")
    if int(n) < 2 or int(k) >= int(n):
        raise argparse.ArgumentTypeError(f"{text}: fold K of N needs N >= 2 and K within 0..N-1")
    return text


def split_indices(tracks, split: str, seed: int = 0):
    """(train, test) track indices for a --split value."""
    import numpy as np

    from training.datasets import folds_for

    if split == "all":
        return np.arange(len(tracks)), np.array([], dtype=int)
    if split == "dataset":
        sides = {t.split for t in tracks}
        if not sides & {"train", "test"}:
            raise ValueError("this dataset has no train/test split of its own: use --split fold:K/N")
        train = np.array([i for i, t in enumerate(tracks) if t.split in ("train", "valid")], dtype=int)
        test = np.array([i for i, t in enumerate(tracks) if t.split == "test"], dtype=int)
        return train, test
    if split.startswith("fold:"):
        k, _, n = split[5:].partition("/")
        folds = folds_for(tracks, int(n), seed)
        return np.where(folds != int(k))[0], np.where(folds == int(k))[0]
    raise ValueError(f"--split {split!r}: expected dataset, all or fold:K/N")


@_user_errors
def cmd_train(args: argparse.Namespace) -> int:
    _need_torch()
    from training.datasets import labels_of, load_dataset
    from training.export import export_trained
    from training.spectrograms import SpectrogramCache
    from training.train import run_fold

    tracks = load_dataset(args.data)
    labels = labels_of(tracks)
    train_idx, test_idx = split_indices(tracks, args.split, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _config(args)
    (out / "run.json").write_text(json.dumps({"arch": args.arch, "labels": labels, "data": args.data,
                                              "split": args.split, "options": cfg.arch_options}, indent=1))
    print(f"{len(tracks)} tracks, {len(labels)} labels; train {len(train_idx)}, test {len(test_idx)}",
          file=sys.stderr)
    net, spec, result = run_fold(args.arch, tracks, list(labels), train_idx, test_idx, cfg,
                                 SpectrogramCache(args.cache, args.seed), out, progress=not args.quiet)
    name = args.name or out.name
    metrics = {}
    if len(test_idx):
        track = result["report"]["track"]
        metrics = {"split": args.split, "track_accuracy": track["accuracy"], "track_macro_f1": track["macro_f1"],
                   "slice_accuracy": result["report"]["slice"]["accuracy"]}
        print(f"test: track accuracy {track['accuracy']:.3f}, macro F1 {track['macro_f1']:.3f}, "
              f"slice accuracy {result['report']['slice']['accuracy']:.3f}")
    path = export_trained(net, spec, labels, out / f"{name}.onnx", name, metrics=metrics, training_data=args.data)
    print(f"wrote {path}")
    return 0


@_user_errors
def cmd_export(args: argparse.Namespace) -> int:
    _need_torch()
    import torch

    from training.architectures import build
    from training.export import export_trained

    run = Path(args.run)
    info = json.loads((run / "run.json").read_text())
    net, spec = build(info["arch"], len(info["labels"]), **info.get("options", {}))
    net.load_state_dict(torch.load(run / "best.pt", weights_only=True)["model"])
    name = run.name
    path = export_trained(net.eval(), spec, tuple(info["labels"]), args.out or run / f"{name}.onnx", name,
                          training_data=info.get("data", ""))
    print(f"wrote {path}")
    return 0


@_user_errors
def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from tagger import Tagger
    from tagger.errors import TaggerError
    from training.datasets import load_dataset
    from training.metrics import classification_report, majority_vote, plot_confusion

    tracks = load_dataset(args.data)
    if args.split != "all":
        tracks = [t for t in tracks if t.split == args.split]
        if not tracks:
            raise ValueError(f"no tracks in split {args.split!r} (use --split all)")
    tagger = Tagger(args.model, fast=not args.naive)
    overlap = trained_on(tagger.manifest.training_data, [Path(t.path) for t in tracks])
    if overlap:
        print(f"genre-tagger evaluate: warning: {overlap} of {len(tracks)} tracks are from the model's own training "
              f"data ({tagger.manifest.training_data!r}): a score on clips it learnt from says little about new "
              f"music; evaluate on held-out tracks by other artists", file=sys.stderr)
    output = tagger.manifest.outputs[0]
    labels = output.labels
    y, probs, votes, slice_y, slice_probs, failed = [], [], [], [], [], 0
    for t in tracks:
        if t.label not in labels:
            print(f"genre-tagger: error: {t.path}: label {t.label!r} is not one of the model's", file=sys.stderr)
            failed += 1
            continue
        try:
            result = tagger.tag_file(t.path, keep_slices=True)
        except TaggerError as exc:
            print(f"genre-tagger: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        scores = {s.label: s.score for s in result.outputs[output.name].scores}
        y.append(labels.index(t.label))
        probs.append([scores[label] for label in labels])
        track_slices = [s.probabilities[output.name] for s in result.slices]
        slice_y += [labels.index(t.label)] * len(track_slices)
        slice_probs += track_slices
        votes.append(majority_vote(np.array(track_slices), np.array(probs[-1])))
    if not y:
        raise ValueError("no track could be evaluated")
    track = classification_report(np.array(y), np.array(probs), labels)
    slices = classification_report(np.array(slice_y), np.array(slice_probs), labels)
    vote = classification_report(np.array(y), np.array(votes), labels)
    print(f"{tagger.manifest.name}: {len(y)} tracks, track accuracy {track['accuracy']:.3f}, macro F1 "
          f"{track['macro_f1']:.3f}, ECE {track['ece']:.3f}; majority vote {vote['accuracy']:.3f}; "
          f"slice accuracy {slices['accuracy']:.3f}"
          + (f"; {failed} skipped" if failed else ""))
    for label, r in track["per_class"].items():
        print(f"  {label:20s} P {r['precision']:.2f}  R {r['recall']:.2f}  F1 {r['f1']:.2f}  n {r['support']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"track": track, "track_vote": vote, "slice": slices}
        if overlap:
            report["warning"] = f"{overlap} of {len(tracks)} tracks are from the model's own training data"
        (out / "report.json").write_text(json.dumps(report, indent=1))
        try:
            import matplotlib  # noqa: F401  (only the figure needs it)
        except ImportError:
            print(f"genre-tagger evaluate: {out / 'confusion.png'} not drawn: matplotlib is not installed (it comes "
                  "with pip install 'genre-tagger[train]'); report.json has the confusion matrix", file=sys.stderr)
        else:
            plot_confusion(np.array(track["confusion"]), labels, out / "confusion.png",
                           f"{tagger.manifest.name}: accuracy {track['accuracy']:.3f}")
    return 0 if not failed else 1


def trained_on(training_data: str, paths: list[Path]) -> int:
    """How many of ``paths`` lie in a folder (or list file) that a model's ``training_data`` names.

    ``training_data`` is the free text of the manifest (``gtzan:../shared/data/gtzan``, ``GTZAN subset: 161
    clips, ../shared/data/gtzan``...): every path-like word in it that exists here counts.
    """
    import re

    folders = []
    for word in re.findall(r"(?:^|[\s,:(])([~.]?[\w.-]*/[\w./~-]+)", training_data):
        place = Path(word).expanduser()
        if place.is_file():  # a csv list: its tracks are listed relative to it or absolute; its folder holds them
            place = place.parent
        if place.is_dir():
            folders.append(place.resolve())
    if not folders:
        return 0
    return sum(any(p.resolve().is_relative_to(folder) for folder in folders) for p in paths)


@_user_errors
def cmd_compare(args: argparse.Namespace) -> int:
    _need_torch()
    from training.compare import compare

    compare(args.data, args.arch, args.folds, Path(args.out), Path(args.runs), _config(args), args.cache,
            progress=not args.quiet)
    return 0
