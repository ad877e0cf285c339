"""The default model's card: provenance, data, artist-grouped CV, calibration, degradations, the music
detector's errors, out-of-domain behaviour and limits, all from ``<model>.cv.json`` as the build wrote it."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

MUSICNN_LICENCE = """\
  > Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed by Jordi Pons
  > (www.jordipons.me). Permission to use, copy, modify, and/or distribute this software for any purpose
  > with or without fee is hereby granted, provided that the above copyright notice and this permission
  > notice appear in all copies. THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
  > WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO
  > EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY
  > DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT,
  > NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF
  > THIS SOFTWARE."""

ROW_TITLES = {
    "baseline": "baseline: logistic regression (C = 1) on the track-mean 200-d MSD embedding",
    "previous": "previous recipe (model 1.0.0): slice logistic regression on the pooled channels, C = 1",
    "nested": "nested choice (head and C by inner CV), clean training",
    "nested+aug": "nested choice, trained with the degradations' copies too",
    "shipped recipe": "the shipped recipe (chosen on all clips, then fixed) on the same folds",
}


def id3_genre(path: Path) -> str:
    """The file's own genre tag (ID3 TCON, Vorbis GENRE...) as FFmpeg reads it, or ''."""
    try:
        with av.open(str(path)) as c:
            return str(c.metadata.get("genre", ""))
    except av.error.FFmpegError:
        return ""


def seconds_per_30s(rows: list[dict], key: str = "seconds") -> float:
    """Tagging time per 30 s of audio over runtime rows (seconds): wall (``key="seconds"``) or CPU
    (``"cpu_seconds"``)."""
    return 30 * sum(r[key] for r in rows) / sum(r["duration_s"] for r in rows)


def _raised_line(runtime: dict, made: dict | None) -> str:
    """Which files of the runtime check went through raised to the model's level floor, and what made the check
    (command, date, files), when the report says so (reports of before the floor do not)."""
    lines = []
    if made:
        files = ", ".join(f"{name} `{m['file']}` sha1 {m['sha1']}" for name, m in made["models"].items())
        floors = {m["level_floor_dbfs"] for m in made["models"].values()}
        floor = ("no level floor" if floors == {None} else
                 ", ".join(f"level floor {f:g} dBFS" for f in sorted(f for f in floors if f is not None)))
        lines.append(f"Made by `{made['command']}` on {made['date']} ({files}; {floor}; {made['wall_s']:.0f} s "
                     f"wall, {made['cpu_s']:.0f} s CPU on a shared machine).")
    if all("gain_db" in r for sets in runtime.values() for rows in sets.values() for r in rows):
        parts = []
        for set_name, rows in next(iter(runtime.values())).items():
            raised = [r for r in rows if r["gain_db"] > 0.0]
            if not raised:
                continue
            gains = [r["gain_db"] for r in raised]
            kinds = Counter(Path(r["file"]).parent.name for r in raised) if set_name == "labelled" else Counter()
            parts.append(f"{len(raised)} of the {len(rows)} {set_name} files (by {min(gains):.1f}–{max(gains):.1f} dB"
                         + (", " + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) if kinds else "") + ")")
        lines.append("Quieter than the level floor, so analysed raised to it (section \"Level\"; "
                     f"{next(iter(runtime))} file): " + ("; ".join(parts) if parts else "none") + ".")
    return "\n".join(lines)


def _pm(r: dict, key: str) -> str:
    return f"{r[key]:.3f} ± {r[key + '_fold_std']:.3f}"


