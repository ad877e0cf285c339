"""An on-disk cache of log-mel spectrograms, one file per (front end, audio variant, track).

Computing spectrograms dominates a small training run, and every epoch, fold and architecture with
the same front end reads the same ones. Entries are keyed by the front end's parameters, the audio
variant (``none`` or a seeded augmentation such as ``pitch+2``) and the file's path, size and
mtime, so a changed file or front end is recomputed and nothing stale is read. Filling is resumable
(existing entries are kept) and shows a progress bar; a file that fails to decode is reported on one
line and left out, the rest go on.

Spectrograms are stored as float16 [frames, n_mels] ``.npy`` (half the disk; dB and log10 values
keep 3 significant digits, far below the networks' noise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tagger.decode import decode_file
from tagger.errors import DecodeError
from tagger.frontend import FrontEndConfig
from training.datasets import Track

log = logging.getLogger(__name__)
AudioVariant = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def front_end_key(fe: FrontEndConfig) -> str:
    """A short stable name for a front end's parameters."""
    return hashlib.blake2b(json.dumps(asdict(fe), sort_keys=True).encode(), digest_size=6).hexdigest()


def track_key(track: Track) -> str:
    """A short stable name for a file's path, size and mtime."""
    st = track.path.stat()
    text = f"{track.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class SpectrogramCache:
    """Spectrograms under ``root/<front end key>/<variant>/<track key>.npy``.

    Args:
        root: the cache folder (created).
        seed: seeds each augmented variant per track (same seed, same audio).
    """

    def __init__(self, root: str | Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.seed = seed

    def path(self, fe: FrontEndConfig, variant: str, track: Track) -> Path:
        return self.root / front_end_key(fe) / variant / f"{track_key(track)}.npy"

    def fill(self, tracks: Sequence[Track], front_ends: Sequence[FrontEndConfig],
             variants: dict[str, AudioVariant | None], progress: bool = True) -> list[str]:
        """Compute every missing entry; return one error line per track that could not be read.

        Each track is decoded once per sample rate and every front end and variant computed from it.
        """
        errors = []
        todo = [t for t in tracks
                if any(not self.path(fe, v, t).exists() for fe in front_ends for v in variants)]
        bar = tqdm(todo, desc="spectrograms", unit="track", disable=not progress or not todo)
        for track in bar:
            try:
                for rate in sorted({fe.sample_rate for fe in front_ends}):
                    at_rate = [fe for fe in front_ends if fe.sample_rate == rate]
                    audio = decode_file(track.path, rate)
                    for variant, transform in variants.items():
                        missing = [fe for fe in at_rate if not self.path(fe, variant, track).exists()]
                        if not missing:
                            continue
                        # One draw per (track, variant, rate), shared by every front end at that rate.
                        rng = np.random.default_rng([self.seed, _stable(track.track_id), _stable(variant), rate])
                        signal = audio if transform is None else transform(audio, rate, rng)
                        for fe in missing:
                            spec = fe.spectrogram(signal.astype(np.float32)).astype(np.float16)
                            _save_atomic(self.path(fe, variant, track), spec)
            except (DecodeError, OSError) as exc:
                line = f"{track.path}: {exc}".splitlines()[0]
                log.warning("%s", line)
                errors.append(line)
        return errors

    def load(self, fe: FrontEndConfig, variant: str, track: Track) -> np.ndarray:
        """The cached spectrogram, float32 [frames, n_mels] (raises FileNotFoundError if absent)."""
        return np.load(self.path(fe, variant, track)).astype(np.float32)


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def _save_atomic(path: Path, array: np.ndarray) -> None:
    # Written aside and renamed, so an interrupted fill never leaves a half file that looks complete.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, array)
    tmp.replace(path)
