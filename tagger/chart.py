"""Horizontal bar charts of genre confidences for the terminal (the research's figure 6)."""

from __future__ import annotations

import shutil

from tagger.ensemble import NO_MUSIC, OutputEstimate

_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int) -> str:
    """A bar of ``fraction`` (0..1) of ``width`` cells, in eighth-of-a-cell steps."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[rest] if rest else "")
    return text.ljust(width)


def render_output(est: OutputEstimate, top_k: int, width: int | None = None) -> list[str]:
    """Lines for one output: a title line, then one bar per label (best first)."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    scores = est.scores[:top_k]
    label_width = max(len(s.label) for s in scores)
    bar_width = max(10, min(50, width - label_width - 16))
    if est.multi_label:
        verdict = ", ".join(est.decided) if est.decided else "uncertain: " + ", ".join(est.candidates[:3])
    else:
        verdict = est.top if not est.uncertain else "uncertain: " + " / ".join(est.candidates[:3])
    lines = [f"  {est.title}  → {verdict}"]
    for s in scores:
        mark = "✔" if s.label in est.decided else " "
        lines.append(f"   {mark} {s.label.ljust(label_width)} {bar(s.score, bar_width)} {100 * s.score:5.1f} %")
    return lines


def render_track(name: str, duration_s: float, outputs: dict[str, OutputEstimate], top_k: int,
                 width: int | None = None, music: bool = True, music_probability: float | None = None,
                 coverage: str = "full", analysed_s: float | None = None, level_dbfs: float | None = None,
                 gain_db: float = 0.0) -> str:
    """The whole chart for one track. When the model's music detector says it is not ``music``, one
    "no music" line stands instead of the genre bars (genres of silence or speech mean nothing).
    ``coverage`` and ``analysed_s`` (seconds): when only excerpts were analysed, the header says how much.
    ``gain_db`` above 0: the track was quieter than the model's level floor and analysed raised by that
    many dB, from ``level_dbfs`` (gated level, dBFS); a line says so."""
    first = next(iter(outputs.values()))
    slices = ", ".join(f"{v} ×{n}" for v, n in first.slices.items())
    part = (f", {analysed_s:.0f} s analysed ({coverage})" if coverage != "full" and analysed_s is not None
            and analysed_s < duration_s else "")
    lines = [f"{name}  ({duration_s:.1f} s{part}; slices {slices}; threshold {100 * first.threshold:.0f} %)"]
    if gain_db > 0.0:
        lines.append(f"  quiet track ({level_dbfs:.1f} dBFS): analysed raised by {gain_db:.1f} dB")
    if not music:
        sure = "" if music_probability is None else f" ({100 * (1 - music_probability):.1f} % sure)"
        lines.append(f"  → {NO_MUSIC}{sure}")
        return "\n".join(lines)
    for est in outputs.values():
        lines.extend(render_output(est, top_k, width))
    return "\n".join(lines)
