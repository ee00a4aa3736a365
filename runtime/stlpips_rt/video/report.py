"""``stlpips-score --video ... --report DIR``: what a person looks at after scoring videos.

- ``distance.png``: distance over time, one line per distorted video, its mean dashed, its worst frames marked;
- ``worst_<n>_<name>.png``: each distorted video's worst frames, reference beside distorted frame and (spatial
  models) the heat map of where they differ, all maps on one colour scale;
- ``frames/``: the same panels at full resolution (``heatmap.render``: reference | distorted | heat map);
- ``summary.md`` (the table and the pictures) and ``summary.json`` (the numbers).

The worst frames are fetched by decoding the videos a second time (decoding only: no frame is kept while
scoring, so memory stays flat); their heat maps cost one more graph run each. Needs matplotlib (extra ``video``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import MissingExtraError
from ..io import heatmap
from .stream import VIDEO_EXTRA, FrameScore, VideoSummary, read_frames

if TYPE_CHECKING:
    from ..scorer import Scorer

_PANEL_WIDTH_IN = 4.2  # inches per panel in the worst-frames figure


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(f"--report needs matplotlib, which is not installed: {VIDEO_EXTRA}") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _heat_colormap() -> Any:
    """The heat maps' colour ramp (stlpips_rt.heatmap) as a matplotlib colormap, for a shared scale + colourbar."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(heatmap.colorize(np.linspace(0.0, 1.0, 256)[None, :], vmax=1.0)[0] / 255.0)


def _label(dist: str) -> str:
    return Path(dist).name


