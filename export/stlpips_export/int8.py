"""int8 backbones (``stlpips-export --int8``): post-training static quantization and the gate an int8 file must pass.

What is quantized: the inputs and weights of every dense backbone convolution except the first (the one fed the
image), by OpenVINO's NNCF (post-training, per-channel int8 weights, per-tensor 8-bit activations, bias
correction), in ONNX QDQ form; the convolutions' outputs stay float32, so the features the head reads are not
rounded again. It measured better rankings than onnxruntime's quantizer (docs/int8.md). Float32 stays: the
scaling layer, the first convolution (quantizing the image after the scaling layer's per-channel affine map was the
largest single error source measured; it is about 13% (alex) and 0.5% (vgg) of the multiply-adds), the BlurPool
filters (depthwise), unit normalisation, squared difference, linear layers and the spatial mean. OpenVINO runs
such a graph's convolutions in int8 (VNNI); onnxruntime's CPU provider runs it too, without the speed-up.

Calibration: activation ranges (min/max) from real photographs: patches of scikit-image's bundled photos
(``skimage.data``) and distorted copies of them (the built-in triplet set's distortions), optionally with the
user's own images (``--calibration DIR``) or those alone (``--calibration-only``).

The gate, against the float32 graph the file was quantized from, on ``gate_triplets`` real-photo triplets of the
shift study's set (another seed than the calibration patches and the study's default): every triplet is scored as
the paper's shift protocol scores it (the cropped reference against d0 and d1 shifted by 0..3 pixels), and

- 2AFC rank agreement: the share of (triplet, shift) decisions d(ref, d0) < d(ref, d1) that the int8 graph makes
  as the float32 graph does, must be >= :data:`MIN_RANK_AGREEMENT`;
- the rank-flip rates r_rf at 1, 2 and 3 pixels (paper eq. 2) must each lie inside the float32 rate's 95% Wilson
  interval.

The gate scores with the engine ``fast`` runs int8 files on (OpenVINO where installed, else the CPU provider). A
graph that misses either bound is not written (:class:`~stlpips_export.errors.GateError`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from stlpips_rt.contract import Key
from stlpips_rt.io.images import to_model_input

from .errors import CalibrationError, GateError

MIN_RANK_AGREEMENT = 0.995
DEFAULT_GATE_TRIPLETS = 2000
GATE_SIZE = 64
#: Seeds of the built-in triplet set: the gate's (2022), the calibration patches' (1) and the shift study's
#: default (0) are three disjoint sets of the same distribution.
GATE_SEED = 2022
CALIBRATION_SEED = 1
CALIBRATION_TRIPLETS = 96
CALIBRATION_SIZE = 64
CALIBRATION_BATCH = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Crops taken from each of the user's calibration images.
CROPS_PER_IMAGE = 4

Progress = Callable[[str], None]


# --- calibration -----------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Images ``[N, H, W, 3]`` uint8 whose activations set the quantization ranges, and a one-line description for
    the file's metadata."""

    images: np.ndarray
    description: str

    def batches(self) -> list[dict[str, np.ndarray]]:
        """Model feeds, the same images on both inputs: each input has its own backbone pass in the graph, and
        the quantizer gives each pass its own ranges, so only the same data gives both passes the same
        quantization (an image's int8 features do not depend on the input it comes in on)."""
        x = to_model_input(self.images)
        return [{"in0": x[i : i + CALIBRATION_BATCH], "in1": x[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(x) - CALIBRATION_BATCH + 1, CALIBRATION_BATCH)]


def builtin_calibration(size: int = CALIBRATION_SIZE, count: int = CALIBRATION_TRIPLETS) -> Calibration:
    """``count`` patches of scikit-image's photos and one distorted copy of each (the triplet set's seed 1)."""
    try:
        import skimage
    except ImportError:
        raise CalibrationError("--int8 calibrates on scikit-image's bundled photos: pip install "
                               "'stlpips-deploy[eval]' (or pass --calibration DIR --calibration-only)") from None
    from .evaluate.triplets import make_triplets

    triplets = make_triplets(count, size, seed=CALIBRATION_SEED)
    distorted = np.where(np.arange(count)[:, None, None, None] % 2 == 0, triplets.d0, triplets.d1)
    images = np.stack([triplets.ref, distorted], axis=1).reshape(-1, size, size, 3)
    return Calibration(images, f"scikit-image {skimage.__version__} photos: {count} {size}x{size} patches "
                               f"(triplet seed {CALIBRATION_SEED}) and a distorted copy of each")


def folder_calibration(folder: Path, size: int = CALIBRATION_SIZE, progress: Progress = lambda _: None
                       ) -> Calibration:
    """Crops of the images in ``folder``: each downscaled so its short side is ``2 * size``, then the centre and
    three seeded random ``size`` x ``size`` crops. Unreadable files are skipped and named."""
    from PIL import Image

    if not folder.is_dir():
        raise CalibrationError(f"--calibration {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    rng = np.random.default_rng(CALIBRATION_SEED)
    crops, skipped = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = 2 * size / min(im.size)
                if scale < 1:
                    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                                   Image.Resampling.BOX)
                u8 = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name} ({exc})")
            continue
        h, w = u8.shape[:2]
        if h < size or w < size:
            skipped.append(f"{path.name} ({w}x{h} is below {size}x{size})")
            continue
        corners = [((h - size) // 2, (w - size) // 2)]
        corners += [(int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1)))
                    for _ in range(CROPS_PER_IMAGE - 1)]
        crops += [u8[y : y + size, x : x + size] for y, x in corners]
    if skipped:
        progress(f"calibration: skipped {len(skipped)} file(s): {'; '.join(skipped)}")
    if len(crops) < CALIBRATION_BATCH:
        raise CalibrationError(f"--calibration {folder}: {len(crops)} usable {size}x{size} crops from "
                               f"{len(files) - len(skipped)} image(s); give at least 2 images of at least "
                               f"{size}x{size} pixels ({', '.join(IMAGE_SUFFIXES)})")
    return Calibration(np.stack(crops), f"{len(files) - len(skipped)} user image(s) from {folder.name}/: "
                                        f"{len(crops)} {size}x{size} crops")


