"""``stlpips-score --video``: score videos frame by frame from the command line.

The options are declared here (``video_options``) and the run lives here (``run_video``), so that
``stlpips_rt.cli`` only adds a decorator and a branch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from ..errors import StlpipsError
from ..io import manifest
from ..io.output import RowWriter
from ..io.progress import Progress
from ..video.stream import ROW_FIELDS, ROW_TYPES, Failure, Notice, VideoOptions, VideoSummary, iter_scores, to_row
from .options import build_scorer, fail

TOOL = "stlpips-score"
_FLUSH_SECONDS = 0.5  # rows reach the file at least this often (CSV / JSON Lines)

_OPTIONS = [
    click.option("--video", is_flag=True,
                 help="REF and DIST are videos: score them frame by frame (needs the 'video' extra; docs/video.md)."),
    click.option("--dist", "dist_videos", multiple=True, type=click.Path(path_type=Path),
                 help="With --video: a distorted video; repeat it to score several against one reference (the "
                      "reference is decoded once, broadcast graph)."),
    click.option("--align", type=click.Choice(["index", "time"]), default="index", show_default=True,
                 help="With --video: pair frame i with frame i, or each reference frame with the distorted frame "
                      "on screen at its time (different or variable frame rates)."),
    click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True,
                 help="With --video: score every K-th reference frame."),
    click.option("--start", type=click.FloatRange(min=0), default=None,
                 help="With --video: score reference frames from this second on."),
    click.option("--end", type=click.FloatRange(min=0), default=None,
                 help="With --video: score reference frames before this second."),
    click.option("--allow-length-mismatch", is_flag=True,
                 help="With --video: when one video ends first, score the frames they share and say so, instead "
                      "of failing."),
    click.option("--allow-fps-mismatch", is_flag=True,
                 help="With --video --align index: pair frames by index even when the frame rates differ."),
    click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="With --video: write distance.png, the worst frames (with heat maps on spatial models) and "
                      "summary.md into this folder."),
    click.option("--worst", type=click.IntRange(min=0), default=5, show_default=True,
                 help="With --video: how many worst frames the summary and the report show."),
    click.option("--worst-gap", type=click.FloatRange(min=0), default=1.0, show_default=True,
                 help="With --video: seconds between two worst frames (0: the plain top K)."),
]
_DEFAULTS = {"video": False, "dist_videos": (), "align": "index", "stride": 1, "start": None, "end": None,
             "allow_length_mismatch": False, "allow_fps_mismatch": False, "report_dir": None, "worst": 5,
             "worst_gap": 1.0}
_IMAGE_ONLY = {"pairs_csv": "--pairs", "ref_dir": "--ref-dir", "dist_dir": "--dist-dir", "resume": "--resume",
               "heatmap_dir": "--heatmap", "address": "--address", "gpus_per_worker": "--gpus-per-worker"}


def video_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the ``--video`` options to a click command (its callback takes them as ``**video_args``)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def refuse_video_options(video_args: Mapping[str, Any]) -> None:
    """Outside ``--video`` the video options mean nothing: say so instead of ignoring them."""
    given = [name for name, default in _DEFAULTS.items() if video_args.get(name, default) != default]
    if given:
        flags = ", ".join("--" + ("dist" if n == "dist_videos" else "report" if n == "report_dir" else n)
                          .replace("_", "-") for n in given)
        raise click.UsageError(f"{flags}: only with --video")


def _row_format(output: Path | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = output.suffix.lower() if output else ""
    return {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "csv")


def _text_row(row: dict[str, Any]) -> dict[str, Any]:
    """CSV / JSON Lines rows: times in microseconds; distances as the writer formats every distance (the shortest
    decimal of the float32, io.output.format_distance)."""
    out = dict(row)
    for key in ("time", "dist_time"):
        if out[key] is not None:
            out[key] = round(out[key], 6)
    return out


def run_video(params: Mapping[str, Any]) -> None:
    """The whole ``--video`` run: exits 0, 1 (a video failed; rows scored before stay written) or 2 (usage)."""
    if params.get("engine", "local") != "local" or params.get("workers", 1) != 1:
        raise click.UsageError("--engine ray scores images; for many video pairs on Ray or a process pool, run "
                               "stlpips_rt.video.pool.score_pair_rows once per pair (docs/video.md)")
    for name, flag in _IMAGE_ONLY.items():
        if params.get(name):
            hint = "; use --report DIR for heat maps of the worst frames" if name == "heatmap_dir" else ""
            raise click.UsageError(f"{flag} is for images, not with --video{hint}")
    ref = params["ref"] or params["ref_one"]
    dists = ([params["dist"]] if params["dist"] else []) + list(params["dist_videos"])
    if ref is None or not dists:
        raise click.UsageError("--video needs a reference and a distorted video: --video REF DIST, or --video REF "
                               "--dist A --dist B")
    if len({str(d) for d in dists}) != len(dists):
        raise click.UsageError("a distorted video is given twice")
    output: Path | None = params["output"]
    fmt = _row_format(output, params["fmt"])
    if fmt == "parquet" and output is None:
        raise click.UsageError("Parquet rows need a file: -o rows.parquet")
    try:
        options = VideoOptions(align=params["align"], stride=params["stride"], start=params["start"],
                               end=params["end"], allow_length_mismatch=params["allow_length_mismatch"],
                               allow_fps_mismatch=params["allow_fps_mismatch"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        scorer = build_scorer(params["model"], params.get("models_dir"), params["providers"], params["precision"],
                              params["threads"], params["batch_size"], params.get("max_memory"), params["resize"])
        provenance = scorer.provenance()
        writer = _open_writer(output, fmt, provenance)
    except StlpipsError as exc:
        fail(TOOL, str(exc))
    if output is not None:
        manifest.write_manifest(output, provenance)

    quiet = params["quiet"]
    summaries = {str(d): VideoSummary(str(d)) for d in dists}
    progress = Progress(_expected_frames(ref, options) * len(dists), enabled=not quiet, unit="frames")
    done, last_flush = 0, time.monotonic()
    try:
        for record in iter_scores(scorer, ref, dists, options):
            summaries[record.dist].add(record)
            if isinstance(record, Notice):
                click.echo(f"\nstlpips-score: note: {record.message}" if progress.shown else
                           f"stlpips-score: note: {record.message}", err=True)
                continue
            row = to_row(str(ref), record)
            writer.write(row if fmt == "parquet" else _text_row(row))
            if isinstance(record, Failure):
                writer.flush()
                click.echo(f"stlpips-score: {record.error}", err=True)
                continue
            done += 1
            progress.update(done)
            if time.monotonic() - last_flush > _FLUSH_SECONDS:
                writer.flush()
                last_flush = time.monotonic()
    finally:
        progress.close()
        writer.close()
        if output is not None:
            manifest.write_manifest(output, provenance, rows=writer.written, resumed=True)

    ordered = list(summaries.values())
    if not quiet:
        for summary in ordered:
            click.echo(_summary_line(summary, params["worst"], params["worst_gap"]), err=True)
    if params["report_dir"] is not None:
        from ..video.report import write_report

        settings = {"alignment": options.align, "stride": str(options.stride)}
        if options.start is not None or options.end is not None:
            until = "the end" if options.end is None else f"{options.end:g} s"
            settings["range"] = f"{options.start or 0:g} s to {until}"
        if params["resize"]:
            settings["resize"] = f"{params['resize']}x{params['resize']}"
        try:
            md = write_report(params["report_dir"], scorer, str(ref), ordered, params["worst"], params["worst_gap"],
                              settings)
        except StlpipsError as exc:
            click.echo(f"stlpips-score: report not written: {exc}", err=True)
            sys.exit(1)
        if not quiet:
            click.echo(f"stlpips-score: report: {md}", err=True)
    if writer.failed:
        click.echo(f"stlpips-score: {writer.failed} video(s) failed; see the rows with status=error", err=True)
        sys.exit(1)


def _open_writer(output: Path | None, fmt: str, provenance: dict[str, Any]) -> Any:
    if fmt == "parquet":
        from ..io.output import ParquetRowWriter

        assert output is not None
        return ParquetRowWriter(output, ROW_FIELDS, ROW_TYPES, metadata=manifest.parquet_metadata(provenance))
    return RowWriter(output, fmt, ROW_FIELDS, [])


def _expected_frames(ref: Path, options: VideoOptions) -> int:
    """For the progress bar only: the reference's frames in range / stride, from its container (0: unknown)."""
    from ..video.stream import probe

    try:
        info = probe(ref)
    except StlpipsError:
        return 0
    frames = info.frames or (round(info.duration * info.fps) if info.duration and info.fps else 0)
    if info.fps and (options.start or options.end):
        last = frames if options.end is None else min(frames, round(options.end * info.fps))
        frames = max(0, last - round((options.start or 0) * info.fps))
    return -(-frames // options.stride)


def _summary_line(summary: VideoSummary, worst: int, min_gap: float) -> str:
    st = summary.stats()
    head = f"stlpips-score: {summary.dist}: {st['frames']} frames"
    if st["frames"]:
        head += (f", mean {st['mean']:.5g}, median {st['median']:.5g}, p95 {st['p95']:.5g}, "
                 f"max {st['max']:.5g}")
        picks = summary.worst(worst, min_gap)
        if picks:
            head += "\n  worst frames: " + ", ".join(f"{p.frame} ({p.time:.2f} s) {p.distance:.5g}" for p in picks)
    if summary.error:
        head += "\n  stopped: " + summary.error
    return head

