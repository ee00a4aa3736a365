"""Videos scored frame by frame: decoding and pairing as a stream (:mod:`.stream`), the ``--report`` folder
(:mod:`.report`), and one pair per process or Ray task (:mod:`.pool`, which builds Scorers and so is imported by
name: ``from stlpips_rt.video.pool import score_pair_rows``)."""

from .stream import (
    ALIGNMENTS,
    ROW_FIELDS,
    ROW_TYPES,
    VIDEO_EXTRA,
    DecodedFrame,
    Failure,
    FrameScore,
    Notice,
    Record,
    VideoInfo,
    VideoOptions,
    VideoReader,
    VideoSummary,
    frames_per_run,
    iter_scores,
    probe,
    read_frames,
    score_video,
    summarize,
    to_row,
)

__all__ = ["ALIGNMENTS", "ROW_FIELDS", "ROW_TYPES", "VIDEO_EXTRA", "DecodedFrame", "Failure", "FrameScore", "Notice",
           "Record", "VideoInfo", "VideoOptions", "VideoReader", "VideoSummary", "frames_per_run", "iter_scores",
           "probe", "read_frames", "score_video", "summarize", "to_row"]