def calibration_set(folder: Path | None = None, only_folder: bool = False,
                    progress: Progress = lambda _: None) -> Calibration:
    """The built-in photos, the images of ``folder``, or both."""
    if only_folder and folder is None:
        raise CalibrationError("--calibration-only needs --calibration DIR")
    parts = [] if only_folder else [builtin_calibration()]
    if folder is not None:
        parts.append(folder_calibration(folder, progress=progress))
    return Calibration(np.concatenate([p.images for p in parts]), "; ".join(p.description for p in parts))


# --- quantization ----------------------------------------------------------------------------------------------
def backbone_convs(graph: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(quantized, kept float32) backbone Conv node names. The exporter names backbone nodes ``/net/...``; the
    first convolution (3 input channels: it sees the image) and the depthwise blur filters (1 input channel per
    group) stay float32."""
    weights = {init.name: init for init in graph.graph.initializer}
    quantized, kept = [], []
    for node in graph.graph.node:
        if node.op_type != "Conv" or not node.name.startswith("/net/"):
            continue
        weight = weights.get(node.input[1])
        (kept if weight is None or weight.dims[1] in (1, 3) else quantized).append(node.name)
    return quantized, kept


def _nncf():  # noqa: ANN202 - the module
    try:
        import nncf
    except ImportError:
        raise CalibrationError("--int8 quantizes with OpenVINO's NNCF: pip install 'stlpips-deploy[int8]'") \
            from None
    nncf.set_log_level(logging.ERROR)
    return nncf


def quantizer_description() -> str:
    return (f"nncf {_nncf().__version__} quantize (ONNX QDQ, performance preset: per-channel symmetric int8 "
            "weights, per-tensor 8-bit activations on the inputs of the quantized convolutions, min/max ranges, "
            "bias correction)")


def quantize_backbone(graph: onnx.ModelProto, calibration: Calibration) -> onnx.ModelProto:
    """The QDQ int8 graph of ``graph`` (see the module docstring for what is quantized)."""
    nncf = _nncf()
    quantized, _ = backbone_convs(graph)
    keep = set(quantized)
    ignored = [node.name for node in graph.graph.node if node.name not in keep]
    batches = calibration.batches()
    # Fast bias correction: NNCF's full variant fails on a graph with one backbone pass per input (KeyError on
    # the first pass's scaling node while it builds its subgraphs, nncf 3.4); on the earlier single-pass graph it
    # measured 99.45% rank agreement on 500 gate triplets against 99.40% for the fast one (docs/int8.md).
    return nncf.quantize(graph, nncf.Dataset(batches), subset_size=len(batches),
                         ignored_scope=nncf.IgnoredScope(names=ignored), fast_bias_correction=True)


# --- the gate --------------------------------------------------------------------------------------------------
Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


def shift_distances(run: Run, triplets) -> np.ndarray:  # noqa: ANN001 - a TripletSet
    """``[N, 2, 4]`` distances as the shift study lays them out: the cropped reference against d0 / d1 at shifts
    0..3, one broadcast run per triplet."""
    from .evaluate.shift import MAX_SHIFT, sample_candidates, shift_crop

    out = np.empty((len(triplets), 2, MAX_SHIFT + 1))
    for i in range(len(triplets)):
        ref = to_model_input(np.ascontiguousarray(shift_crop(triplets.ref[i], 0)))
        candidates = to_model_input(sample_candidates(triplets.d0[i], triplets.d1[i]))
        out[i] = np.asarray(run(ref, candidates), dtype=np.float64).reshape(2, -1)
    return out


@dataclass
class GateReport:
    """The int8 graph against its float32 graph on the gate's triplets."""

    triplets: int
    rank_agreement: float
    median_rel: float
    flips_fp32: dict
    flips_int8: dict
    engine: str = "cpu"

    @property
    def flips_unchanged(self) -> bool:
        return all(self.flips_fp32[k].low <= self.flips_int8[k].value <= self.flips_fp32[k].high
                   for k in self.flips_fp32)

    @property
    def passed(self) -> bool:
        return self.rank_agreement >= MIN_RANK_AGREEMENT and self.flips_unchanged

    def flip_text(self) -> str:
        """``1px 1.70 [1.25, 2.31] -> 1.75; ...`` (percent: float32 rate [its 95% CI] -> int8 rate)."""
        return "; ".join(f"{k}px {self.flips_fp32[k].percent()} -> {100 * self.flips_int8[k].value:.2f}"
                         for k in self.flips_fp32)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"int8 gate {verdict} on {self.triplets} real-photo triplets ({GATE_SIZE}x{GATE_SIZE}, "
                f"{4 * self.triplets} 2AFC decisions): rank agreement {100 * self.rank_agreement:.2f}% "
                f"(needs >= {100 * MIN_RANK_AGREEMENT:.1f}%), median relative error {self.median_rel:.2%}; "
                f"rank-flip rates, float32 [95% CI] -> int8 (each must stay inside): {self.flip_text()}")

    def metadata(self) -> dict[str, str]:
        return {
            Key.GATE: (f">= {100 * MIN_RANK_AGREEMENT:g}% 2AFC rank agreement with the float32 graph and r_rf at "
                       "1-3 px inside the float32 95% intervals, on the built-in real-photo triplets, seed "
                       f"{GATE_SEED}, {GATE_SIZE}x{GATE_SIZE}; int8 scored on {self.engine}"),
            Key.GATE_TRIPLETS: str(self.triplets),
            Key.GATE_RANK_AGREEMENT: f"{self.rank_agreement:.5f}",
            Key.GATE_MEDIAN_REL: f"{self.median_rel:.4g}",
            Key.GATE_FLIP_RATES: self.flip_text(),
        }