def write_report(out_dir: Path, scorer: Scorer, ref: str, summaries: Sequence[VideoSummary], worst: int = 5,
                 min_gap: float = 1.0, settings: Mapping[str, str] | None = None) -> Path:
    """Write the report into ``out_dir``; returns the path of ``summary.md``."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    picks = {s.dist: s.worst(worst, min_gap) for s in summaries}
    _plot_distances(plt, out_dir / "distance.png", ref, summaries, picks, scorer)
    ref_frames = read_frames(ref, sorted({p.frame for chosen in picks.values() for p in chosen}))
    figures: dict[str, str] = {}
    for n, summary in enumerate(summaries, start=1):
        chosen = picks[summary.dist]
        if not chosen:
            continue
        dist_frames = read_frames(summary.dist, [p.dist_frame for p in chosen])
        name = f"worst_{n}_{_safe(Path(summary.dist).stem)}.png"
        _plot_worst(plt, out_dir / name, out_dir / "frames" / f"{n}_{_safe(Path(summary.dist).stem)}", scorer, ref,
                    summary.dist, chosen, ref_frames, dist_frames)
        figures[summary.dist] = name
    doc = {"ref": ref, "model": scorer.info.path.name, "provider": scorer.provider, "precision": scorer.precision,
           "settings": dict(settings or {}), "worst_min_gap_s": min_gap,
           "videos": [s.as_dict(worst, min_gap) for s in summaries]}
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = out_dir / "summary.md"
    md.write_text(_markdown(ref, scorer, summaries, picks, figures, settings or {}, min_gap))
    return md


def _safe(stem: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60]


def _plot_distances(plt: Any, path: Path, ref: str, summaries: Sequence[VideoSummary],
                    picks: Mapping[str, list[FrameScore]], scorer: Scorer) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.4), layout="constrained")
    for summary in summaries:
        if not summary.count:
            continue
        t = np.array([s.time for s in summary.scores])
        d = summary.distances()
        stats = summary.stats()
        (line,) = ax.plot(t, d, lw=1.3, marker="." if len(t) <= 120 else None, ms=4,
                          label=f"{_label(summary.dist)}: mean {_fmt(stats['mean'])}, p95 {_fmt(stats['p95'])}, "
                                f"max {_fmt(stats['max'])}")
        ax.axhline(stats["mean"], color=line.get_color(), ls="--", lw=0.9, alpha=0.7)
        chosen = picks[summary.dist]
        ax.scatter([p.time for p in chosen], [p.distance for p in chosen], s=46, color=line.get_color(),
                   edgecolors="black", linewidths=0.8, zorder=3)
        for rank, p in enumerate(chosen, start=1):
            ax.annotate(f"#{rank} f{p.frame}", (p.time, p.distance), xytext=(4, 5), textcoords="offset points",
                        fontsize=8)
    ax.set_xlabel("time in the reference video (s)")
    ax.set_ylabel(f"{scorer.info.short_name} distance per frame")
    ax.set_title(f"{_label(ref)}: distance frame by frame (dashed: mean; dots: worst frames)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_worst(plt: Any, path: Path, frames_dir: Path, scorer: Scorer, ref: str, dist: str,
                chosen: list[FrameScore], ref_frames: Mapping[int, np.ndarray],
                dist_frames: Mapping[int, np.ndarray]) -> None:
    spatial = scorer.info.has_spatial
    rows = []
    frames_dir.mkdir(parents=True, exist_ok=True)
    for p in chosen:
        x0 = scorer.load(ref_frames[p.frame], f"{ref} frame {p.frame}")
        x1 = scorer.load(dist_frames[p.dist_frame], f"{dist} frame {p.dist_frame}")
        dist_map = scorer.evaluate([x0], [x1], ("dist_map",))["dist_map"][0, 0] if spatial else None
        rows.append((p, heatmap._to_uint8(x0), heatmap._to_uint8(x1), dist_map))
        panel = heatmap.render(x0, x1, dist_map) if dist_map is not None else Image.fromarray(
            np.concatenate([rows[-1][1], rows[-1][2]], axis=1))
        panel.save(frames_dir / f"frame{p.frame:06d}.png")
    vmax = max((float(r[3].max()) for r in rows if r[3] is not None), default=0.0) or 1.0
    h, w = rows[0][1].shape[:2]
    cols = 3 if spatial else 2
    # A fixed grid in inches (a layout engine costs seconds per figure): panels, a title line above each
    # row, a colour bar on the right of spatial reports.
    panel_w, gap, title_h, head_h, bar_w = _PANEL_WIDTH_IN, 0.08, 0.32, 0.45, (1.0 if spatial else 0.0)
    panel_h = panel_w * h / w
    fig_w = cols * panel_w + (cols + 1) * gap + bar_w
    fig_h = head_h + len(rows) * (title_h + panel_h) + gap
    fig = plt.figure(figsize=(fig_w, fig_h))
    interpolation = "nearest" if h < 128 else "antialiased"  # small frames as pixels, not blurred
    image = None
    for r, (p, ref_rgb, dist_rgb, dist_map) in enumerate(rows):
        bottom = fig_h - head_h - (r + 1) * (title_h + panel_h)
        titles = [f"reference, frame {p.frame} ({p.time:.2f} s)",
                  f"{_label(dist)}, frame {p.dist_frame}: distance {_fmt(p.distance)}",
                  "where they differ (distance map)"]
        for c in range(cols):
            ax = fig.add_axes(((gap + c * (panel_w + gap)) / fig_w, bottom / fig_h, panel_w / fig_w, panel_h / fig_h))
            ax.set_axis_off()
            ax.set_title(titles[c], fontsize=9, pad=3)
            if c < 2:
                ax.imshow(ref_rgb if c == 0 else dist_rgb, interpolation=interpolation)
            else:
                image = ax.imshow(dist_map, cmap=_heat_colormap(), vmin=0.0, vmax=vmax, interpolation=interpolation)
    if image is not None:
        bar = fig.add_axes(((fig_w - bar_w + 0.15) / fig_w, 0.12, 0.16 / fig_w, 1 - 0.12 - (head_h + 0.3) / fig_h))
        fig.colorbar(image, cax=bar, label="per-pixel distance (one scale for all rows)")
    note = "" if spatial else " (export with --spatial for heat maps)"
    fig.suptitle(f"{_label(dist)}: worst frames against {_label(ref)}{note}", fontsize=11,
                 y=1 - 0.12 / fig_h, va="top")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(x: float) -> str:
    """Four significant digits: distances of near-identical frames are 1e-6, of bad ones 0.1-1."""
    return "n/a" if math.isnan(x) else f"{x:.4g}"


def _markdown(ref: str, scorer: Scorer, summaries: Sequence[VideoSummary], picks: Mapping[str, list[FrameScore]],
              figures: Mapping[str, str], settings: Mapping[str, str], min_gap: float) -> str:
    lines = [f"# Video report: {_label(ref)}", ""]
    setting_text = ", ".join(f"{k} {v}" for k, v in settings.items())
    lines += [f"Reference `{ref}`; model `{scorer.info.path.name}` ({scorer.info.short_name}) on {scorer.provider}, "
              f"{scorer.precision}" + (f"; {setting_text}" if setting_text else "") + ".", ""]
    lines += ["![distance over time](distance.png)", ""]
    lines += ["| distorted video | frames scored | mean | median | p95 | max | worst frame |",
              "|---|---|---|---|---|---|---|"]
    for s in summaries:
        st = s.stats()
        top = picks[s.dist][0] if picks[s.dist] else None
        where = f"{top.frame} ({top.time:.2f} s)" if top else "n/a"
        status = " (failed)" if s.error else ""
        lines.append(f"| `{s.dist}`{status} | {st['frames']} | {_fmt(st['mean'])} | {_fmt(st['median'])} | "
                     f"{_fmt(st['p95'])} | {_fmt(st['max'])} | {where} |")
    lines.append("")
    gap = f", at least {min_gap:g} s apart" if min_gap > 0 else ""
    for s in summaries:
        lines += [f"## {_label(s.dist)}", ""]
        if s.error:
            lines += [f"**Stopped:** {s.error}", ""]
        lines += [f"Note: {note}" for note in s.notes]
        if s.notes:
            lines.append("")
        chosen = picks[s.dist]
        if chosen:
            lines += [f"Worst frames{gap}:", "", "| rank | reference frame | time (s) | distorted frame | distance |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r} | {p.frame} | {p.time:.3f} | {p.dist_frame} | {p.distance:.6g} |"
                      for r, p in enumerate(chosen, start=1)]
            lines += ["", f"![worst frames of {_label(s.dist)}]({figures[s.dist]})", ""]
    if not scorer.info.has_spatial:
        lines += ["Heat maps need a spatial model: `stlpips-export --net "
                  f"{scorer.info.net} --variant {scorer.info.variant} --spatial`, then `--model "
                  f"{scorer.info.short_name}-spatial`.", ""]
    lines += ["Full-resolution panels (reference | distorted | heat map scaled to its own maximum) are in `frames/`; "
              "the numbers are in `summary.json`.", ""]
    return "\n".join(lines)

