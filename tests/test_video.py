"""Video scoring: parity with the image path on decoded frames, pairing, shift tolerance, bad input, CLI, report.

Every video is generated here with PyAV (12 frames of 64x96: a scene of sharp shapes panning 2 px per frame).
"""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from stlpips_rt import ImageOptions, Scorer
from stlpips_rt.cli.score import main
from stlpips_rt.errors import MissingExtraError, VideoMismatchError, VideoReadError
from stlpips_rt.video import (
    ROW_FIELDS,
    Failure,
    FrameScore,
    Notice,
    VideoOptions,
    frames_per_run,
    iter_scores,
)
from stlpips_rt.video.pool import VIDEO_PAIR_COLUMNS, score_pair_rows, video_pair_task

av = pytest.importorskip("av", reason="video tests need the 'video' extra (PyAV)")

H, W, N, FPS = 64, 96, 12, 25
DROPPED = (3, 7)  # frames missing from the variable-frame-rate copy


def shapes_canvas(seed: int, width: int, height: int) -> np.ndarray:
    """Sharp-edged discs and squares: edges are what a one-pixel shift changes."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(width * height // 120):
        x, y, s = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(3, 16))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + s, y + s], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(im)


def scene(shift: int = 0, seed: int = 0, n: int = N, h: int = H, w: int = W) -> list[np.ndarray]:
    canvas = shapes_canvas(seed, w + 2 * n + 4, h + 8)
    return [np.ascontiguousarray(canvas[4:4 + h, 2 * i + shift:2 * i + shift + w]) for i in range(n)]


def write_video(path: Path, frames: list[np.ndarray], codec: str, pix_fmt: str, fps: int = FPS,
                pts_ms: list[int] | None = None, options: dict[str, str] | None = None) -> Path:
    """Encode RGB frames; ``pts_ms`` gives a variable frame rate (timestamps in milliseconds)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec) if pts_ms else container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        if pts_ms:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_ms:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode(path: Path) -> list[np.ndarray]:
    """Every frame as uint8 RGB, decoded independently of stlpips_rt.video."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    frames = scene()
    kept = [i for i in range(N) if i not in DROPPED]
    rng = np.random.default_rng(5)
    noisy = [np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8) for f in frames]
    v = {
        "ref": write_video(root / "ref.mkv", frames, "ffv1", "bgr0"),  # lossless RGB
        "h264": write_video(root / "h264.mp4", frames, "libx264", "yuv420p", options={"crf": "32"}),
        "png": write_video(root / "png.mov", frames, "png", "rgb24"),
        "vfr": write_video(root / "vfr.mkv", [frames[i] for i in kept], "ffv1", "bgr0",
                           pts_ms=[i * 1000 // FPS for i in kept]),
        "shifted": write_video(root / "shifted.mkv", scene(shift=1), "ffv1", "bgr0"),
        "noisy": write_video(root / "noisy.mkv", noisy, "ffv1", "bgr0"),
        "short": write_video(root / "short.mp4", frames[:10], "libx264", "yuv420p"),
        "fps30": write_video(root / "fps30.mp4", frames, "libx264", "yuv420p", fps=30),
        "small": write_video(root / "small.mp4", scene(h=48, w=64), "libx264", "yuv420p"),
    }
    whole = v["h264"].read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # MP4's index (moov) is at the end
    v["truncated_mp4"] = root / "truncated.mp4"
    lossless = v["ref"].read_bytes()
    (root / "truncated.mkv").write_bytes(lossless[: len(lossless) // 2])  # Matroska decodes up to the cut
    v["truncated_mkv"] = root / "truncated.mkv"
    corrupt = bytearray(whole)
    corrupt[:64] = bytes(range(64))
    (root / "corrupt.mp4").write_bytes(bytes(corrupt))
    v["corrupt"] = root / "corrupt.mp4"
    (root / "notes.txt").write_text("not a video\n" * 40)
    v["text"] = root / "notes.txt"
    Image.fromarray(frames[0]).save(root / "still.png")
    v["image"] = root / "still.png"
    with av.open(str(root / "tone.wav"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        samples.rate = 8000
        for packet in [*stream.encode(samples), *stream.encode()]:
            container.mux(packet)
    v["audio"] = root / "tone.wav"
    v["missing"] = root / "missing.mp4"
    return v


@pytest.fixture(scope="module")
def scorer(exported_model) -> Scorer:
    return Scorer(exported_model("alex", "st"), providers="cpu")


@pytest.fixture(scope="module")
def spatial_model(exported_model) -> Path:
    return exported_model("alex", "st", spatial=True, layers=True)


# --- parity with the image path ------------------------------------------------------------------------------
@pytest.mark.parametrize("ref_key, dist_key", [("ref", "h264"), ("png", "shifted"), ("h264", "noisy"), ("h264", "png")])
def test_distances_equal_the_image_path_bit_for_bit(scorer: Scorer, videos, ref_key: str, dist_key: str) -> None:
    got = scorer.score_video(videos[ref_key], videos[dist_key])
    expected = scorer.score_batch(decode(videos[ref_key]), decode(videos[dist_key]))
    assert got.dtype == np.float32 and got.shape == (N,)
    np.testing.assert_array_equal(got, expected)
    assert got.min() > 0  # every pair differs: lossy codec, shift or noise


def test_lossless_containers_decode_to_the_encoded_frames(videos) -> None:
    for key in ("ref", "png"):
        for a, b in zip(decode(videos[key]), scene(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_several_candidates_equal_score_many_per_frame(scorer: Scorer, videos) -> None:
    got = scorer.score_video(videos["ref"], [videos["h264"], videos["png"], videos["shifted"]])
    ref = decode(videos["ref"])
    cands = [decode(videos[k]) for k in ("h264", "png", "shifted")]
    expected = np.stack([scorer.score_many(ref[i], [c[i] for c in cands]) for i in range(N)], axis=1)
    assert got.shape == (3, N)
    np.testing.assert_array_equal(got, expected)
    assert np.all(got[1] == 0)  # the PNG copy is lossless


def test_time_alignment_pairs_each_frame_with_the_one_on_screen(scorer: Scorer, videos) -> None:
    records = list(iter_scores(scorer, videos["ref"], videos["vfr"], VideoOptions(align="time")))
    assert all(isinstance(r, FrameScore) for r in records) and len(records) == N
    kept = [i for i in range(N) if i not in DROPPED]
    # On screen at frame i's time: the last kept frame at or before it (a dropped frame repeats its predecessor).
    shown = [max(k for k in kept if k <= i) for i in range(N)]
    assert [r.dist_frame for r in records] == [kept.index(s) for s in shown]
    assert [r.dist_time for r in records] == pytest.approx([s / FPS for s in shown])
    dist_frames = decode(videos["vfr"])
    expected = scorer.score_batch(decode(videos["ref"]), [dist_frames[kept.index(s)] for s in shown])
    np.testing.assert_array_equal(np.array([r.distance for r in records], dtype=np.float32), expected)
    for i, r in enumerate(records):
        assert (r.distance > 0.01) if i in DROPPED else (r.distance == 0.0), i


def test_index_alignment_refuses_a_variable_frame_rate_copy(scorer: Scorer, videos) -> None:
    with pytest.raises(VideoMismatchError, match="vfr.mkv"):
        scorer.score_video(videos["ref"], videos["vfr"], allow_fps_mismatch=True)


def test_stride_start_end_select_reference_frames(scorer: Scorer, videos) -> None:
    opts = VideoOptions(stride=3, start=0.08, end=0.4)  # frames 2..9, every third: 2, 5, 8
    records = list(iter_scores(scorer, videos["ref"], videos["h264"], opts))
    assert [r.frame for r in records] == [2, 5, 8]
    assert [r.time for r in records] == pytest.approx([0.08, 0.2, 0.32])
    ref, dist = decode(videos["ref"]), decode(videos["h264"])
    expected = scorer.score_batch([ref[i] for i in (2, 5, 8)], [dist[i] for i in (2, 5, 8)])
    np.testing.assert_array_equal([r.distance for r in records], expected)


def test_batches_are_sized_by_pixels() -> None:
    budget = VideoOptions().max_batch_pixels
    assert frames_per_run(16, 64, 96, budget) == 16
    assert frames_per_run(16, 256, 256, budget) == 4
    assert frames_per_run(16, 720, 1280, budget) == 1
    assert frames_per_run(3, 64, 64, budget) == 3


def test_small_batches_give_the_same_distances(exported_model, videos) -> None:
    small = Scorer(exported_model("alex", "st"), providers="cpu", batch_size=5)
    got = small.score_video(videos["ref"], videos["h264"])
    np.testing.assert_array_equal(got, small.score_batch(decode(videos["ref"]), decode(videos["h264"])))


# --- shift tolerance -----------------------------------------------------------------------------------------
def test_one_pixel_shift_scores_far_lower_under_st_lpips_than_lpips(exported_model, videos) -> None:
    st = Scorer(exported_model("alex", "st"), providers="cpu")
    lp = Scorer(exported_model("alex", "lpips"), providers="cpu")
    st_shift = st.score_video(videos["ref"], videos["shifted"])
    lp_shift = lp.score_video(videos["ref"], videos["shifted"])
    assert np.all(st_shift > 0)
    assert np.all(lp_shift > 2 * st_shift), (st_shift, lp_shift)
    # Scale-free: each metric's shift distance relative to its own distance for visible noise (sigma 12).
    st_ratio = st_shift.mean() / st.score_video(videos["ref"], videos["noisy"]).mean()
    lp_ratio = lp_shift.mean() / lp.score_video(videos["ref"], videos["noisy"]).mean()
    assert lp_ratio > 2 * st_ratio, (st_ratio, lp_ratio)


# --- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, error, words", [
    ("missing", VideoReadError, "does not exist"),
    ("text", VideoReadError, "not a video"),
    ("image", VideoReadError, "single image"),
    ("audio", VideoReadError, "no video stream"),
    ("truncated_mp4", VideoReadError, "cannot open"),
    ("corrupt", VideoReadError, "cannot open"),
    ("truncated_mkv", VideoMismatchError, "differ in length"),
    ("small", VideoMismatchError, "frame sizes differ"),
    ("short", VideoMismatchError, "differ in length"),  # found while decoding: Matroska has no frame count
    ("fps30", VideoMismatchError, "frame rates differ"),
])
def test_bad_input_raises_typed_errors_naming_the_file(scorer: Scorer, videos, key: str, error, words: str) -> None:
    with pytest.raises(error, match=words) as info:
        scorer.score_video(videos["ref"], videos[key])
    assert videos[key].name in str(info.value)


def test_frame_counts_in_the_containers_fail_before_decoding(scorer: Scorer, videos) -> None:
    with pytest.raises(VideoMismatchError, match="frame counts differ") as info:  # both MP4: counts recorded
        scorer.score_video(videos["h264"], videos["short"])
    assert "short.mp4" in str(info.value)


def test_a_bad_reference_is_named_too(scorer: Scorer, videos) -> None:
    with pytest.raises(VideoReadError, match="notes.txt"):
        scorer.score_video(videos["text"], videos["ref"])


def test_mismatches_handled_as_the_options_say(scorer: Scorer, videos) -> None:
    with pytest.warns(UserWarning, match="short.mp4"):
        shared = scorer.score_video(videos["ref"], videos["short"], allow_length_mismatch=True)
    assert shared.shape == (10,)
    by_index = scorer.score_video(videos["ref"], videos["fps30"], allow_fps_mismatch=True)
    np.testing.assert_array_equal(by_index, scorer.score_batch(decode(videos["ref"]), decode(videos["fps30"])))
    with pytest.warns(UserWarning, match="fps30.mp4 ended before"):  # 12 frames at 30 fps end at 0.4 s
        by_time = scorer.score_video(videos["ref"], videos["fps30"], align="time", allow_length_mismatch=True)
    assert by_time.shape == (11,) and np.isfinite(by_time).all()
    resized = Scorer(scorer.info.path, providers="cpu", image=ImageOptions(resize=(48, 64)))
    resized = resized.score_video(videos["ref"], videos["small"])
    assert resized.shape == (N,)


def test_one_bad_candidate_does_not_stop_the_others(scorer: Scorer, videos) -> None:
    records = list(iter_scores(scorer, videos["ref"], [videos["h264"], videos["truncated_mkv"], videos["text"]]))
    failures = {Path(r.dist).name: r.error for r in records if isinstance(r, Failure)}
    assert set(failures) == {"truncated.mkv", "notes.txt"}
    assert isinstance(failures["truncated.mkv"], VideoMismatchError)
    scored = [r for r in records if isinstance(r, FrameScore)]
    assert [r.frame for r in scored if r.dist.endswith("h264.mp4")] == list(range(N))
    partial = [r.frame for r in scored if r.dist.endswith("truncated.mkv")]
    assert 0 < len(partial) < N and partial == list(range(len(partial)))
    truncated = str(videos["truncated_mkv"])  # its failure comes after the frames it did score
    last_scored = max(i for i, r in enumerate(records) if isinstance(r, FrameScore) and r.dist == truncated)
    failed_at = next(i for i, r in enumerate(records) if isinstance(r, Failure) and r.dist == truncated)
    assert last_scored < failed_at


def test_allowed_length_mismatch_is_a_notice(scorer: Scorer, videos) -> None:
    records = list(iter_scores(scorer, videos["ref"], videos["truncated_mkv"],
                               VideoOptions(allow_length_mismatch=True)))
    assert isinstance(records[-1], Notice) and "truncated.mkv" in records[-1].message
    assert all(isinstance(r, FrameScore) for r in records[:-1])


def test_missing_pyav_names_the_extra(monkeypatch, videos) -> None:
    from stlpips_rt import video

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtraError, match=r"stlpips-deploy\[video\]"):
        video.VideoReader(videos["ref"])


def test_importing_the_runtime_loads_no_video_extra() -> None:
    code = ("import sys, stlpips_rt, stlpips_rt.cli.score, stlpips_rt.video\n"
            "print(sorted(m for m in ('av', 'matplotlib', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- one pair per worker (process pools, Ray) ----------------------------------------------------------------
def test_pair_rows_run_in_another_process(exported_model, scorer: Scorer, videos) -> None:
    args = (str(videos["ref"]), str(videos["h264"]), str(exported_model("alex", "st")), VideoOptions(stride=2),
            {"providers": "cpu"})
    pickle.dumps(args)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        rows = pool.submit(score_pair_rows, *args).result(timeout=120)
        bad = pool.submit(score_pair_rows, str(videos["ref"]), str(videos["text"]), *args[2:]).result(timeout=60)
    assert [r["frame"] for r in rows] == list(range(0, N, 2)) and set(rows[0]) == set(ROW_FIELDS)
    ref, dist = decode(videos["ref"]), decode(videos["h264"])
    expected = scorer.score_batch(ref[::2], dist[::2])
    np.testing.assert_array_equal(np.array([r["distance"] for r in rows], dtype=np.float32), expected)
    assert len(bad) == 1 and bad[0]["status"] == "error" and "notes.txt" in bad[0]["error"]


def test_video_pair_task_summarises_one_pair(scorer: Scorer, videos) -> None:
    out = video_pair_task(scorer, {"ref": str(videos["ref"]), "dist": str(videos["h264"])}, VideoOptions(stride=2))
    assert set(out) == set(VIDEO_PAIR_COLUMNS)
    expected = scorer.score_video(videos["ref"], videos["h264"], stride=2)
    np.testing.assert_array_equal(np.array(out["distances"], dtype=np.float32), expected)
    assert out["frames"] == N // 2 and out["max"] == float(expected.max())
    assert out["worst_frame"] == 2 * int(np.argmax(expected))
    with pytest.raises(VideoReadError, match="notes.txt"):
        video_pair_task(scorer, {"ref": str(videos["ref"]), "dist": str(videos["text"])})


@pytest.mark.ray
def test_video_pairs_on_ray_one_pair_per_task(ray_cluster, scorer: Scorer, videos) -> None:
    from stlpips_rt.scale import map_pairs, pairs_dataset

    rows = [{"ref": str(videos["ref"]), "dist": str(videos[k])} for k in ("h264", "text", "shifted")]
    out = map_pairs(pairs_dataset(rows, rows_per_block=1), video_pair_task, VIDEO_PAIR_COLUMNS,
                    model=str(scorer.info.path), providers="cpu").take_all()
    # take_all, not to_pandas: Ray's pandas conversion casts list columns to tensors and fails on an error row's None.
    by_dist = {Path(r["dist"]).name: r for r in out}
    assert by_dist["notes.txt"]["status"] == "error" and "not a video" in by_dist["notes.txt"]["error"]
    for key in ("h264", "shifted"):
        got = by_dist[videos[key].name]
        assert got["status"] == "ok"
        np.testing.assert_array_equal(np.asarray(got["distances"], dtype=np.float32),
                                      scorer.score_video(videos["ref"], videos[key]))


# --- command line --------------------------------------------------------------------------------------------
def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_rows_and_summary(scorer: Scorer, videos, tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    code, _, err = invoke("--video", "--model", scorer.info.path, "--providers", "cpu", videos["ref"],
                          videos["h264"], "-o", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ROW_FIELDS and len(rows) == N
    expected = scorer.score_video(videos["ref"], videos["h264"])
    assert [float(r["distance"]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-7)
    assert [int(r["frame"]) for r in rows] == list(range(N))
    assert "h264.mp4: 12 frames, mean" in err and "worst frames" in err


def test_cli_keeps_rows_of_a_video_that_fails_midway(scorer: Scorer, videos, tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    code, _, err = invoke("--video", "--model", scorer.info.path, "--providers", "cpu", videos["ref"],
                          "--dist", videos["h264"], "--dist", videos["truncated_mkv"], "-o", out)
    assert code == 1
    assert "truncated.mkv" in err and "differ in length" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_video = {name: [r for r in rows if r["dist"].endswith(name)] for name in ("h264.mp4", "truncated.mkv")}
    assert len(by_video["h264.mp4"]) == N
    scored = [r for r in by_video["truncated.mkv"] if r["status"] == "ok"]
    assert 0 < len(scored) < N and [r["status"] for r in by_video["truncated.mkv"]][-1] == "error"


def test_cli_parquet_rows_hold_the_exact_distances(scorer: Scorer, videos, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "rows.parquet"
    code, _, err = invoke("--video", "--model", scorer.info.path, "--providers", "cpu", "--align", "time",
                          videos["ref"], videos["vfr"], "-o", out, "-q")
    assert code == 0, err
    table = pq.read_table(out)
    assert table.column_names == ROW_FIELDS and table.num_rows == N
    expected = scorer.score_video(videos["ref"], videos["vfr"], align="time")
    np.testing.assert_array_equal(table.column("distance").to_numpy(), expected)


@pytest.mark.parametrize("args, words", [
    (("--align", "time"), "only with --video"),
    (("--video", "--heatmap", "h"), "--report"),
    (("--video", "--format", "parquet"), "need a file"),
    (("--video", "--start", "2", "--end", "1"), "must be after start"),
])
def test_cli_usage_errors(videos, args: tuple[str, ...], words: str) -> None:
    code, _, err = invoke(*args, videos["ref"], videos["h264"])
    assert code == 2 and words in err


def test_cli_report_shows_worst_frames_with_heat_maps(spatial_model: Path, videos, tmp_path: Path) -> None:
    report = tmp_path / "report"
    code, _, err = invoke("--video", "--model", spatial_model, "--providers", "cpu", videos["ref"],
                          "--dist", videos["h264"], "--dist", videos["shifted"], "--report", report,
                          "--worst", "3", "--worst-gap", "0.1", "-o", tmp_path / "rows.csv", "-q")
    assert code == 0, err
    summary = json.loads((report / "summary.json").read_text())
    assert [v["frames"] for v in summary["videos"]] == [N, N]
    for video in summary["videos"]:
        times = [w["time"] for w in video["worst"]]
        assert len(times) == 3 and all(abs(a - b) >= 0.1 - 1e-9 for a in times for b in times if a != b)
        assert video["max"] == video["worst"][0]["distance"]
    md = (report / "summary.md").read_text()
    assert "![distance over time](distance.png)" in md and "| `" in md
    for name in ("distance.png", "worst_1_h264.png", "worst_2_shifted.png"):
        with Image.open(report / name) as im:
            assert im.width > 600 and im.height > 300, name
    panels = sorted((report / "frames" / "1_h264").glob("*.png"))
    assert len(panels) == 3
    with Image.open(panels[0]) as im:  # reference | distorted | heat map
        assert im.width == 3 * im.height * W // H


def test_cli_report_without_spatial_model_says_how_to_get_heat_maps(scorer: Scorer, videos, tmp_path: Path) -> None:
    report = tmp_path / "report"
    code, _, err = invoke("--video", "--model", scorer.info.path, "--providers", "cpu", videos["ref"],
                          videos["h264"], "--report", report, "-o", tmp_path / "rows.csv", "-q")
    assert code == 0, err
    assert "--spatial" in (report / "summary.md").read_text()
    assert (report / "worst_1_h264.png").is_file()
