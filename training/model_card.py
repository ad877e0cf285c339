"""The default model's card: provenance, data, cross-validated metrics, out-of-domain behaviour, limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import av

from tagger.cli import iter_audio_files
from tagger.pipeline import Tagger


def id3_genre(path: Path) -> str:
    """The file's own genre tag (ID3 TCON, Vorbis GENRE...) as FFmpeg reads it, or ''."""
    try:
        with av.open(str(path)) as c:
            return str(c.metadata.get("genre", ""))
    except av.error.FFmpegError:
        return ""


def out_of_domain_rows(model: Path, folder: Path) -> list[dict]:
    """Tag every audio file under ``folder`` with the exported model; one row per file."""
    tagger = Tagger(model)
    rows = []
    for path in iter_audio_files([str(folder)]):
        started = time.perf_counter()
        result = tagger.tag_file(path)
        genre, tags = result.outputs["genre"], result.outputs["msd_genres"]
        rows.append({
            "file": str(path.relative_to(folder)), "id3_genre": id3_genre(path), "duration_s": result.duration_s,
            "genre": genre.top, "confidence": genre.confidence, "uncertain": genre.uncertain,
            "second": genre.scores[1].label, "msd_top3": [s.label for s in tags.scores[:3]],
            "msd_decided": tags.decided, "seconds": time.perf_counter() - started,
        })
    return rows


def seconds_per_30s(rows: list[dict]) -> float:
    """Tagging time per 30 s of audio over out-of-domain rows (seconds)."""
    return 30 * sum(r["seconds"] for r in rows) / sum(r["duration_s"] for r in rows)


