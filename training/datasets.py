"""Labelled audio collections, and splits by track (never by slice), grouped by artist where known.

Sources, each returning a list of :class:`Track`:

- :func:`load_gtzan`: the GTZAN layout (``<genre>/<genre>.NNNNN.<ext>``), with ``labels.csv`` when
  there is one, and the artist-filtered ("fault-filtered") split of Kereliuk, Sturm & Larsen (2015)
  built in: 443 train / 197 valid / 290 test track ids, the rest excluded as faulty.
- :func:`load_fma`: ``fma_metadata/tracks.csv`` (a three-row header) with its official artist-filtered
  ``set/split`` and top-level genre, audio laid out as fma_small/medium/large (``000/000002.mp3``).
- :func:`load_folders`: one folder per label.
- :func:`load_csv_manifest`: a CSV with columns ``path, label[, group]``.

Splits are always by track: a random split of slices puts slices of one track on both sides and
measures memorisation (the 92.7 % of Meza & Nalianya 2018 is such a number). Tracks sharing a
``group`` (an artist; neighbouring GTZAN ids, often one artist) stay on one side.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagger.cli import AUDIO_EXTENSIONS as AUDIO_SUFFIXES

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

# Kereliuk et al. 2015, the artist-filtered GTZAN split: 1-based positions in the sorted list of the
# 1000 files (blues.00000 = 1 ... rock.00099 = 1000), as the authors published them.
_FAULT_FILTERED = {
    "train": "30-50 74-98 131-134 144-149 151-168 181-200 220-227 229-230 266-300 306 316-321 323-338 340-346 348 "
             "350 354-355 357-358 360 362 371 374-375 390 403-426 429-430 432-439 442-443 456-462 478-481 501-502 "
             "512-525 542 548-573 603-604 606 622 625 636 647-658 660-667 670 672-673 680-681 685 687 690-700 "
             "703-710 712-713 717-721 724-730 732-737 739-743 745 747 750-751 781 798-803 805 807 810 812-813 "
             "815-833 843-846 850-852 855-861 864 870 901-910 917-927 958-971 992-1000",
    "valid": "1-12 51-61 101-111 169-177 201-208 210-219 228 242-243 246 250 301 303-305 307-315 347 349 353 "
             "368-369 373 376 391 396 482-499 503-511 526-533 601-602 607-612 617-621 637-638 669 677-678 682-683 "
             "711 754 756 759-763 782 784-787 862-863 871 873 875 877-879 886 893-900 939 950-957 972-986",
    "test": "13-29 62-73 99-100 112-130 135-142 150 178-180 231-241 244-245 247-249 251-252 254-265 302 322 359 "
            "363-367 370 377-389 392-395 397-398 400-401 427-428 431 441 444-446 452-455 463-476 500 574-600 "
            "613-616 623-624 626-634 639-640 668 671 674-676 679 684 686 688-689 701-702 714-715 744 764-767 "
            "770-780 783 789-797 835-841 847-849 853-854 865-869 872 880 883-885 888-891 911-916 928-938 "
            "940-949 987-991",
}
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Track:
    """One labelled audio file.

    Attributes:
        path: the audio file.
        label: its class.
        group: tracks of one group (an artist) always land on one side of a split.
        track_id: a stable name (GTZAN id, FMA track id, relative path).
        split: the dataset's own split ("train", "valid", "test"), "excluded", or "" when it has none.
    """

    path: Path
    label: str
    group: str
    track_id: str
    split: str = ""


def write_pcm16_wav(path: str | Path, audio: np.ndarray, rate: int) -> Path:
    """``audio`` (mono float, full scale [-1, 1], clipped there) as a 16-bit PCM WAV file at ``rate`` Hz, each
    sample rounded to the nearest of the 65535 steps ±32767 (the one writer the build and the level check share)."""
    import wave

    pcm = (np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return Path(path)


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in ranges.split():
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def gtzan_fault_filtered_split() -> dict[str, str]:
    """GTZAN id (``blues.00029``) → "train" / "valid" / "test" for the 930 ids of the artist-filtered
    split; the 70 ids it leaves out (faulty: repeats, distortions, mislabels) are absent."""
    out = {}
    for split, ranges in _FAULT_FILTERED.items():
        for position in _expand(ranges):
            out[f"{GTZAN_GENRES[(position - 1) // 100]}.{(position - 1) % 100:05d}"] = split
    return out


def gtzan_number(track_id: str) -> int:
    """The numeric part of a GTZAN id (``blues.00012`` → 12)."""
    return int(track_id.rsplit(".", 1)[-1])


def load_gtzan(root: str | Path) -> list[Track]:
    """GTZAN clips under ``root``, from ``root/labels.csv`` (columns path, label, gtzan_id, …; paths
    relative to ``root`` or its parent) when present, else from the ``<genre>/<genre>.NNNNN.<ext>`` layout.

    ``split`` is the clip's side in the fault-filtered split ("excluded" for ids it leaves out). The
    group is the genre: :func:`contiguous_folds` keeps runs of neighbouring ids together within it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    split = gtzan_fault_filtered_split()
    table = root / "labels.csv"
    tracks = []
    if table.is_file():
        with table.open(newline="") as f:
            for row in csv.DictReader(f):
                path = root / row["path"] if (root / row["path"]).exists() else root.parent / row["path"]
                track_id = row.get("gtzan_id") or path.stem
                tracks.append(Track(path, row["label"], row["label"], track_id, split.get(track_id, "excluded")))
    else:
        for path in sorted(root.glob("*/*.*")):
            if path.suffix.lower() in AUDIO_SUFFIXES and path.stem.startswith(path.parent.name + "."):
                tracks.append(Track(path, path.parent.name, path.parent.name, path.stem,
                                    split.get(path.stem, "excluded")))
    if not tracks:
        raise FileNotFoundError(f"{root}: no GTZAN clips (expected labels.csv or <genre>/<genre>.NNNNN.<ext>)")
    return tracks


