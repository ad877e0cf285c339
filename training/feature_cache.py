"""The backbone's features of every clip the default model's build reads, computed once and cached on disk.

A clip's features are what the runtime's fast path makes of it (:mod:`tagger.framepool`): musicnn's
frame features over the whole clip, then each view's windows (half-window hops, end-aligned last
window) pooled into max and mean per channel. A clip shorter than a window (135 of the GTZAN excerpts
are under 2.56 s, every one under 5.12 s) is one window pooled over its own frames, as the runtime
does: nothing is padded or repeated, and nothing cropped.

Clips: the labelled GTZAN clips (clean and every degradation), the non-music clips of
:mod:`training.negatives` and the excerpts of packaged music of :mod:`training.music_sources` (clean and
the channel's degradations: noise, MP3, telephone; the packages are fetched with ``apt-get download`` on
the first run), and FMA/realworld (clean, a check only). ``--sets`` picks some; two processes, one with
``--reverse``, share the work.

Cache layout: ``<cache>/<variant>/<clip id>.npz`` with one float32 array [windows, 1506] per view,
``variant`` being ``clean`` or a degradation of :mod:`training.degrade` (seeded per clip). Files are
written atomically, so an interrupted run resumes where it stopped.

    nice -n 10 python -m training.feature_cache --data ../shared/data --cache .cache/features
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tagger.decode import decode_file
from tagger.framepool import pool_windows
from tagger.model import ViewSpec
from training.degrade import DEGRADATIONS, degrade
from training.musicnn import MUSICNN_FRONT_END, MUSICNN_VIEWS, MSDMusicnn, MusicnnBackbone

MUSIC_VARIANTS = ("clean", *DEGRADATIONS)
# Pitch shifts leave noise, hum and silence what they are: non-music is only degraded by the channel.
NON_MUSIC_VARIANTS = ("clean", "noise-20db", "mp3-64k", "telephone")
# The packaged music (training/music_sources.py) trains only the music detector: the channel's degradations.
PACKAGE_VARIANTS = NON_MUSIC_VARIANTS
SETS = ("labelled", "non-music", "evaluation", "packages")
CHUNK_FRAMES = 4096  # frames of a long track computed per backbone call (memory), with exact context


def pool_views(features: np.ndarray, views: Sequence[ViewSpec] = MUSICNN_VIEWS) -> dict[str, np.ndarray]:
    """Each view's windows (half-window hops, end-aligned last window) pooled from frame features [C, T];
    a clip shorter than a window is one window of all its frames (as tagger.framepool.FeatureStream)."""
    total = features.shape[1]
    out = {}
    for view in views:
        w = view.window_frames
        if total < w:
            starts, w = [0], total
        else:
            starts = list(range(0, total - w + 1, view.hop_frames))
            if starts[-1] + w < total:
                starts.append(total - w)
        out[view.name] = pool_windows(features, 0, starts, w)
    return out


@torch.no_grad()
def frame_features(net: MSDMusicnn, audio: np.ndarray, chunk: int = CHUNK_FRAMES) -> np.ndarray:
    """musicnn's frame features [1506/2 channels, frames] of a whole clip, computed in chunks with their
    full receptive field around them (so the result equals one call over the whole clip)."""
    spec = MUSICNN_FRONT_END.spectrogram(audio)
    total = spec.shape[0]
    before, after = MusicnnBackbone.CONTEXT
    parts = []
    for lo in range(0, total, chunk):
        hi = min(total, lo + chunk)
        a, b = max(0, lo - before), min(total, hi + after)
        out = net.backbone(torch.from_numpy(np.ascontiguousarray(spec[a:b]))[None]).numpy()[0]
        parts.append(out[:, lo - a:hi - a])
    return np.concatenate(parts, axis=1)


def clip_seed(clip_id: str, variant: str) -> int:
    """A stable seed per clip and variant (the degradations' noise)."""
    return zlib.crc32(f"{clip_id}/{variant}".encode())


class FeatureCache:
    """Pooled fast-path features per (variant, clip), computed with ``net`` on a miss."""

    def __init__(self, root: str | Path, net: MSDMusicnn | None = None) -> None:
        self.root = Path(root)
        self.net = net

    def path(self, variant: str, clip_id: str) -> Path:
        return self.root / variant / f"{clip_id.replace('/', '_')}.npz"

    def has(self, variant: str, clip_id: str) -> bool:
        return self.path(variant, clip_id).is_file()

    def get(self, variant: str, clip_id: str, audio: Callable[[], np.ndarray]) -> dict[str, np.ndarray]:
        """The clip's pooled features per view; ``audio()`` (clean, 16 kHz mono) is called on a miss only."""
        path = self.path(variant, clip_id)
        if path.is_file():
            with np.load(path) as stored:
                return {k: stored[k] for k in stored.files}
        if self.net is None:
            raise FileNotFoundError(f"{path}: not cached and no network to compute it")
        sr = MUSICNN_FRONT_END.sample_rate
        clean = audio()
        signal = degrade(clean, variant, sr, np.random.default_rng(clip_seed(clip_id, variant)))
        feats = pool_views(frame_features(self.net, signal))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **feats)
        tmp.replace(path)
        return feats


