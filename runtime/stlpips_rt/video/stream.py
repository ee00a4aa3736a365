"""Score videos frame by frame: decode with PyAV as a stream, pair frames, run the pairs through a Scorer.

Memory is bounded by the batch, never by the video's length: frames are decoded one at a time, a background
thread prepares the next batch while the graph runs the current one, and only a few batches are ever held.
Per-frame results (a few numbers per frame) are what grows with the length.

Frames are decoded to 8-bit RGB (``rgb24``, FFmpeg's conversion from the stream's own colour space) and from there
take exactly the image path: ``Scorer.load`` of a uint8 HWC array, then ``Scorer.evaluate`` (one distorted video)
or ``Scorer.evaluate_many`` (one reference against several, through the broadcast graph), so the distances equal
``score_batch`` / ``score_many`` on the same decoded frames.

PyAV is an optional extra (``pip install 'stlpips-deploy[video]'``), imported only when a video is opened.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import InferenceError, MissingExtraError, StlpipsError, VideoMismatchError, VideoReadError
from ..io import images

if TYPE_CHECKING:
    from ..scorer import Scorer

VIDEO_EXTRA = "pip install 'stlpips-deploy[video]'"
ALIGNMENTS = ("index", "time")
# One run through the graph holds at most this many pixels per side (frames of 128x128 or less: batch_size
# pairs; 256x256: 4; 720p and larger: 1). ST-LPIPS alex keeps conv1 at full resolution, 64 float32 channels:
# 16 MB per 256x256 frame, 240 MB per 720p frame: warm runs of 16 256x256 pairs peak at 1.5 GB, of 4 at 0.46 GB
# (docs/video.md). Larger runs are not faster on CPU at these sizes (stlpips-bench, alex-st 256x256: batch 1 11.2,
# batch 4 10.3 pairs/s).
DEFAULT_MAX_BATCH_PIXELS = 4 * 256 * 256
# FFmpeg demuxers that "decode" things that are not videos: text files as ANSI art, single images.
_NOT_VIDEO_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
_FPS_RELATIVE_TOLERANCE = 1e-3
_PREFETCH_DEPTH = 2  # prepared batches waiting while the graph runs one

# Row fields written by ``stlpips-score --video`` and returned by :func:`score_pair_rows`, and their Parquet types.
ROW_FIELDS = ["ref", "dist", "frame", "time", "dist_frame", "dist_time", "distance", "status", "error"]
ROW_TYPES = {"ref": "string", "dist": "string", "frame": "int64", "time": "float64", "dist_frame": "int64",
             "dist_time": "float64", "distance": "float32", "status": "string", "error": "string"}
OK, ERROR = "ok", "error"


def import_av() -> Any:
    """The ``av`` module, or a :class:`MissingExtraError` that says how to install it."""
    try:
        import av
    except ImportError:
        raise MissingExtraError(f"video input needs PyAV, which is not installed: {VIDEO_EXTRA}") from None
    return av


# --- options -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoOptions:
    """How two videos are paired and which frames are scored.

    align: ``"index"`` pairs frame i with frame i; ``"time"`` pairs each reference frame with the distorted
        frame on screen at the same time (the last one whose timestamp is not later), so videos of different
        or variable frame rates can be compared. Times count from each video's first frame.
    stride: score every ``stride``-th reference frame (from the first one at or after ``start``).
    start, end: seconds on the reference's timeline; frames with ``start <= time < end`` are scored. Frames
        before ``start`` are decoded and skipped (exact frame indices; decoding costs time, scoring none).
    allow_length_mismatch: when one video ends before the other, score the frames they share and report it
        (a :class:`Notice`) instead of failing with :class:`VideoMismatchError`.
    allow_fps_mismatch: with ``align="index"``, pair frames by index even when the frame rates differ.
    max_batch_pixels: largest number of pixels per side in one graph run (frames per run =
        ``max(1, min(scorer.batch_size, max_batch_pixels // (H * W)))``): keeps memory flat for large frames.
    """

    align: str = "index"
    stride: int = 1
    start: float | None = None
    end: float | None = None
    allow_length_mismatch: bool = False
    allow_fps_mismatch: bool = False
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS

    def __post_init__(self) -> None:
        if self.align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}, got {self.align!r}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.start is not None and self.start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {self.start}")
        if self.end is not None and self.end <= (self.start or 0.0):
            raise ValueError(f"end ({self.end} s) must be after start ({self.start or 0.0} s)")
        if self.max_batch_pixels < 1:
            raise ValueError(f"max_batch_pixels must be >= 1, got {self.max_batch_pixels}")


# --- decoding ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream. ``frames`` and ``duration`` are None where
    the container does not record them (Matroska/WebM have no frame count); ``fps`` is the average rate."""

    path: str
    width: int
    height: int
    frames: int | None
    fps: float | None
    duration: float | None
    time_base: float
    codec: str
    container: str


@dataclass
class DecodedFrame:
    """One decoded frame: its index in presentation order, its time in seconds from the video's first frame,
    and the frame itself, converted to RGB only when asked (skipped frames cost no conversion)."""

    index: int
    time: float
    frame: Any = field(repr=False)
    _rgb: np.ndarray | None = field(default=None, repr=False)

    def rgb(self) -> np.ndarray:
        """uint8 ``[H, W, 3]``, converted once."""
        if self._rgb is None:
            self._rgb = self.frame.to_ndarray(format="rgb24")
        return self._rgb


class VideoReader:
    """The frames of one video, decoded one at a time in presentation order.

    Raises :class:`VideoReadError` (naming the file) for a missing file, a file FFmpeg cannot open, a text file
    or a single image, a file with no video stream, and a decoding error (naming the frame)."""

    def __init__(self, path: str | Path) -> None:
        av = import_av()
        self.path = str(path)
        self._av = av
        if not Path(path).exists():
            raise VideoReadError(self.path, "file does not exist; check the path")
        if Path(path).is_dir():
            raise VideoReadError(self.path, "is a folder, not a video file")
        try:
            self._container = av.open(self.path)
        except av.error.FFmpegError as exc:
            raise VideoReadError(self.path, f"FFmpeg cannot open it as a video ({_ffmpeg_reason(exc)}); is it a "
                                            "complete video file (a truncated MP4 has no index)?") from None
        try:
            fmt = self._container.format.name
            if fmt in _NOT_VIDEO_FORMATS or fmt.endswith("_pipe"):
                kind = "a single image" if fmt.endswith("_pipe") else "not a video (FFmpeg reads it as text art)"
                raise VideoReadError(self.path, f"is {kind} ({fmt}); score images with `stlpips-score REF DIST`")
            if not self._container.streams.video:
                found = ", ".join(s.type for s in self._container.streams) or "no streams"
                raise VideoReadError(self.path, f"has no video stream ({found}); pass a video file")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"  # frame and slice threads: decoding releases the GIL
            self.info = self._read_info(fmt)
        except BaseException:
            self._container.close()
            raise

    def _read_info(self, fmt: str) -> VideoInfo:
        s = self._stream
        rate = s.average_rate or s.guessed_rate
        duration = None
        if s.duration is not None and s.time_base:
            duration = float(s.duration * s.time_base)
        elif self._container.duration:
            duration = self._container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        return VideoInfo(path=self.path, width=s.codec_context.width, height=s.codec_context.height,
                         frames=int(s.frames) or None, fps=float(rate) if rate else None, duration=duration,
                         time_base=float(s.time_base) if s.time_base else 0.0,
                         codec=s.codec_context.name, container=fmt)

    def frames(self) -> Iterator[DecodedFrame]:
        """Decode from the start; each frame once. Times are relative to the first frame."""
        index, first_time = 0, None
        fps = self.info.fps or 0.0
        try:
            for frame in self._container.decode(self._stream):
                t = frame.time if frame.time is not None else (index / fps if fps else float(index))
                if first_time is None:
                    first_time = t
                yield DecodedFrame(index, t - first_time, frame)
                index += 1
        except self._av.error.FFmpegError as exc:
            raise VideoReadError(f"{self.path} frame {index}", f"cannot be decoded ({_ffmpeg_reason(exc)}); the "
                                                               "file is corrupt or truncated") from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def probe(path: str | Path) -> VideoInfo:
    """Open a video, read what its container says, close it."""
    with VideoReader(path) as reader:
        return reader.info


def read_frames(path: str | Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """uint8 RGB frames at the given indices, decoded exactly as scoring decodes them (from the start, so the
    indices are the scored ones; frames in between are decoded but not converted)."""
    wanted = set(indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    with VideoReader(path) as reader:
        for frame in reader.frames():
            if frame.index in wanted:
                out[frame.index] = frame.rgb()
                if len(out) == len(wanted):
                    break
    return out


# --- pairing -----------------------------------------------------------------------------------------------
class _Follower:
    """Walks one distorted video along the reference: which of its frames goes with each reference frame."""

    def __init__(self, reader: VideoReader, align: str, tolerance: float) -> None:
        self.reader = reader
        self.path = reader.path
        self.align = align
        self.tolerance = tolerance
        self._frames = reader.frames()
        self._current: DecodedFrame | None = None
        self._period = 1.0 / reader.info.fps if reader.info.fps else 0.0  # until two frames give a real one
        self._next = next(self._frames, None)

    def _advance(self) -> None:
        assert self._next is not None
        if self._current is not None:
            self._period = self._next.time - self._current.time
        self._current, self._next = self._next, next(self._frames, None)

    def frame_for(self, ref: DecodedFrame) -> DecodedFrame | None:
        """The frame to compare with ``ref``; None when this video has ended before it."""
        if self.align == "index":
            while self._next is not None and self._next.index <= ref.index:
                self._advance()
            current = self._current
            return current if current is not None and current.index == ref.index else None
        while self._next is not None and self._next.time <= ref.time + self.tolerance:
            self._advance()
        current = self._current
        if current is None or (self._next is None and ref.time > current.time + self._period + self.tolerance):
            return None
        return current

    def shorter_or_longer(self, ref_last: DecodedFrame, ref_period: float) -> str:
        """After the reference's last frame: '' when both videos end together, else how they differ."""
        if self.align == "index":
            while self._next is not None and self._next.index <= ref_last.index:
                self._advance()
            count = self._current.index + 1 if self._current is not None else 0
            if count < ref_last.index + 1:
                return f"has {count} frames, the reference {ref_last.index + 1}"
            if self._next is not None:
                return f"has frames past the reference's last (frame {ref_last.index}); the reference has " \
                       f"{ref_last.index + 1}"
            return ""
        ref_end = ref_last.time + ref_period
        while self._next is not None and self._next.time < ref_end - self.tolerance:
            self._advance()
        if self._next is not None:
            return f"goes on past the reference's end ({ref_end:.3f} s): its frame {self._next.index} is at " \
                   f"{self._next.time:.3f} s"
        current = self._current
        if current is None or current.time + self._period + self.tolerance < ref_last.time:
            shown = f"{current.time + self._period:.3f}" if current is not None else "0"
            return f"ends at {shown} s, before the reference's last frame at {ref_last.time:.3f} s"
        return ""

    def close(self) -> None:
        self._frames.close()
        self.reader.close()


def _check_pairable(ref: VideoInfo, dist: VideoInfo, opts: VideoOptions, resize: tuple[int, int] | None) -> None:
    """Refuse, before decoding anything, pairs whose container metadata already says they cannot be paired."""
    item = f"{ref.path} vs {dist.path}"
    if (ref.width, ref.height) != (dist.width, dist.height) and resize is None:
        raise VideoMismatchError(item, f"frame sizes differ ({ref.width}x{ref.height} vs {dist.width}x{dist.height}, "
                                       "WxH); pass --resize / resize= to score both at one size, or scale one video")
    if opts.align != "index":
        return
    if (ref.fps and dist.fps and not opts.allow_fps_mismatch
            and abs(ref.fps - dist.fps) > _FPS_RELATIVE_TOLERANCE * ref.fps):
        raise VideoMismatchError(item, f"frame rates differ ({ref.fps:.4g} vs {dist.fps:.4g} fps), so frame i "
                                       "of one is not frame i of the other; use --align time (align='time'), or "
                                       "--allow-fps-mismatch to pair frames by index anyway")
    if (ref.frames and dist.frames and ref.frames != dist.frames and opts.end is None
            and not opts.allow_length_mismatch):
        raise VideoMismatchError(item, f"frame counts differ ({ref.frames} vs {dist.frames}, from the containers); "
                                       "pass --allow-length-mismatch to score the frames they share, or --end")


def _time_tolerance(a: VideoInfo, b: VideoInfo) -> float:
    """Timestamps closer than the coarser container's precision are the same instant (Matroska keeps
    milliseconds: 1/30 s is stored as 33 ms)."""
    return max(1e-3, 0.5 * max(a.time_base, b.time_base))


# --- results -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameScore:
    """The distance of one reference frame to its partner in one distorted video."""

    dist: str
    frame: int
    time: float
    dist_frame: int
    dist_time: float
    distance: float  # the graph's float32 value


@dataclass(frozen=True)
class Failure:
    """One distorted video stopped: ``error`` says why (it names the file and, where there is one, the frame).
    Frames scored before stay scored."""

    dist: str
    error: StlpipsError


@dataclass(frozen=True)
class Notice:
    """Something a user should know that did not stop the run (a length mismatch that was allowed)."""

    dist: str
    message: str


Record = FrameScore | Failure | Notice


def to_row(ref: str, record: FrameScore | Failure) -> dict[str, Any]:
    """One output row (:data:`ROW_FIELDS`) for a score or a failure."""
    if isinstance(record, Failure):
        return {"ref": ref, "dist": record.dist, "frame": None, "time": None, "dist_frame": None, "dist_time": None,
                "distance": None, "status": ERROR, "error": str(record.error)}
    return {"ref": ref, "dist": record.dist, "frame": record.frame, "time": record.time,
            "dist_frame": record.dist_frame, "dist_time": record.dist_time, "distance": record.distance,
            "status": OK, "error": ""}


# --- scoring -----------------------------------------------------------------------------------------------
@dataclass
class _Item:
    """A prepared pair waiting for the graph."""

    candidate: int
    ref: DecodedFrame
    dist: DecodedFrame
    x0: np.ndarray
    x1: np.ndarray


def frames_per_run(batch_size: int, height: int, width: int, max_batch_pixels: int) -> int:
    return max(1, min(batch_size, max_batch_pixels // max(1, height * width)))


def iter_scores(scorer: Scorer, ref: str | Path, dists: str | Path | Sequence[str | Path],
                options: VideoOptions | None = None) -> Iterator[Record]:
    """Stream the per-frame distances of one reference video against one or more distorted videos.

    Yields :class:`FrameScore` records in reference-frame order (with several distorted videos, all of them
    for a frame before the next frame), a :class:`Failure` when a video stops (unreadable, corrupt, truncated,
    mismatched: the other distorted videos go on), and :class:`Notice` records. Never raises for bad input;
    :func:`score_video` is the raising, collecting form.

    One distorted video: consecutive pairs run as batches (``Scorer.evaluate``). Several: each reference frame
    is decoded and prepared once and runs against all candidates through the broadcast graph
    (``Scorer.evaluate_many``), in runs of at most :func:`frames_per_run` candidates."""
    opts = options or VideoOptions()
    paths = [dists] if isinstance(dists, str | Path) else list(dists)
    names = [str(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"distorted videos must be distinct, got {names}")
    broadcast = len(paths) > 1
    active = set(range(len(paths)))
    for unit in _in_background(lambda: _prepare(scorer, ref, paths, opts, broadcast), _PREFETCH_DEPTH):
        if isinstance(unit, Failure | Notice):
            if isinstance(unit, Failure):
                active.discard(names.index(unit.dist))
            yield unit
            continue
        items = unit
        try:
            if broadcast:
                out = scorer.evaluate_many(items[0].x0, [it.x1 for it in items])["dist"]
            else:
                out = scorer.evaluate([it.x0 for it in items], [it.x1 for it in items])["dist"]
        except InferenceError as exc:  # the graph itself failed: later batches would fail alike
            for c in sorted(active):
                yield Failure(names[c], exc)
            return
        for it, d in zip(items, out.reshape(len(items)), strict=True):
            yield FrameScore(names[it.candidate], it.ref.index, it.ref.time, it.dist.index, it.dist.time, float(d))


def _prepare(scorer: Scorer, ref_path: str | Path, paths: list[str | Path], opts: VideoOptions,
             broadcast: bool) -> Iterator[list[_Item] | Failure | Notice]:
    """Decode, pair and prepare frames (runs in the background thread): batches of items, and the events
    (failures, notices) at the point in the stream where they happened."""
    names = [str(p) for p in paths]
    try:
        ref = VideoReader(ref_path)
    except StlpipsError as exc:
        for name in names:
            yield Failure(name, exc)
        return
    followers: dict[int, _Follower] = {}
    try:
        resize = scorer.image_options.resize
        for c, path in enumerate(paths):
            reader = None
            try:
                reader = VideoReader(path)
                _check_pairable(ref.info, reader.info, opts, resize)
            except StlpipsError as exc:
                if reader is not None:
                    reader.close()
                yield Failure(names[c], exc)
                continue
            followers[c] = _Follower(reader, opts.align, _time_tolerance(ref.info, reader.info))
        if not followers:
            return
        h, w = resize or (ref.info.height, ref.info.width)
        per_run = frames_per_run(scorer.batch_size, h, w, opts.max_batch_pixels)
        yield from _pair_frames(scorer, ref, followers, names, opts, per_run, broadcast)
    finally:
        for follower in followers.values():
            follower.close()
        ref.close()


def _pair_frames(scorer: Scorer, ref: VideoReader, followers: dict[int, _Follower], names: list[str],
                 opts: VideoOptions, per_run: int, broadcast: bool) -> Iterator[list[_Item] | Failure | Notice]:
    pending: list[_Item] = []
    last: DecodedFrame | None = None
    previous_time: float | None = None
    ref_period = 1.0 / ref.info.fps if ref.info.fps else 0.0
    selected = 0
    cut_by_end = False
    start = opts.start or 0.0

    def stop(c: int, problem: StlpipsError | str) -> Failure | Notice:
        followers.pop(c).close()
        if isinstance(problem, str):
            return Notice(names[c], problem)
        return Failure(names[c], problem)

    try:
        for frame in ref.frames():
            if previous_time is not None:
                ref_period = frame.time - previous_time
            previous_time, last = frame.time, frame
            if frame.time < start - 1e-9:
                continue
            if opts.end is not None and frame.time >= opts.end:
                cut_by_end = True
                break
            selected += 1
            if (selected - 1) % opts.stride:
                continue
            try:
                x0 = scorer.load(frame.rgb(), f"{ref.path} frame {frame.index}")
            except StlpipsError as exc:
                if pending:
                    yield pending
                for c in list(followers):
                    yield stop(c, exc)
                return
            events: list[Failure | Notice] = []
            for c, follower in list(followers.items()):
                try:
                    partner = follower.frame_for(frame)
                    if partner is None:
                        events.append(stop(c, _ended_early(follower.path, ref.path, frame, opts)))
                        continue
                    name1 = f"{follower.path} frame {partner.index}"
                    x1 = scorer.load(partner.rgb(), name1)
                    images.check_pair(x0, x1, f"{ref.path} frame {frame.index}", name1)
                except StlpipsError as exc:
                    events.append(stop(c, exc))
                    continue
                pending.append(_Item(c, frame, partner, x0, x1))
            if broadcast:  # this frame against every candidate, in runs of at most per_run candidates
                for i in range(0, len(pending), per_run):
                    yield pending[i:i + per_run]
                pending = []
            elif pending and (events or len(pending) >= per_run):
                yield pending
                pending = []
            yield from events
            if not followers:
                return
        if pending:
            yield pending
            pending = []
        if last is None or cut_by_end:
            return
        for c, follower in list(followers.items()):  # the reference has ended: have the others too?
            try:
                difference = follower.shorter_or_longer(last, ref_period)
            except StlpipsError as exc:
                yield stop(c, exc)
                continue
            if difference:
                yield stop(c, _length_problem(follower.path, ref.path, difference, opts))
    except VideoReadError as exc:  # the reference itself cannot be decoded further
        if pending:
            yield pending
        for c in list(followers):
            yield stop(c, exc)


def _ended_early(dist: str, ref: str, frame: DecodedFrame, opts: VideoOptions) -> StlpipsError | str:
    where = f"ended before {ref} frame {frame.index} ({frame.time:.3f} s)"
    return _length_problem(dist, ref, where, opts)


def _length_problem(dist: str, ref: str, difference: str, opts: VideoOptions) -> StlpipsError | str:
    """An allowed length mismatch is a notice; otherwise an error that says what to do."""
    if opts.allow_length_mismatch:
        return f"{dist} {difference}; scored the frames the videos share"
    return VideoMismatchError(dist, f"{difference}; the videos differ in length (is one truncated?). Pass "
                                    f"--allow-length-mismatch (allow_length_mismatch=True) to score the frames "
                                    f"they share")


T = TypeVar("T")


def _in_background(produce: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    """Run a generator in a thread, ``depth`` items ahead of the consumer. Its exceptions are re-raised here in
    order; closing this generator stops the thread (and closes the producer, which closes its files)."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stopping = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stopping.is_set():
            try:
                slots.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        source = produce()
        try:
            for item in source:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            source.close()

    thread = threading.Thread(target=work, name="stlpips-video-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stopping.set()
        thread.join()


def score_video(scorer: Scorer, ref: str | Path, dist: str | Path | Sequence[str | Path],
                options: VideoOptions | None = None) -> np.ndarray:
    """Per-frame distances, float32: ``[N]`` for one distorted video, ``[M, N]`` for a list of M (NaN where a
    video had ended, with ``allow_length_mismatch``). Raises the first failure (a typed
    :class:`~stlpips_rt.errors.StlpipsError` naming the file); notices become warnings."""
    single = isinstance(dist, str | Path)
    paths = [dist] if single else list(dist)
    names = [str(p) for p in paths]
    columns: list[dict[int, float]] = [{} for _ in paths]
    order: dict[int, int] = {}
    scores = iter_scores(scorer, ref, paths, options)
    try:
        for record in scores:
            if isinstance(record, Failure):
                raise record.error
            if isinstance(record, Notice):
                warnings.warn(record.message, stacklevel=3)
                continue
            order.setdefault(record.frame, len(order))
            columns[names.index(record.dist)][record.frame] = record.distance
    finally:
        scores.close()
    out = np.full((len(paths), len(order)), np.nan, dtype=np.float32)
    for c, column in enumerate(columns):
        for frame, distance in column.items():
            out[c, order[frame]] = distance
    return out[0] if single else out


# --- summary -----------------------------------------------------------------------------------------------
class VideoSummary:
    """Statistics of one distorted video's per-frame distances, gathered as the scores stream by (a few numbers
    per frame are kept, never frames)."""

    def __init__(self, dist: str) -> None:
        self.dist = dist
        self._scores: list[FrameScore] = []
        self.notes: list[str] = []
        self.error: str = ""

    def add(self, record: Record) -> None:
        if isinstance(record, FrameScore):
            self._scores.append(record)
        elif isinstance(record, Notice):
            self.notes.append(record.message)
        else:
            self.error = str(record.error)

    @property
    def scores(self) -> list[FrameScore]:
        return self._scores

    @property
    def count(self) -> int:
        return len(self._scores)

    def distances(self) -> np.ndarray:
        return np.array([s.distance for s in self._scores], dtype=np.float64)

    def stats(self) -> dict[str, Any]:
        """count, mean, median, p95, max (NaN when nothing was scored)."""
        d = self.distances()
        if d.size == 0:
            return {"frames": 0, "mean": math.nan, "median": math.nan, "p95": math.nan, "max": math.nan}
        return {"frames": int(d.size), "mean": float(d.mean()), "median": float(np.median(d)),
                "p95": float(np.percentile(d, 95)), "max": float(d.max())}

    def worst(self, count: int = 5, min_gap: float = 0.0) -> list[FrameScore]:
        """The ``count`` highest-distance frames, greedily at least ``min_gap`` seconds apart (so that one bad
        scene does not fill the list), highest first."""
        picked: list[FrameScore] = []
        for s in sorted(self._scores, key=lambda s: (-s.distance, s.frame)):
            if len(picked) == count:
                break
            if min_gap <= 0 or all(abs(s.time - p.time) >= min_gap for p in picked):
                picked.append(s)
        return picked

    def as_dict(self, worst: int = 5, min_gap: float = 0.0) -> dict[str, Any]:
        return {"dist": self.dist, **self.stats(), "error": self.error, "notes": self.notes,
                "worst": [{"frame": s.frame, "time": round(s.time, 6), "dist_frame": s.dist_frame,
                           "distance": s.distance} for s in self.worst(worst, min_gap)]}


def summarize(records: Sequence[Record] | Sequence[Mapping[str, Any]]) -> dict[str, VideoSummary]:
    """Summaries by distorted video from records or from output rows (e.g. :func:`score_pair_rows`' rows)."""
    out: dict[str, VideoSummary] = {}
    for record in records:
        if isinstance(record, Mapping):
            record = _from_row(record)
        out.setdefault(record.dist, VideoSummary(record.dist)).add(record)
    return out


def _from_row(row: Mapping[str, Any]) -> Record:
    if row.get("status") == ERROR:
        return Failure(str(row["dist"]), StlpipsError(str(row.get("error", ""))))
    return FrameScore(str(row["dist"]), int(row["frame"]), float(row["time"]), int(row["dist_frame"]),
                      float(row["dist_time"]), float(row["distance"]))