def _genre_table(rows: dict, shipped: str) -> str:
    lines = ["| variant | accuracy (pooled) | accuracy per fold | macro F1 per fold | ECE raw | ECE, temperature "
             "cross-fitted over outer folds | ECE, temperature fitted inside each outer fold |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        mark = " **(shipped)**" if name == shipped else ""
        cal = r.get("calibration")
        ece_cal = (f"{cal['ece_cross_fitted']:.3f} (folds {cal['ece_cross_fitted_fold_mean']:.3f} ± "
                   f"{cal['ece_cross_fitted_fold_std']:.3f})") if cal else "–"
        nested = r.get("nested_calibration")
        ece_nested = (f"**{nested['ece']:.3f}** (folds {nested['ece_fold_mean']:.3f} ± {nested['ece_fold_std']:.3f})"
                      if nested else "–")
        lines.append(f"| {ROW_TITLES.get(name, name)}{mark} | {r['accuracy']:.3f} | "
                     f"{r['accuracy_fold_mean']:.3f} ± {r['accuracy_fold_std']:.3f} | "
                     f"{r['macro_f1_fold_mean']:.3f} ± {r['macro_f1_fold_std']:.3f} | {r['ece']:.3f} | {ece_cal} | "
                     f"{ece_nested} |")
    return "\n".join(lines)


def _runtime_table(rows: list[dict], with_id3: bool) -> str:
    head = ("| file | " + ("ID3 genre | " if with_id3 else "") +
            "music (probability) | GTZAN genre (confidence) | MSD tags, top 3 |")
    lines = [head, "|" + " --- |" * (5 if with_id3 else 4)]
    for r in rows:
        verdict = f"{r['genre']} ({100 * r['confidence']:.0f} %{', uncertain' if r['uncertain'] else ''})"
        music = f"{'yes' if r['music'] else 'NO'} ({100 * r['music_probability']:.0f} %)"
        cells = [Path(r["file"]).name if with_id3 else "/".join(Path(r["file"]).parts[-2:]),
                 *([id3_genre(Path(r["file"]))] if with_id3 else []), music, verdict, ", ".join(r["msd_top3"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _detector_section(det: dict, runtime: dict, negatives: Sequence, made: dict | None = None) -> str:
    variants = list(next(iter(det["non_music_by_kind"].values())).keys())
    head = "| kind | clips | " + " | ".join(f"no music: {v}" for v in variants) + " |"
    lines = [head, "|" + " --- |" * (2 + len(variants))]
    for kind, per in det["non_music_by_kind"].items():
        first = per[variants[0]]
        cells = [f"{p['no_music']}/{p['clips']}" for p in per.values()]
        lines.append(f"| {kind} | {first['clips']} | " + " | ".join(cells) + " |")
    voice_lines = ["| voice held out | clips | " + " | ".join(variants) + " |", "|" + " --- |" * (2 + len(variants))]
    for voice, per in det["non_music_by_voice"].items():
        first = per[variants[0]]
        voice_lines.append(f"| {voice} | {first['clips']} | "
                           + " | ".join(f"{p['no_music']}/{p['clips']}" for p in per.values()) + " |")
    music_cells = ", ".join(f"{v}: {n} (lowest {det['music_lowest'][v]:.2f})" for v, n in det["music_missed"].items())
    held = det["held_out"]
    lowest_held = min(held.values(), key=lambda h: h["lowest"]) if held else {"lowest": float("nan")}
    runtime_lines = ["| file | set | float32: no music | int8: no music | lowest music probability (float32 / int8) |",
                     "| --- | --- | --- | --- | --- |"]
    models = list(runtime)
    for set_name in ("labelled", "fma", "realworld", "non-music"):
        if not all(set_name in runtime[m] for m in models):
            continue
        rows = {m: runtime[m][set_name] for m in models}
        counts = " | ".join(f"{sum(1 for r in rows[m] if not r['music'])}/{len(rows[m])}" for m in models)
        lowest = " / ".join(f"{min(r['music_probability'] for r in rows[m]):.2f}" for m in models)
        highest = " / ".join(f"{max(r['music_probability'] for r in rows[m]):.2f}" for m in models)
        what = "music" if set_name != "non-music" else "non-music"
        runtime_lines.append(f"| {what} | {set_name} | {counts} | "
                             + (lowest if what == "music" else f"highest {highest}") + " |")
    packaged = det.get("packaged_by_package", {})
    pkg_lines = []
    if packaged:
        pvariants = list(next(iter(packaged.values())).keys())
        pkg_lines = ["| package held out | excerpts | " + " | ".join(f"no music: {v}" for v in pvariants)
                     + " | lowest (clean) |", "|" + " --- |" * (3 + len(pvariants))]
        for package, per in packaged.items():
            pkg_lines.append(f"| {package} | {per[pvariants[0]]['clips']} | "
                             + " | ".join(f"{p['no_music']}/{p['clips']}" for p in per.values())
                             + f" | {per[pvariants[0]]['lowest']:.2f} |")
    rates = det.get("threshold_rates", {})
    rate_line = ""
    if rates:
        shown = [t for t in ("0.2", "0.25", "0.3", "0.35", "0.4", "0.45", "0.5", f"{det['threshold']:g}") if t in rates]
        rate_line = ("Out-of-fold error rates over clip-variants by threshold (music called no music / non-music "
                     "called music): " + ", ".join(
                         f"{t}: {100 * rates[t]['music_called_no_music']:.1f} % / "
                         f"{100 * rates[t]['non_music_called_music']:.1f} %" for t in dict.fromkeys(shown)) + ".")
    sources = sorted({n.source for n in negatives})
    made_line = _raised_line(runtime, made)
    made_line = f"\n{made_line}\n" if made_line else ""
    return f"""## No music

A third output, `music` (sigmoid), is the probability that a slice is music: a logistic regression
(C = {det['c']}) on the same 1506 pooled channels, trained on every labelled music clip (clean and
degraded){" and " + str(det.get("packaged_clips", 0)) + " excerpts of freely licensed game soundtracks from "
          + str(len(packaged)) + " Debian packages (clean, with noise, MP3, telephone)" if packaged else ""}
against {len(negatives)} non-music clips (clean, with 20 dB white noise, as 64 kbps MP3 and through the
telephone band), each class weighing the same. A file (or a live horizon) whose mean probability is
below {det['threshold']:g} is **no music**: the runtime reports `music: false`, and never a genre for it
(see the README). A short silence inside a song cannot flip a file: the mean runs over the whole file.
The threshold is the one with the fewest out-of-fold errors in the CV below, each clip-variant counting
once (the FMA and realworld files play no part in it). {rate_line}

Music sources besides GTZAN (`training/music_sources.py`, fetched by `apt-get download`, unpacked with
`dpkg-deb -x`, never installed; at most 16 tracks per package and two 20 s excerpts per track; each
package's `copyright` file comes with it): freedroidrpg-data (GPL-2+), naev-data (CC BY 3.0 /
CC BY-SA 3.0 / public domain), hyperrogue-music (CC BY-SA 3.0), wesnoth-1.16-music (GPL-2+),
widelands-data (GPL-2+ / CC BY-SA 3.0), megaglest-data (CC BY-SA 3.0), ufoai-music (GPL-2+ /
CC BY-SA 3.0 / CC BY 3.0 / public domain), supertux-data (GPL-2+ / CC BY-SA), extremetuxracer-data
(GPL-2+), planetblupi-music-ogg (GPL-3+), hedgewars-data (GPL-2 / CC BY-SA 3.0), frozen-bubble-data's
music (GPL-2). Never: warzone2100, ASC or Endless Singularity packages (their music is in the realworld
fixtures), nor anything of FMA.

Non-music sources ({", ".join(sources)}): generated silence and dither, white/pink/brown noise at three
levels, 50/60 Hz hum, tones, DTMF, sweeps, synthetic applause; espeak-ng speech in 6 languages × 4 voices;
recorded voice prompts in 4 languages (Asterisk, CC BY-SA 3.0 / CC BY 3.0); sound effects of
sound-theme-freedesktop and frozen-bubble-data (GPL-2/GPL-2+/CC BY-SA 3.0). See `training/negatives.py`.

Cross-validated on the genre CV's artist folds, non-music held out by whole group (a kind, a kind in
one language, a package: every clip below was scored by a detector that saw no clip of its group):

{chr(10).join(lines)}

Each speech voice held out on its own (a detector trained on everything else):

{chr(10).join(voice_lines)}

Packaged music, each package held out whole (scored by detectors that saw none of its tracks):

{chr(10).join(pkg_lines) if pkg_lines else "(not used in this build)"}

Labelled music called no music, out of fold ({det['music_clips']} clips per variant): {music_cells}.
FMA and realworld music (never trained on) under every fold's detector: {det['held_out_missed']} of
{len(held)} called no music at least once (lowest probability {lowest_held['lowest']:.2f}).

The shipped files through the runtime (`tag`'s fast path); the non-music clips written as WAV files:

{chr(10).join(runtime_lines)}
{made_line}"""


def _live_model_text(doc: dict) -> str:
    """What model the live streams were recorded with: each half's own, trained without its artists (out of fold),
    or the shipped one (in-sample for the GTZAN clips)."""
    models = doc.get("half_models") or []
    if doc.get("mode") == "out_of_fold" and len(models) == 2:
        a, b = models
        return (f"Out of fold: each half's streams are recorded with the shipped recipe retrained without that "
                f"half's artists and without the non-music clips its streams play (`training/live_models.py`: "
                f"{a['trained_on']} and {b['trained_on']} labelled clips, {a.get('non_music_trained_on', '?')} and "
                f"{b.get('non_music_trained_on', '?')} non-music clips, temperatures {a['temperature']:.2f} and "
                f"{b['temperature']:.2f}; the int8 files, as the CPU runs by default), and each clip's own genre is "
                f"that model's. The same run on the shipped model (`--in-sample`, its genre head trained on these "
                f"GTZAN clips) is rosier; the shipped defaults were chosen on its tuning half.\n"
                f"- Still shared with the shipped model: {doc.get('leaks', 'see the JSON')}.")
    return ("The halves split artists for the detector's settings, not for the model: the shipped genre head was "
            "trained on every labelled clip, these GTZAN clips included, so its windows here are better than on "
            "music it never heard (2.56 s windows of the long GTZAN clips: about 90 % right in-sample against "
            "about 80 % out of fold on the card's artist-grouped folds). The figures below are the detector's on "
            "the shipped model and are optimistic for new artists; the realworld tracks were never trained on.")


def _rule_words(rule: dict) -> str:
    """A rule of ``bound``'s frontier in a few words."""
    if rule["family"] == "last_windows":
        k = rule["windows"]
        what = (f"the last {k} 2.56 s windows rank one genre first" if k != 1 else
                "the last 2.56 s window ranks a genre first")
        return f"a change once {what}, {'each deciding it' if rule['decided'] else 'decided or not'}"
    return (f"the evidence rule at {rule['evidence_nats']:g} nats, cap {rule['cap_nats']:g}, drift "
            f"{rule['drift_nats']:g}, hysteresis {rule['hysteresis']}")


def _live_bound(doc: dict) -> str:
    """What any decision rule could do with the held-out windows (``python -m training.live_eval``'s ``bound``,
    :mod:`training.live_bound`): the floor under the switch delay and the fewest spurious changes of the rules
    swept; "" when the JSON has none."""
    bound = doc.get("bound")
    if not bound:
        return ""
    floor, tuning, front = bound["floor"]["held_out"], bound["floor"]["tuning"], bound["frontier"]
    rank, decided = floor["any_window"], floor["any_window_decided"]
    late = bound["floor"]["over_8s"]["held_out"]

    def listed(key: str) -> str:
        rows = [r for r in late if r[key] is None or r[key] > 8.0]
        if not rows:
            return ""
        targets = sorted({r["stream"].split(" → ")[-1] for r in rows})
        own = sorted({r["second"] for r in rows})
        instead = Counter(g for r in rows for g, n in r["windows_rank_first"].items() for _ in range(n)
                          if g not in (r["first"], r["second"]))
        most = f"; in the 8 s after the switch its windows rank {instead.most_common(1)[0][0]} first most often" \
            if instead else ""
        return (f" ({', '.join(targets)} as the second clip, own genre {', '.join(own)}{most})"
                if len(targets) <= 3 else "")

    def spurious(row: dict | None) -> str:
        if row is None:
            return "no rule swept meets it"
        r = row["held_out"]
        return (f"{r['clips_spurious_changes']} on the GTZAN/FMA clips and pairs, {r['realworld_spurious_changes']} "
                f"on realworld (median {r['median_delay_s']:.2f} s, worst {r['worst_delay_s']:.2f} s, "
                f"{r['over_8s']} of {floor['pairs']} switches over 8 s; "
                f"{_rule_words(row['rule'])})")

    picks = front["held_out"]["picks"]
    tuning_pick = front["tuning"]["picks"]["worst_le_8s"]
    if decided["over_8s"]:
        reach = ("A rule that announces only a decided genre (as the daemon must: a genre is decided when its mean "
                 "probability over some windows reaches the threshold, so one of them must) cannot get those "
                 f"{decided['over_8s']} switches within 8 s: with these windows (the model's), worst ≤ 8 s is out of "
                 "reach whatever the rule.")
    else:
        reach = "The floor does not rule worst ≤ 8 s out; the rules below show what it costs."
    floor_text = (
        f"**Is the live line reachable at all with these windows?** (`training/live_bound.py`: `bound` in the JSON, "
        f"from the same out-of-fold recordings.) On the held-out half, the first window after a switch that ranks the "
        f"second clip's own genre first is reported {rank['median_s']:.2f} s after the switch (median), "
        f"{rank['p90_s']:.2f} s (90th pct), {rank['worst_s']:.2f} s at worst; {rank['over_8s']} of {floor['pairs']} "
        f"switches are over 8 s{listed('any_window')}. Only windows wholly after the switch: worst "
        f"{floor['clean_either']['worst_s']:.2f} s; their log-probabilities summed since the switch: worst "
        f"{floor['summed_all']['worst_s']:.2f} s. The first window that also decides it (probability at or above the "
        f"threshold): median {decided['median_s']:.2f} s, worst {decided['worst_s']:.2f} s, {decided['over_8s']} "
        f"switches over 8 s (tuning half: worst {tuning['any_window_decided']['worst_s']:.2f} s, "
        f"{tuning['any_window_decided']['over_8s']} over 8 s). {reach}")
    rules_text = (
        f"Over {front['rules']} rules (a change once the last k 2.56 s windows rank one genre first, k 1 to 10, "
        f"decided or not; the daemon's evidence rule over a grid wider than its tuning), each measured on the very "
        f"streams it is reported on (optimistic), the fewest spurious changes on the held-out single-genre streams:")
    bullets = [f"with worst ≤ 8 s: {spurious(picks['worst_le_8s'])}",
               f"with no more switches over 8 s than the floor ({rank['over_8s']}): "
               f"{spurious(picks['over_8s_as_floor'])}",
               f"with median ≤ 5 s: {spurious(picks['median_le_5s'])}",
               f"none on the GTZAN/FMA clips and pairs at all: at best {spurious(picks['no_clip_change_quickest'])}"]
    if tuning_pick is not None:
        t = tuning_pick["tuning"]
        bullets.append(f"on the tuning half (its floor's worst {tuning['any_window']['worst_s']:.2f} s), worst ≤ 8 s "
                       f"costs at least {t['clips_spurious_changes']} changes on its clips and pairs and "
                       f"{t['realworld_spurious_changes']} on realworld ({_rule_words(tuning_pick['rule'])})")
    items = "\n".join(textwrap.fill(b, 116, initial_indent="- ", subsequent_indent="  ") for b in bullets)
    return f"""
{textwrap.fill(floor_text, 116)}

{textwrap.fill(rules_text, 116)}
{items}
"""


def _live_section(path: Path) -> str:
    """The live defaults' measurement (``python -m training.live_eval``), when it was run."""
    import json

    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    if "rows" not in doc:  # written by an earlier live_eval: no artist halves to show
        return ""
    switch_rows = ["| detector | streams | median delay | 90th pct | worst | within 8 s | missed | changes to a third "
                   "genre | old genre still shown: median / 90th pct / worst |",
                   "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    steady_rows = ["| detector | streams | changes on single-genre clips and pairs | on realworld tracks | "
                   "changes shown, uncertain ones too: clips and pairs / realworld | music called no music | "
                   "talk → no music (worst) | music claimed in talk / non-music | back to music: any (decided), "
                   "median | non-music → no music: median (over 8 s, never) |",
                   "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, row in doc["rows"].items():
        for part in ("tuning", "held_out", "all"):
            r = row[part]
            name = f"| {label} | {part.replace('_', '-')} |"
            switch_rows.append(
                f"{name} {r['median_delay_s']:.2f} s | {r['p90_delay_s']:.2f} s | {r['worst_delay_s']:.2f} s | "
                f"{100 * r.get('within_8s', 0):.1f} % | {r['missed']}/{r['pairs']} | {r['wrong_genre_changes']} | "
                f"{r.get('stale_median_s', 0):.2f} / "
                f"{r.get('stale_p90_s', 0):.2f} / {r.get('stale_worst_s', 0):.2f} s |")
            clips = r.get("clips_spurious_changes", 0) + r.get("pairs_spurious_changes", 0)
            shown = r.get("clips_shown_changes", 0) + r.get("pairs_shown_changes", 0)
            back = r.get("back_median_delay_s", 0)
            steady_rows.append(
                f"{name} {clips} | {r.get('realworld_spurious_changes', 0)} | {shown} / "
                f"{r.get('realworld_shown_changes', 0)} | {r.get('steady_no_music_s', 0):.0f} s | "
                f"{r.get('talk_median_delay_s', 0):.2f} s ({r.get('talk_worst_delay_s', 0):.2f} s) | "
                f"{r.get('talk_music_claims', 0)} / {r.get('nonmusic_music_claims', 0)} | "
                f"{r.get('back_music_median_delay_s', back):.2f} s ({back:.2f} s) | "
                f"{r.get('nonmusic_median_delay_s', 0):.2f} s ({r.get('nonmusic_over_8s', 0)}, "
                f"{r.get('nonmusic_missed', 0)} of {r.get('nonmusic_streams', 0)}) |")
    halves = doc["halves"]
    nonmusic = sum(len(h.get("nonmusic", [])) for h in halves)
    settings = doc["rows"]["defaults"]["settings"]
    tuned = doc.get("music_on_tuning", {})
    music_line = (f"`music_evidence_nats` {settings.get('music_evidence_nats', 0):g}, `music_drift_nats` "
                  f"{settings.get('music_drift_nats', 0):g}; first on the tuning half: "
                  f"{tuned.get('music_evidence_nats', 0):g} and {tuned.get('music_drift_nats', 0):g}")
    shipped = doc["rows"]["defaults"]["settings"].get("withdraw_nats", 0.0)
    chosen = doc.get("withdraw_nats_on_tuning")
    withdraw_line = (f"`withdraw_nats`, {shipped:g} by default: no bound tried withdraws no genre on the tuning "
                     f"half's single-genre streams, long realworld tracks included" if chosen == 0.0
                     else f"`withdraw_nats` {shipped:g}: the smallest bound that withdraws no genre on the tuning "
                     f"half's single-genre streams is {chosen:g}" if chosen is not None
                     else f"`withdraw_nats` {shipped:g}")
    quiet = settings.get("quiet_dbfs", 0.0)
    quiet_chosen = doc.get("quiet_dbfs_on_tuning")
    no_quiet = doc["rows"].get("defaults, no quiet passages", {}).get("all", {})
    saved = no_quiet.get("spurious_changes", 0) - doc["rows"]["defaults"]["all"].get("spurious_changes", 0)
    quiet_line = (f"Since `quiet_dbfs` ({quiet:g} dBFS; first on the tuning half: {quiet_chosen:g}, the highest "
                  f"level tied on mistakes and on talk and non-music streams announced never or late), a window "
                  f"quieter than that whose genres still decide the current genre is a quiet passage of the "
                  f"music, not evidence for \"no music\" (for up to 10 s in a row): gtzan/classical.00080 "
                  f"fades to -56 to -63 dBFS in its last 6 s; without it (the row \"defaults, no quiet "
                  f"passages\") the single-genre streams change {saved} more time{'' if saved == 1 else 's'}."
                  if quiet_chosen is not None else "")
    switches, talks, steady = ([len(h[key]) for h in halves] for key in ("switches", "talks", "steady"))
    model_text = _live_model_text(doc)
    return f"""## Live

`python -m training.live_eval` replays the daemon's live path (service/live.py) over streams built from the
shared clips. Their artists are split in two halves: settings are chosen on the tuning half and checked on the
held-out half.

- Streams: switches between clips whose own genres differ and are decided ({switches[0]} + {switches[1]});
  music → espeak-ng talk → music ({talks[0]} + {talks[1]}); music → each of the {nonmusic} non-music clips
  (noise, hum, tones, speech, effects: training/negatives.py) repeated to 15 s; single-genre streams, every
  clip and track alone and pairs of one genre by different artists ({steady[0]} + {steady[1]}).
- A clip's own genre is that of the stretch its streams play (a GTZAN clip's first 15 s, an FMA clip's
  first 30 s, a realworld track's 30 s from 30 s in). A switch not announced within the second stretch counts
  as its length.
- {model_text}
- Only claims count as changes: a decided genre or "no music". Music back after "no music" before its genre
  is decided, and a genre withdrawn ({withdraw_line}), are announced *uncertain* and never written as a genre.
- "Old genre still shown": how long after a switch the first clip's genre stays announced as decided. "Music
  called no music": how long single-genre streams are announced as "no music". "Previous": the running
  ensemble with hysteresis alone, the detector shipped before the evidence test.
- The music evidence ({music_line}) is chosen on the tuning half after the other settings: the fewest
  mistakes, then the fewest non-music streams announced late. {quiet_line}

{chr(10).join(switch_rows)}

{chr(10).join(steady_rows)}

A window counts once it is complete and its receptive field heard (1.17 s after its end): the first
2.56 s window wholly after a switch is reported 3.7 to 5 s after it. Every stream, setting and delay:
[`{path.name}`]({path.name}).
{_live_bound(doc)}"""


def _floor_choice(path: Path) -> str:
    """How the level floor was chosen (``python -m training.level_floor``), when that was run."""
    import json

    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    unseen, labelled = doc["unseen"]["summary"], doc["labelled"]["floors"]
    non_music = doc["non_music"]["summary"] if "non_music" in doc else {}
    lines = ["| floor | unseen music -20 / -30 dB: decided and changed | called no music | labelled clips below "
             "the floor | their out-of-fold right, before → raised | decided and wrong, before → raised | "
             "non-music clips raised / called music |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for floor in doc["floors"]:
        u = {r["gain_db"]: r for r in unseen[floor]}
        cells = [f"{u[-20.0]['changed_and_decided']} / {u[-30.0]['changed_and_decided']}",
                 f"{u[-20.0]['no_music']} / {u[-30.0]['no_music']}"]
        if floor in labelled:
            lab = labelled[floor]
            kinds = ", ".join(f"{n} {g}" for g, n in sorted(lab["labels"].items(), key=lambda kv: -kv[1]) if n)
            cells += [f"{lab['clips']} ({kinds})", f"{lab['before']['right']} → {lab['after']['right']}",
                      f"{lab['before']['decided_wrong']} → {lab['after']['decided_wrong']}"]
        else:
            cells += ["–", "–", "–"]
        nm = non_music.get(floor)
        cells.append(f"{nm['raised']} of {nm['clips']} / {len(nm['music'])}" if nm else "–")
        name = "none" if floor == "None" else f"{float(floor):g} dBFS"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return f"""The floor was chosen by `{doc['command']}` (gain cap {doc['max_gain_db']:g} dB; the labelled clips'
answers are out of fold on the card's artist-grouped folds with the shipped recipe, their raised copies'
features computed anew; unseen music as in the table above, 16-bit copies raised as the runtime does):

{chr(10).join(lines)}

"""


def _live_level(path: Path | None) -> str:
    """The live level check (``python -m training.level_check --live``, ``<model>.level-live.json``): the same
    music played quieter through the live path, with and without the running floor; "" when it was not run."""
    import json

    if path is None or not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    if doc.get("path") != "live" or doc.get("level_floor_dbfs") is None:
        return ""
    without = {r["gain_db"]: r for r in doc.get("summary_without_floor", [])}
    rows = ["| gain | tracks | top genre changed: without running floor → with | of those decided | called no music |",
            "| --- | --- | --- | --- | --- |"]
    for r in doc["summary"][1:]:
        w = without.get(r["gain_db"], r)
        rows.append(f"| {r['gain_db']:g} dB | {r['tracks']} | {w['top_genre_changed']} → {r['top_genre_changed']} | "
                    f"{w['changed_and_decided']} → {r['changed_and_decided']} | {w['no_music']} → {r['no_music']} |")
    table = "\n".join(rows)
    return f"""Live input (the daemon's capture, a live file or stream) has no end to measure first: an eager stream
is raised by a running floor (`tagger.level.RunningFloor`): the same gated level over the last
{doc.get("running_horizon_s", 15):g} s of the input as it came in, and a gain towards the floor that moves at most
{doc.get("running_max_db_per_s", 3):g} dB per second (no gain while that level is None: silence); until that much input
has come in since the sound started (or came back after that much silence), the gain's target is scaled by the
share heard (a level measured on a stream's first seconds is not yet its level). The windows' levels the live
`quiet_dbfs` rule weighs stay those of the input as it came in. `{doc['command']}` plays the first 30 s of
the same copies through the live path and reads the windows ending from 20 s on, against the track played at
its own level:

{table}

"""


def _level_section(path: Path, floor_path: Path | None = None, live_path: Path | None = None) -> str:
    """The level check (``python -m training.level_check``): the same music played quieter, with and without
    the model's level floor, how the floor was chosen (``python -m training.level_floor``), and the live path's
    running floor (``--live``, ``live_path``)."""
    import json

    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    floor = doc.get("level_floor_dbfs")
    without = {r["gain_db"]: r for r in doc.get("summary_without_floor", [])}
    if floor is None:
        rows = ["| gain | tracks | top genre changed | of those decided (≥ threshold) | called no music | "
                "mean change of the top genre's confidence | what they became |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in doc["summary"][1:]:
            moves = ", ".join(f"{k} {v}" for k, v in list(r["changes"].items())[:4]) or "–"
            rows.append(f"| {r['gain_db']:g} dB | {r['tracks']} | {r['top_genre_changed']} | "
                        f"{r['changed_and_decided']} | {r['no_music']} | {r['mean_abs_confidence_change']:.2f} | "
                        f"{moves} |")
        table, floor_text = "\n".join(rows), "The model states no level floor: quiet files are analysed as they are."
    else:
        rows = ["| gain | tracks | raised | top genre changed: without floor → with | of those decided | "
                "called no music | what they became, with the floor |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in doc["summary"][1:]:
            w = without.get(r["gain_db"], r)
            raised = sum(rows_[[x["gain_db"] for x in rows_].index(r["gain_db"])]["raised_db"] > 0
                         for rows_ in doc["files"].values())
            moves = ", ".join(f"{k} {v}" for k, v in list(r["changes"].items())[:4]) or "–"
            rows.append(f"| {r['gain_db']:g} dB | {r['tracks']} | {raised} | {w['top_genre_changed']} → "
                        f"{r['top_genre_changed']} | {w['changed_and_decided']} → {r['changed_and_decided']} | "
                        f"{w['no_music']} → {r['no_music']} | {moves} |")
        table = "\n".join(rows)
        floor_text = (f"The model file states a level floor, `level_floor_dbfs` {floor:g} dBFS (gain cap "
                      f"`level_max_gain_db` {doc['level_max_gain_db']:g} dB). A file whose gated level is under it "
                      "is analysed raised to it by one constant gain (its dynamics kept); a file at or above it is "
                      "analysed exactly as before, so every cross-validated figure above holds for it. The level "
                      "(`tagger.level`): mean power of the 0.4 s blocks (0.1 s steps) above -70 dBFS and above "
                      "10 dB under their mean, in dBFS (a full-scale sine reads -3 dBFS); a file with no such block "
                      "(digital silence) is never raised. `tag`, the daemon's library and `batch` (local and Ray) "
                      "raise the same way and say so (`level_dbfs`, `gain_db` in `tag --json`); a quiet file is "
                      "decoded and analysed twice. Live input is raised by a running floor (below); the table "
                      "below is for files.")
    twin = "" if floor is None else '; "without floor": the same model file with the floor taken out of its manifest'
    return f"""## Level: the same music played quieter

The log-mel front end is not level-invariant: the same track mastered or captured quieter gives other
features, and the heads never saw quiet copies. In the labelled clips level and genre go together: every
clip under about -30 dBFS is classical. {floor_text}

`{doc['command']}` plays every FMA and realworld file (never trained on) through the runtime as `tag`
does, at its own level and quieter (16-bit WAV copies at 16 kHz), and compares each with its own answer
at its own level ({doc['model']} {doc['version']}{twin}):

{table}

{_floor_choice(floor_path) if floor_path is not None and floor is not None else ''}\
{_live_level(live_path) if floor is not None else ''}\
Raised to the floor, quiet music is rarely a decided wrong genre any more, but it still often leans to
classical (undecided): the floor sits at the bottom of the non-classical training clips. Tried and not
shipped (measured on the card's artist-grouped folds): training copies 20 dB quieter (accuracy 0.762 →
0.737) and a level stage in the front end (a causal automatic gain to -20 dB full scale: no track changes
genre at -10, -20 or -30 dB, but accuracy 0.762 → 0.747, nested ECE 0.049 → 0.052 and one FMA clip called
no music).
"""


def _level_limit(path: Path, live_path: Path | None = None) -> str:
    """The limits bullet on quiet input, from the level check (``<model>.level.json``) when it was run, and its
    live twin (``<model>.level-live.json``)."""
    import json

    doc = json.loads(path.read_text()) if path.is_file() else {}
    live = json.loads(live_path.read_text()) if live_path is not None and live_path.is_file() else {}
    floor = doc.get("level_floor_dbfs")
    if floor is None:
        return ("Music 10 dB or more under\n  today's masters can come out as another genre, mostly classical, "
                "sometimes decided.")
    shipped = {r["gain_db"]: r for r in doc["summary"]}
    without = {r["gain_db"]: r for r in doc["summary_without_floor"]}
    worst = min(shipped)
    return (f"Files under the model's level floor\n  ({floor:g} dBFS) are analysed raised to it: of "
            f"{shipped[worst]['tracks']} unseen tracks played {-worst:g} dB quieter, "
            f"{shipped[worst]['changed_and_decided']} get a decided wrong genre "
            f"({without[worst]['changed_and_decided']} without the floor) and "
            f"{shipped[worst]['top_genre_changed']} another top genre, mostly an\n  undecided "
            "classical. Music 10 dB under today's masters, still above the floor, is analysed as it is and\n  can "
            "lean to another genre (undecided). " + _live_limit(live))


def _live_limit(live: dict) -> str:
    """The limits bullet's sentence on live input, from the live level check (empty dict: not run)."""
    if live.get("path") != "live" or live.get("level_floor_dbfs") is None:
        return "Live input is raised by a running floor (the last 15 s of input; at most 3 dB/s)."
    shipped = {r["gain_db"]: r for r in live["summary"]}
    without = {r["gain_db"]: r for r in live["summary_without_floor"]}
    worst = min(shipped)
    return (f"Live input is raised by a running floor: played\n  {-worst:g} dB quieter through the live path, "
            f"{shipped[worst]['changed_and_decided']} of {shipped[worst]['tracks']} get a decided wrong genre "
            f"({without[worst]['changed_and_decided']} without it), after about 20 s.")


def write_card(out: Path, name: str, report: dict, negatives: Sequence) -> Path:
    """Write the card ``out/<name>.md`` from ``report`` (cv.json's content) whole or not at all (a temporary file
    renamed over it: a failed write keeps the old card); its path."""
    from service.sinks.textfile import write_atomically

    text = card_text(out, name, report, negatives)
    path = out / f"{name}.md"
    write_atomically(path, text)
    return path


def card_text(out: Path, name: str, report: dict, negatives: Sequence) -> str:
    """The card's Markdown for ``report`` (cv.json's content); ``out`` holds the level figures it reads."""
    cv = report["cv"]
    genre = cv["genre"]
    rows = genre["rows"]
    level_limit = _level_limit(out / f"{name}.level.json", out / f"{name}.level-live.json")
    shipped = report["shipped"]
    row = rows[shipped["row"]]
    cal = rows["shipped recipe"]["calibration"] if "shipped recipe" in rows else row["calibration"]
    nested_cal = row["nested_calibration"]
    per_class = row["calibrated"]["report"]["per_class"]
    class_rows = [f"| {label} | {v['support']} | {v['precision']:.2f} | {v['recall']:.2f} | {v['f1']:.2f} |"
                  for label, v in per_class.items()]
    deg_lines = ["| degradation | previous recipe | nested choice | nested choice + training copies | "
                 "calibrated ECE (shipped) |", "| --- | --- | --- | --- | --- |"]
    deg_lines.append(f"| none | {rows['previous']['accuracy']:.3f} | {rows['nested']['accuracy']:.3f} | "
                     f"{rows['nested+aug']['accuracy']:.3f} | {cal['ece_cross_fitted']:.3f} |")
    for d, r in genre["degradations"].items():
        deg_lines.append(f"| {d} | {r['previous']:.3f} | {r['nested']:.3f} | {r['nested+aug']:.3f} | "
                         f"{r[shipped['row'] + ' calibrated ECE']:.3f} |")
    runtime = report["runtime"]
    labels = np.array(genre["labels"])
    int8_lines = []
    f32, i8 = runtime["float32"], runtime["int8"]
    p32 = np.array([r["probs"] for r in f32["labelled"]])
    p8 = np.array([r["probs"] for r in i8["labelled"]])
    same_music = sum(a["music"] == b["music"] for s in f32 for a, b in zip(f32[s], i8[s], strict=True))
    total = sum(len(f32[s]) for s in f32)
    int8_lines.append(f"Same top genre on {(p32.argmax(1) == p8.argmax(1)).sum()} of {len(p32)} labelled clips, "
                      f"largest change of a genre probability {np.abs(p32 - p8).max():.3f}; same music decision on "
                      f"{same_music} of {total} files (labelled, FMA, realworld, non-music). Accuracy on the labelled "
                      "clips "
                      f"(training data, so not a generalisation figure): float32 "
                      f"{(p32.argmax(1) == labels).mean():.3f}, int8 {(p8.argmax(1) == labels).mean():.3f}.")
    exp = report["export"]
    kinds = exp.get("calibration_clip_kinds", {})
    int8_calibration = (f"each channel's range calibrated on\n{exp.get('calibration_files', '?')} FMA files, "
                        + ", ".join(f"{n} {kind} clips" for kind, n in kinds.items())
                        + " (quiet music, silence and noise must fall\ninside the ranges, not be clipped: "
                          "calibrated on FMA alone, the ranges clipped a quiet classical clip's\ntemporal "
                          "features)" if kinds
                        else f"ranges calibrated on\n{exp.get('calibration_files', '?')} FMA clips")
    kernels = exp.get("float_kernels", [])
    int8_float = (f"The max-pooled convolutions with {', '.join(' × '.join(map(str, k)) for k in kernels)} kernels "
                  f"({', '.join(exp.get('float_convolutions', []))}) stay\nfloat32 (polyphase form): kept "
                  "in float32 one at a time on windows of the calibration audio,\nonly they brought the music "
                  "probability closer to the float32 file's.\n" if kernels else "")
    features = ("1506 pooled channels (after its pretrained batch norm)" if shipped["head"].startswith("pooled")
                else "200-d MSD embedding (pooled channels → dense → ReLU → batch norm, all pretrained)")
    copies = ", plus their copies under every degradation below" if shipped["augmented"] else ""
    def music_verdict(model: str) -> str:
        rows_ = [r for set_name, rs in runtime[model].items() if set_name != "non-music" for r in rs]
        missed = sorted("/".join(Path(r["file"]).parts[-2:]) for r in rows_ if not r["music"])
        lowest = min(rows_, key=lambda r: r["music_probability"])
        return (f"the {model} file calls {', '.join(f'`{m}`' for m in missed) if missed else 'none'} of the "
                f"{len(rows_)} shared music files no music (its lowest music probability "
                f"{lowest['music_probability']:.3f}, `{'/'.join(Path(lowest['file']).parts[-2:])}`)")

    missed_music = "; ".join(music_verdict(m) for m in ("float32", "int8"))
    costs = []
    for model in ("float32", "int8"):
        rows_ = runtime[model]["realworld"]
        cpu = (f", {seconds_per_30s(rows_, 'cpu_seconds'):.2f} s CPU" if all("cpu_seconds" in r for r in rows_)
               else "")
        costs.append(f"- {model} file: {seconds_per_30s(rows_):.2f} s wall{cpu}")
    chosen = ", ".join(f"{c}" for c in genre["chosen"])
    text = f"""# {name}

**What it is.** The MSD_musicnn tagger (Pons & Serra 2019, trained on the Million Song Dataset) used as
a backbone, with a 10-genre head and a music detector trained on GTZAN clips by genre-tagger. Outputs:

- `genre` (softmax, one label): blues, classical, country, disco, hiphop, jazz, metal, pop, reggae, rock.
  Calibrated: a temperature of {shipped['temperature']:.2f}, fitted on out-of-fold predictions, is folded
  into the head, so a 60 % confidence is right about 60 % of the time on unseen artists.
- `msd_genres` (sigmoid, multi-label): the 30 MSD tags that name genres or styles (rock, pop, electronic,
  jazz, metal, Hip-Hop, blues, country, folk, punk, soul, rnb, funk, House, ambient, electro, …), straight
  from the pretrained tagger (not calibrated by genre-tagger), so users also see genres GTZAN lacks.
- `music` (sigmoid): the probability of music; the manifest names it the model's music detector
  (threshold {shipped['music_threshold']}). Silence, noise, hum, tones, speech, applause and sound effects
  come out **no music** (section "No music").

Genre head: {shipped['head']} — a multinomial logistic regression on the frozen backbone's
{features}, standardised, trained on every window of both views, each genre and each clip weighing
the same{copies}; chosen by the inner CV over all 391 clips among logistic regressions on the
pooled channels or the embedding with C in 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.1.

Input: 16 kHz mono, log-mel (n_fft 512, hop 256, 96 slaney mel bands to 8 kHz, float16-rounded,
log10(10000·x + 1)), 2.56 s (160 frames) and 5.12 s (320 frames) windows with half-window hops; a track's
estimate is the mean of its windows (per view, then over both views). A clip shorter than a window is one
window of all its frames (nothing padded, repeated or cropped): 135 of the 230 GTZAN excerpts are under
2.56 s and all are under 5.12 s. All of it is in the model file's manifest (`genre-tagger models {name}`).

## Provenance and licence

- Backbone weights: `musicnn/MSD_musicnn` checkpoint of the musicnn 0.1.0 wheel on PyPI, imported with
  genre-tagger's own TensorFlow-free checkpoint reader and PyTorch port (tested against TensorFlow's
  outputs: tag probabilities within 1e-4). musicnn is under the ISC licence:

{MUSICNN_LICENCE}

- Heads: trained by `make default-model` (`python -m training.default_model`, seeded; features cached in
  `.cache/features` by `python -m training.feature_cache`) on the 391 labelled GTZAN clips of
  `../shared/data/gtzan` (161) and `gtzan-excerpts` (230), 159 artists, and the non-music clips below.
  GTZAN itself has no licence; its audio is not distributed with genre-tagger. FMA and realworld music is
  never trained on (the int8 file's calibration reads FMA audio, its labels never).

## Evaluation: artist-grouped nested cross-validation (track level)

Five folds (scikit-learn's StratifiedGroupKFold, seeded) over all 391 clips, grouped by the `artist`
column of both labels.csv (a clip without an artist joins the artist of a clip of its genre at most 2
GTZAN ids away, else a group of its genre's block of ten ids: 9 clips, all joined a neighbour), so no
artist is on both sides. In every outer fold an inner 4-fold artist-grouped CV over the training side
chose the head and C (chosen per fold: {chosen}). Accuracy is pooled over all out-of-fold predictions; ±
is the standard deviation over folds. ECE: expected calibration error of the top-1 confidence in 15
equal-width bins, pooled over all out-of-fold clips (per-fold ECE over ~78 clips is noisier and biased
upwards: given as mean ± std). Two calibrations: "cross-fitted" scales each fold by the temperature
fitted on the other four folds' predictions (which came from other heads where the inner choice
differed); "inside each outer fold" is the honest nested one: the temperature of an outer fold is fitted
on the inner out-of-fold predictions of the config that fold chose, trained as its head is (with the
degraded copies where it has them), and never sees the outer test clips. The nested rows are the honest
figures; the last row runs the one recipe the inner CV chose on all clips (fixed, so its choice saw
every clip: slightly optimistic) and gives the temperature that ships.

{_genre_table(rows, shipped['row'])}

The earlier card's 0.913 came from 161 clips in folds of neighbouring GTZAN ids within each genre, which
leave artists on both sides; it measured partly artist recognition and does not hold for new artists.

Per genre, shipped variant (out-of-fold, calibrated):

| genre | clips | precision | recall | F1 |
| --- | --- | --- | --- | --- |
{chr(10).join(class_rows)}

Confusion matrix: [`{name}.confusion.png`]({name}.confusion.png).

Calibration, honest nested figure ({ROW_TITLES.get(shipped['row'], shipped['row'])}; a temperature per outer
fold fitted on that fold's inner out-of-fold predictions of the config it chose, then applied to its
outer test clips): ECE **{nested_cal['ece']:.3f}** pooled over the {len(labels)} clips (15 equal-width
bins), per fold {", ".join(f"{e:.3f}" for e in nested_cal['ece_per_fold'])} (mean
{nested_cal['ece_fold_mean']:.3f} ± {nested_cal['ece_fold_std']:.3f}), temperatures
{", ".join(f"{t:.2f}" for t in nested_cal['fold_temperatures'])}. The shipped recipe (fixed on all clips):
temperature {cal['temperature']:.2f} (cross-fitted per fold {", ".join(f"{t:.2f}" for t in cal['fold_temperatures'])}),
ECE {cal['ece_before']:.3f} before, {cal['ece_cross_fitted']:.3f} after. Reliability diagram of both
(15 bins; bars: clips per bin of the nested figure): [`{name}.reliability.png`]({name}.reliability.png).
Every fold, choice and out-of-fold prediction: [`{name}.cv.json`]({name}.cv.json).

## Degradations (same folds, accuracy)

Test clips degraded as `training/degrade.py` does: white noise 20 dB below the clip's RMS, MP3 at
64 kbit/s, ±1 semitone (tempo kept), 8 kHz telephone band (300–3400 Hz). The training copies are the
same degradations of the training clips only (other clips, other artists).

{chr(10).join(deg_lines)}

{_detector_section(cv['detector_summary'], runtime, negatives, report.get('runtime_check'))}
{_live_section(out / f"{name}.live.json")}
{_level_section(out / f"{name}.level.json", out / f"{name}.floor.json", out / f"{name}.level-live.json")}
## Out of domain (shipped float32 file through the runtime)

Game soundtracks (`../shared/data/realworld`, no labels; GTZAN has no "soundtrack" or "electronic"
class, so the genre head must pick among its ten; the MSD tags are the more useful output here):

{_runtime_table(runtime['float32']['realworld'], with_id3=False)}

Free Music Archive clips (`../shared/data/fma`) with their own ID3 genre:

{_runtime_table(runtime['float32']['fma'], with_id3=True)}

Cost per 30 s of audio (realworld tracks; decode, front end and both views; ONNX Runtime on the CPU):

{chr(10).join(costs)}

Measured on a shared 2-core machine: noisy.

## The int8 file for CPUs: `{name}-int8.onnx`

The same model with {len(exp.get('convolutions', []))} of the convolutions of its front end in int8
(`training/optimize.py`: int8 weights per channel, uint8 input and output); {int8_calibration}.
{int8_float}Dead filters ({exp.get('dead_filters_dropped', 0)}) restored as constants and
{exp.get('constant_features_dropped', 0)} constant channels left out of the frame features.
The runtime loads it instead of the float32 file on the CPU when no model is named.
{int8_lines[0]}

## Intended use and limits

- Intended: suggesting genre tags for a music library, a live genre display, and telling music from
  talk, silence and noise; the `msd_genres` output for styles beyond GTZAN's ten.
- About {rows[shipped['row']]['accuracy']:.0%} top-1 on unseen artists of GTZAN's ten genres: expect
  confusions between neighbouring styles (rock/metal/country/blues, disco/pop/hiphop) and low confidence
  off GTZAN's taxonomy; the 60 % threshold marks uncertain tracks, and the calibration makes it mean what
  it says on GTZAN-like audio. Off GTZAN's taxonomy (electronic, soundtracks, world music) the genre is
  still one of ten and its confidence is not calibrated for that.
- Music the detector has not heard the like of can come out **no music**. GTZAN has no ambient or
  drone music; the game soundtracks added as positives cover some of it: {missed_music}.
  Quieter, sparser music than those soundtracks can still fall below the threshold. Such a file gets no
  genre (never a wrong one); `genre-tagger library list --no-music` finds them.
- The more kinds of music the detector accepts, the more unheard kinds of noise pass as music: in the
  CV, kinds held out whole (never seen in training) are where its errors are (table above); the shipped
  detector was trained on all of them.
- Quiet input: the genre depends on the level (section "Level" above). {level_limit}
- Music over speech (a DJ talking over a song, a jingle) is a mixture the detector was not trained on;
  so are singing a cappella, a single sustained instrument note and nature sounds. Non-music comes from
  generated signals, two speech sources and two effect packages: other noises may pass as music.
- 391 clips of 159 artists (classical 89 clips) is little: the spread over folds above is the honest
  uncertainty. Western popular music dominates both the MSD and GTZAN.
"""
    return text
