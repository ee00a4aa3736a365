"""The example of docs/video.md: one reference video against three candidates, with a report.

A 2-second pan over a photograph (256x256, 25 fps, lossless FFV1 reference) against
  - h264_crf30.mp4:   H.264 at CRF 30 throughout;
  - bitrate_dip.mp4:  H.264 at CRF 22, except frames 20-29, JPEG-crushed (quality 8) first: a transient glitch;
  - shifted_1px.mkv:  the same pan one pixel to the right, lossless (what ST-LPIPS is built to tolerate).
Scored with ST-LPIPS alex (spatial export, for the heat maps) into a report, then the means under LPIPS alex
beside ST-LPIPS alex. The worst-frames figures are then colour-quantised (256 colours) to keep the repository
small; the full-resolution panels in report/frames/ are not committed (.gitignore).

    python scripts/video_demo.py --models models --out docs/video
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import video_samples  # noqa: E402  (a sibling script)

from stlpips_rt import Scorer  # noqa: E402
from stlpips_rt.cli.score import main as stlpips_score  # noqa: E402
from stlpips_rt.video import summarize  # noqa: E402

FRAMES, SIZE, DIP = 50, 256, range(20, 30)


def crush(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def make_videos() -> tuple[Path, list[Path]]:
    """Written into the current folder, so that the report names them as a user would."""
    frames = list(video_samples.panning(FRAMES, SIZE, SIZE))
    ref = video_samples.write(Path("reference.mkv"), frames, "ffv1", "bgr0")
    dists = [
        video_samples.write(Path("h264_crf30.mp4"), frames, options={"crf": "30"}),
        video_samples.write(Path("bitrate_dip.mp4"), [crush(f, 8) if i in DIP else f for i, f in enumerate(frames)],
                            options={"crf": "22"}),
        video_samples.write(Path("shifted_1px.mkv"), video_samples.panning(FRAMES, SIZE, SIZE, shift=1), "ffv1",
                            "bgr0"),
    ]
    return ref, dists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="folder with stlpips_alex_st_spatial.onnx and stlpips_alex_lpips.onnx")
    parser.add_argument("--out", type=Path, default=Path("docs/video"))
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated videos (default: temp)")
    args = parser.parse_args()
    out, models = args.out.resolve(), args.models.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)
        run(out, models)


def run(out: Path, models: Path) -> None:
    ref, dists = make_videos()
    st_model = models / "stlpips_alex_st_spatial.onnx"
    command = ["--video", str(ref), *[a for d in dists for a in ("--dist", str(d))], "--model", str(st_model),
               "--providers", "cpu", "--report", str(out / "report"), "-o", str(out / "rows.csv"),
               "--worst", "2", "--worst-gap", "0.4"]
    print("stlpips-score " + " ".join(command), file=sys.stderr)
    stlpips_score(command, standalone_mode=False)
    for figure in (out / "report").glob("worst_*.png"):
        Image.open(figure).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                   dither=Image.Dither.NONE).save(figure, optimize=True)
    with (out / "rows.csv").open(newline="") as f:
        st = {Path(k).name: s.stats() for k, s in summarize(list(csv.DictReader(f))).items()}
    lp_scorer = Scorer(models / "stlpips_alex_lpips.onnx", providers="cpu")
    lp = {Path(d).name: float(np.mean(lp_scorer.score_video(ref, d))) for d in dists}
    lines = ["| candidate | ST-LPIPS alex mean | max | LPIPS alex mean | LPIPS / ST-LPIPS |", "|---|---|---|---|---|"]
    for name in lp:
        lines.append(f"| {name} | {st[name]['mean']:.4f} | {st[name]['max']:.4f} | {lp[name]:.4f} | "
                     f"{lp[name] / st[name]['mean']:.1f}x |")
    table = "\n".join(lines) + "\n"
    (out / "st_vs_lpips.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