# An unmatched clip joins the artist of a clip of its genre at most this many GTZAN ids away.
ARTIST_NEIGHBOUR_IDS = 2


def load_gtzan_by_artist(roots: Iterable[str | Path]) -> list[Track]:
    """GTZAN clips from several folders (``gtzan``, ``gtzan-excerpts``), grouped by their ``artist`` column.

    A clip without an artist joins the artist of the nearest clip of its genre (across every folder) at
    most :data:`ARTIST_NEIGHBOUR_IDS` ids away (neighbouring GTZAN ids are usually one artist, so this keeps
    the likely same artist on one side of a split); failing that it is a group of its own, named by its
    genre and its block of ten ids (``unknown:jazz:0004`` for jazz.00047), shared with any other unmatched
    clip of that block.
    """
    rows: list[tuple[Track, str]] = []
    for root in roots:
        root = Path(root)
        table = root / "labels.csv"
        if not table.is_file():
            raise FileNotFoundError(f"{table}: no such file (the artist grouping needs labels.csv)")
        with table.open(newline="") as f:
            artists = {row.get("gtzan_id") or Path(row["path"]).stem: row.get("artist", "").strip()
                       for row in csv.DictReader(f)}
        rows += [(t, artists.get(t.track_id, "")) for t in load_gtzan(root)]
    known = [(t.label, gtzan_number(t.track_id), a) for t, a in rows if a]
    tracks = []
    for track, artist in rows:
        if not artist:
            number = gtzan_number(track.track_id)
            near = sorted((abs(n - number), a) for label, n, a in known
                          if label == track.label and abs(n - number) <= ARTIST_NEIGHBOUR_IDS)
            artist = near[0][1] if near else f"unknown:{track.label}:{number // 10:04d}"
        tracks.append(Track(track.path, track.label, f"artist:{artist}", track.track_id, track.split))
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids):
        raise ValueError("the same GTZAN id appears in two folders")
    return tracks