def gate_report(fp32: np.ndarray, int8: np.ndarray) -> GateReport:
    """Compare the shift-layout distances ``[N, 2, 4]`` of the int8 graph with the float32 graph's."""
    from .evaluate.shift import flip_rates, prefers_d0

    rel = np.abs(int8 - fp32) / np.maximum(np.abs(fp32), 1e-12)
    return GateReport(len(fp32), float(np.mean(prefers_d0(fp32) == prefers_d0(int8))), float(np.median(rel)),
                      flip_rates(fp32), flip_rates(int8))


def gate_engine() -> str:
    """The engine the gate scores with: the first of stlpips_rt.precision.INT8_ENGINES that runs here."""
    from stlpips_rt.engine.openvino_direct import openvino_runtime_reason

    return "openvino" if not openvino_runtime_reason() else "cpu"


def _session_run(graph: onnx.ModelProto, engine: str) -> Run:
    if engine == "openvino":  # OpenVINO's own runtime, float32 where the graph is float (as the Scorer runs it)
        from stlpips_rt.engine.openvino_direct import OpenVinoSession

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "graph.onnx"
            onnx.save(graph, str(path))
            session = OpenVinoSession(path, "CPU", "f32", None)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda in0, in1: session.run(["dist"], {"in0": in0, "in1": in1})[0]


def run_gate(fp32_graph: onnx.ModelProto, int8_graph: onnx.ModelProto, count: int = DEFAULT_GATE_TRIPLETS,
             progress: Progress = lambda _: None) -> GateReport:
    """Score ``count`` gate triplets with the float32 graph (ONNX Runtime, CPU: the exact runtime) and the int8
    graph (on :func:`gate_engine`), and compare."""
    from .evaluate.triplets import make_triplets

    triplets = make_triplets(count, GATE_SIZE, seed=GATE_SEED)
    progress(f"gate: {count} triplets; scoring with the float32 graph ...")
    fp32 = shift_distances(_session_run(fp32_graph, "cpu"), triplets)
    engine = gate_engine()
    progress(f"gate: scoring with the int8 graph on {engine} ...")
    report = gate_report(fp32, shift_distances(_session_run(int8_graph, engine), triplets))
    report.engine = engine
    return report


def quantize_and_gate(fp32_graph: onnx.ModelProto, calibration: Calibration, gate_triplets: int,
                      progress: Progress = lambda _: None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Quantize, run the gate, and return the int8 graph with its metadata; :class:`GateError` when it misses."""
    int8_graph = quantize_backbone(fp32_graph, calibration)
    report = run_gate(fp32_graph, int8_graph, gate_triplets, progress)
    progress(report.summary())
    if not report.passed:
        raise GateError(f"the int8 graph misses its gate; nothing was written. {report.summary()}. "
                        "Calibrate on images like the ones you score (--calibration DIR), or use the float32 "
                        "file with --precision fast (OpenVINO bf16) instead.")
    _, kept = backbone_convs(fp32_graph)
    metadata = {Key.QUANTIZER: quantizer_description(), Key.CALIBRATION: calibration.description,
                Key.FLOAT_NODES: ",".join(kept), **report.metadata()}
    return int8_graph, metadata