def decoder(path: Path) -> Callable[[], np.ndarray]:
    return lambda: decode_file(path, MUSICNN_FRONT_END.sample_rate)


def music_clips(data: Path) -> list[tuple[str, Path]]:
    """The labelled GTZAN clips (ids) and the unlabelled evaluation music (``fma/…``, ``realworld/…``)."""
    from tagger.cli import iter_audio_files
    from training.datasets import load_gtzan_by_artist

    clips = [(t.track_id, t.path) for t in load_gtzan_by_artist([data / "gtzan", data / "gtzan-excerpts"])]
    for folder in ("fma", "realworld"):
        root = data / folder
        if root.is_dir():
            clips += [(f"{folder}/{p.relative_to(root)}", p) for p in iter_audio_files([str(root)])]
    return clips


def main(argv: list[str] | None = None) -> int:
    from training.music_sources import DEFAULT_ROOT, excerpts
    from training.musicnn import fetch_musicnn_wheel
    from training.negatives import all_non_music

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding gtzan/ … (default ../shared/data)")
    parser.add_argument("--cache", default=".cache/features", help="cache folder (default .cache/features)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the box is shared)")
    parser.add_argument("--sets", default=",".join(SETS),
                        help=f"which clips, comma-separated (default all: {','.join(SETS)}); 'packages' fetches the "
                             "Debian music packages of training/music_sources.py")
    parser.add_argument("--packages", default=str(DEFAULT_ROOT),
                        help=f"where the music packages are unpacked (default {DEFAULT_ROOT})")
    parser.add_argument("--reverse", action="store_true",
                        help="work through the list from its end (a second process then shares the work)")
    args = parser.parse_args(argv)
    sets = {s for s in args.sets.split(",") if s}
    if sets - set(SETS):
        parser.error(f"--sets: unknown {sorted(sets - set(SETS))}; known: {', '.join(SETS)}")
    torch.set_num_threads(args.threads)
    cache = FeatureCache(args.cache, MSDMusicnn.pretrained(fetch_musicnn_wheel()))
    data = Path(args.data)
    music = music_clips(data)
    labelled = [c for c in music if "/" not in c[0]]
    evaluation = [c for c in music if "/" in c[0]]
    negatives = all_non_music() if "non-music" in sets else []
    packaged = excerpts(root=Path(args.packages)) if "packages" in sets else []
    labelled = labelled if "labelled" in sets else []
    evaluation = evaluation if "evaluation" in sets else []
    sr = MUSICNN_FRONT_END.sample_rate
    jobs: list[tuple[str, str, Callable[[], np.ndarray]]] = []
    jobs += [("clean", cid, decoder(p)) for cid, p in labelled]
    jobs += [("clean", f"nonmusic/{n.clip_id}", lambda n=n: n.make(sr)) for n in negatives]
    jobs += [("clean", cid, decoder(p)) for cid, p in evaluation]
    jobs += [(v, cid, decoder(p)) for v in MUSIC_VARIANTS[1:] for cid, p in labelled]
    jobs += [(v, f"nonmusic/{n.clip_id}", lambda n=n: n.make(sr)) for v in NON_MUSIC_VARIANTS[1:] for n in negatives]
    jobs += [(v, e.clip_id, lambda e=e: e.make(sr)) for v in PACKAGE_VARIANTS for e in packaged]
    if args.reverse:
        jobs.reverse()
    started = time.time()
    for i, (variant, cid, audio) in enumerate(jobs):
        if not cache.has(variant, cid):
            try:
                cache.get(variant, cid, audio)
            except Exception as exc:  # one bad clip is reported, the rest goes on
                print(f"{variant} {cid}: {exc}", file=sys.stderr, flush=True)
        if i % 50 == 0 or i == len(jobs) - 1:
            print(f"{i + 1}/{len(jobs)} {variant} {cid} {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