def read_fma_tracks_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of FMA's ``tracks.csv`` as flat dicts keyed ``"track_id"`` and ``"<top>/<column>"``
    (``"track/genre_top"``, ``"set/split"``, ``"set/subset"``, ``"artist/id"``, …).

    The file has a three-row header: the top-level names (``track``, ``album``, ``artist``, ``set``),
    the column names, and a row naming the index column ``track_id``.
    """
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            top, names, index = next(reader), next(reader), next(reader)
        except StopIteration:
            raise ValueError(f"{path}: not an FMA tracks.csv (fewer than 3 header rows)") from None
        if index[:1] != ["track_id"]:
            raise ValueError(f"{path}: not an FMA tracks.csv (third header row starts {index[:1]}, not track_id)")
        keys = ["track_id"] + [f"{t}/{n}" for t, n in zip(top[1:], names[1:], strict=True)]
        return [dict(zip(keys, row, strict=False)) for row in reader if row]


def load_fma(metadata: str | Path, audio: str | Path, subset: str = "small") -> list[Track]:
    """FMA tracks of ``subset`` ("small", "medium" or "large"; each includes the smaller ones) that
    have a top-level genre and whose audio file exists (``<audio>/<id[:3]>/<id>.mp3``).

    Labels are ``track/genre_top``; ``split`` is the official artist-filtered ``set/split``
    (training → "train", validation → "valid", test → "test"); groups are artist ids.
    """
    metadata = Path(metadata)
    table = metadata / "tracks.csv" if metadata.is_dir() else metadata
    order = ("small", "medium", "large")
    if subset not in order:
        raise ValueError(f"subset {subset!r} is not one of {order}")
    wanted = set(order[: order.index(subset) + 1])
    names = {"training": "train", "validation": "valid", "test": "test"}
    tracks = []
    for row in read_fma_tracks_csv(table):
        genre = row.get("track/genre_top", "")
        if not genre or row.get("set/subset") not in wanted:
            continue
        tid = int(row["track_id"])
        path = Path(audio) / f"{tid:06d}"[:3] / f"{tid:06d}.mp3"
        if path.is_file():
            tracks.append(Track(path, genre, f"artist:{row.get('artist/id', tid)}", f"{tid:06d}",
                                names.get(row.get("set/split", ""), "")))
    if not tracks:
        raise FileNotFoundError(f"{table}: no {subset} tracks with a top genre and audio under {audio}")
    return tracks


def load_folders(root: str | Path) -> list[Track]:
    """One folder per label: ``root/<label>/**/<audio file>``. Each track is its own group (say which
    belong together with :func:`load_csv_manifest`'s ``group`` column)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    tracks = [Track(p, folder.name, str(p.relative_to(root)), str(p.relative_to(root)))
              for folder in sorted(d for d in root.iterdir() if d.is_dir())
              for p in sorted(folder.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not tracks:
        raise FileNotFoundError(f"{root}: no audio files in label folders")
    return tracks


def load_csv_manifest(path: str | Path) -> list[Track]:
    """A CSV with a header and columns ``path, label`` and optionally ``group`` and ``split``; relative
    paths are relative to the CSV's folder."""
    path = Path(path)
    tracks = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for n, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise ValueError(f"{path}:{n}: empty path or label")
            audio = Path(row["path"])
            audio = audio if audio.is_absolute() else path.parent / audio
            tracks.append(Track(audio, row["label"], row.get("group") or row["path"], row["path"],
                                row.get("split") or ""))
    if not tracks:
        raise ValueError(f"{path}: no rows")
    return tracks


def load_dataset(spec: str) -> list[Track]:
    """``gtzan:DIR``, ``fma:METADATA_DIR:AUDIO_DIR[:subset]``, ``folders:DIR`` or ``csv:FILE`` (``~`` is
    expanded: after the colon the shell leaves it alone)."""
    kind, _, rest = spec.partition(":")
    rest = ":".join(str(Path(part).expanduser()) if part.startswith("~") else part for part in rest.split(":"))
    if kind == "gtzan":
        return load_gtzan(rest)
    if kind == "fma":
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise ValueError("fma needs fma:METADATA_DIR:AUDIO_DIR[:small|medium|large]")
        return load_fma(parts[0], parts[1], *parts[2:])
    if kind == "folders":
        return load_folders(rest)
    if kind == "csv":
        return load_csv_manifest(rest)
    raise ValueError(f"dataset {spec!r}: expected gtzan:DIR, fma:META:AUDIO[:subset], folders:DIR or csv:FILE")


def labels_of(tracks: Iterable[Track]) -> tuple[str, ...]:
    """The sorted distinct labels."""
    return tuple(sorted({t.label for t in tracks}))


def contiguous_folds(tracks: list[Track], n_folds: int = 5) -> np.ndarray:
    """Stratified GTZAN folds that keep neighbouring ids together: fold index per track.

    Within each label, tracks are sorted by id and cut into ``n_folds`` contiguous runs, run k going
    to fold k. Every fold sees every label, and consecutive ids (often one artist in GTZAN) share a
    fold except across the n_folds - 1 cuts per label.
    """
    folds = np.full(len(tracks), -1, dtype=int)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tracks):
        by_label[t.label].append(i)
    for indices in by_label.values():
        indices.sort(key=lambda i: (gtzan_number(tracks[i].track_id), tracks[i].track_id))
        for fold, run in enumerate(np.array_split(np.array(indices), n_folds)):
            folds[run] = fold
    return folds


def grouped_folds(tracks: list[Track], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Stratified folds with every group on one side (scikit-learn's StratifiedGroupKFold): fold per track."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = [t.label for t in tracks]
    groups = [t.group for t in tracks]
    folds = np.full(len(tracks), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(tracks)), labels, groups)):
        folds[test] = k
    return folds


def folds_for(tracks: list[Track], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """GTZAN ids get :func:`contiguous_folds` (their groups are genres); anything else :func:`grouped_folds`."""
    try:
        if all(t.group == t.label for t in tracks):
            [gtzan_number(t.track_id) for t in tracks]
            return contiguous_folds(tracks, n_folds)
    except ValueError:
        pass
    return grouped_folds(tracks, n_folds, seed)


def check_no_leak(tracks: list[Track], train: np.ndarray, test: np.ndarray) -> None:
    """Raise if a track or a group is on both sides of a split."""
    train_groups = {tracks[i].group for i in train} if not all(t.group == t.label for t in tracks) else set()
    shared_tracks = {tracks[i].path for i in train} & {tracks[i].path for i in test}
    shared_groups = train_groups & {tracks[i].group for i in test}
    if shared_tracks or shared_groups:
        raise ValueError(f"split leaks: {len(shared_tracks)} tracks and {len(shared_groups)} groups on both sides")