def _table(rows: list[dict], with_id3: bool) -> str:
    head = "| file | " + ("ID3 genre | " if with_id3 else "") + "GTZAN genre (confidence) | MSD tags, top 3 |"
    lines = [head, "|" + " --- |" * (4 if with_id3 else 3)]
    for r in rows:
        verdict = f"{r['genre']} ({100 * r['confidence']:.0f} %{', uncertain' if r['uncertain'] else ''})"
        cells = [r["file"], *([r["id3_genre"]] if with_id3 else []), verdict, ", ".join(r["msd_top3"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _int8_section(name: str, int8: dict | None) -> str:
    if not int8:
        return ""
    before, after = int8["float32"], int8["int8"]
    q = int8["quantization"]
    timing = ""
    if "seconds_per_30s" in int8:
        timing = (f" CPU cost, same tracks and box as above: {int8['seconds_per_30s']['int8']:.2f} s per 30 s "
                  f"(float32 file: {int8['seconds_per_30s']['float32']:.2f} s).")
    return f"""
## The int8 file for CPUs: `{name}-int8.onnx`

The same model with the {len(q['convolutions'])} convolutions of its front end (the timbral and temporal filters)
in int8 (`training/optimize.py`: int8 weights per channel, uint8 input, each channel's output range
calibrated on {q['calibration_files']} FMA clips, which are not GTZAN, so no CV test clip calibrated it; the temporal
filters run in a polyphase form). The runtime loads it instead of the float32 file when it runs on the
CPU and no model was named (GPUs get the float32 file). Both files skip the MSD checkpoint's dead
filters ({q.get('dead_filters_dropped', 0)} of them: weights of 2e-7 and less, so that their output is their
bias), which are restored as constants; {q.get('constant_features_dropped', 0)} such constant channels are
left out of the frame features, their part folded into the next convolution and the heads' biases.
Same grouped 5-fold CV, shipped head, fast path, before → after:

| file | accuracy | macro F1 | ECE |
| --- | --- | --- | --- |
| float32 | {before['accuracy']:.3f} | {before['macro_f1']:.3f} | {before['ece']:.3f} |
| int8 front end | {after['accuracy']:.3f} | {after['macro_f1']:.3f} | {after['ece']:.3f} |

Same top genre on {int8['same_top_label']} of {int8['tracks']} clips; largest change of a track's genre probability
{int8['max_abs_diff_track_probs']:.3f}.{timing}
"""


def write_card(out: Path, name: str, cv: dict, chosen: str, realworld: list[dict], fma: list[dict],
               int8: dict | None = None) -> Path:
    rows = []
    for variant, r in cv.items():
        mark = " **(shipped)**" if variant == chosen else ""
        fast = r.get("fast_path")
        fast_cell = f"{fast['accuracy']:.3f} / {fast['macro_f1']:.3f}" if fast else "–"
        rows.append(f"| {variant}{mark} | {r['accuracy']:.3f} | {r['accuracy_fold_mean']:.3f} ± "
                    f"{r['accuracy_fold_std']:.3f} | {r['macro_f1']:.3f} ± {r['macro_f1_fold_std']:.3f} | "
                    f"{r['ece']:.3f} | {fast_cell} |")
    per_class = cv[chosen]["report"]["per_class"]
    class_rows = [f"| {label} | {v['support']} | {v['precision']:.2f} | {v['recall']:.2f} | {v['f1']:.2f} |"
                  for label, v in per_class.items()]
    fma_agree = sum(1 for r in fma if r["id3_genre"].lower().replace("-", "") in
                    {r["genre"].lower(), *(t.lower().replace("-", "") for t in r["msd_top3"])})
    float32_cost = seconds_per_30s(realworld)
    text = f"""# {name}

**What it is.** The MSD_musicnn tagger (Pons & Serra 2019, trained on the Million Song Dataset) used as
a backbone, with a 10-genre head trained on GTZAN clips by genre-tagger. Two outputs:

- `genre` (softmax, one label): blues, classical, country, disco, hiphop, jazz, metal, pop, reggae, rock.
- `msd_genres` (sigmoid, multi-label): the 30 MSD tags that name genres or styles (rock, pop, electronic,
  jazz, metal, Hip-Hop, blues, country, folk, punk, soul, rnb, funk, House, ambient, electro, heavy metal,
  hard rock, …), straight from the pretrained tagger, so users also see genres GTZAN lacks.

Genre head: a multinomial logistic regression (sklearn's default C = 1, not tuned) on the standardised
1506 pooled channels of the frozen backbone (after its pretrained batch norm), trained on every slice of
both views, each class and each track weighted equally, folded into one linear layer of the ONNX graph.
It was chosen by the cross-validation below over a linear head and a fine-tuned dense layer trained with
AdamW and mixup, and over the same heads with augmentation (Gaussian noise σ 0.005, pitch shift ±2
semitones): with 8 clips per genre, augmentation did not help, so the shipped head does without it.

Input: 16 kHz mono, log-mel (n_fft 512, hop 256, 96 slaney mel bands to 8 kHz, float16-rounded,
log10(10000·x + 1)), sliced in 2.56 s (160 frames) and 5.12 s (320 frames) windows with half-window hops;
a track's estimate is the mean of its slices (per view, then over both views). All of it is in the model
file's manifest (`genre-tagger models {name}`).

## Provenance and licence

- Backbone weights: `musicnn/MSD_musicnn` checkpoint of the musicnn 0.1.0 wheel on PyPI, imported with
  genre-tagger's own TensorFlow-free checkpoint reader and PyTorch port (tested against TensorFlow's
  outputs: tag probabilities within 1e-4). musicnn is under the ISC licence:

  > Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed by Jordi Pons
  > (www.jordipons.me). Permission to use, copy, modify, and/or distribute this software for any purpose
  > with or without fee is hereby granted, provided that the above copyright notice and this permission
  > notice appear in all copies. THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
  > WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO
  > EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY
  > DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT,
  > NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF
  > THIS SOFTWARE.

- Genre head: trained by `make default-model` (`training/default_model.py`, seeded) on 161 GTZAN clips
  (classical 89, every other genre 8: ids 00000–00007, the first 15–20 s of each track). GTZAN itself has
  no licence; its audio is not distributed with genre-tagger.

## Evaluation (grouped, stratified 5-fold cross-validation, track level)

Folds keep contiguous GTZAN ids together (each genre's clips sorted by id and cut into 5 runs), so
neighbouring ids, often one artist, rarely straddle train and test. With only ids 00000–00007 per
non-classical genre, some artist overlap across the 4 cuts per genre remains: read these numbers as
optimistic for unseen artists. Track accuracy is pooled over all out-of-fold predictions; the ± is the
standard deviation over folds. ECE: 15-bin expected calibration error of the top-1 confidence. The
last column evaluates the same heads through the runtime's fast path (frame features computed once per
track, windows pooled from them; `tagger/framepool.py`), which is what `tag` and the daemon use for files.

| variant | accuracy | per-fold accuracy | macro F1 | ECE | fast path: accuracy / macro F1 |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Per class, shipped variant (out-of-fold):

| genre | clips | precision | recall | F1 |
| --- | --- | --- | --- | --- |
{chr(10).join(class_rows)}

Confusion matrix: [`{name}.confusion.png`]({name}.confusion.png); every fold, prediction and setting:
[`{name}.cv.json`]({name}.cv.json).

## Out of domain

Game soundtracks (`../shared/data/realworld`, no labels; GTZAN has no "soundtrack" or "electronic"
class, so the genre head must pick among its ten; the MSD tags are the more useful output here):

{_table(realworld, with_id3=False)}

Free Music Archive clips (`../shared/data/fma`) with their own ID3 genre beside: {fma_agree} of {len(fma)}
have their ID3 genre among the GTZAN genre or the top 3 MSD tags.

{_table(fma, with_id3=True)}

CPU cost on this 2-core box (decode + front end + both views, full coverage, ONNX Runtime CPU):
{float32_cost:.2f} s per 30 s of audio, averaged over the realworld tracks (float32 file).
{_int8_section(name, int8)}
## Intended use and limits

- Intended: suggesting genre tags for a music library, and a live genre display; the `msd_genres`
  output for styles beyond GTZAN's ten (electronic, folk, punk, soul, ambient, …).
- The genre head saw 8 tracks (one or two artists) per non-classical genre: it knows those genres
  through the pretrained MSD features, not from broad examples. Expect confusions between neighbouring
  styles (rock/metal/country/blues, disco/pop) and low confidence off GTZAN's taxonomy; the 60 %
  threshold marks such tracks uncertain.
- Western popular music dominates both the MSD and GTZAN; other traditions are poorly covered.
- No vocal, mood or decade outputs (the MSD tagger has them; they are left out on purpose).
"""
    path = out / f"{name}.md"
    path.write_text(text)
    (out / f"{name}.out-of-domain.json").write_text(json.dumps({"realworld": realworld, "fma": fma}, indent=1))
    return path
