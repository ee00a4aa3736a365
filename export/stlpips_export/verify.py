"""Parity of an ONNX graph against the PyTorch reference, and the minimum input size of a model.

The comparison runs ONNX Runtime on the CPU over random and structured inputs at several shapes, including the
minimum size and both broadcast directions, and over 2AFC-style triplets for rank agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from stlpips_rt.precision import SPATIAL_MEAN_MAX_REL, error_stats, float64_distance, rank_agreement

from .errors import ParityError
from .model import PerceptualDistance

MAX_MIN_SIZE_SEARCH = 256
#: The large pair of the spatial-mean check: big enough that a plain float32 ReduceMean drifts (docs/contract.md).
MEAN_CHECK_SIZE = (768, 1024)


def find_min_size(model: PerceptualDistance) -> int:
    """Smallest side S such that an S x S input runs (reflection padding needs each map wider than its pad)."""
    with torch.no_grad():
        for side in range(1, MAX_MIN_SIZE_SEARCH + 1):
            x = torch.zeros(1, 3, side, side)
            try:
                model(x, x)
            except RuntimeError:
                continue
            return side
    raise RuntimeError(f"{model.arch.key} fails on every input up to {MAX_MIN_SIZE_SEARCH}px")


@dataclass
class Case:
    name: str
    in0: np.ndarray
    in1: np.ndarray


def parity_cases(min_size: int, static_hw: tuple[int, int] | None = None, seed: int = 0) -> list[Case]:
    """Random and structured input pairs in [-1, 1]. With ``static_hw`` every case has that size."""
    rng = np.random.default_rng(seed)

    def rand(n: int, h: int, w: int) -> np.ndarray:
        return rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)

    def sizes(*hw: tuple[int, int]) -> list[tuple[int, int]]:
        return [static_hw] * len(hw) if static_hw else list(hw)

    (h64, w64), (hodd, wodd), (hmin, wmin), (hb, wb), (hs, ws) = sizes(
        (64, 64), (67, 93), (min_size, min_size), (64, 80), (72, 72)
    )
    yy, xx = np.mgrid[0 : hs + 1, 0 : ws + 1].astype(np.float32)
    pattern = np.stack([np.sin(xx / 4), np.cos(yy / 5), np.sin((xx + yy) / 7)])[None].astype(np.float32)
    checker = np.where((yy[:hs, :ws].astype(int) + xx[:hs, :ws].astype(int)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    checker = np.broadcast_to(checker, (1, 3, hs, ws)).copy()
    smooth = np.ascontiguousarray(pattern[:, :, :hs, :ws])
    return [
        Case("random 64x64 batch 2", rand(2, h64, w64), rand(2, h64, w64)),
        Case(f"random {hodd}x{wodd} odd sizes", rand(1, hodd, wodd), rand(1, hodd, wodd)),
        Case(f"random {hmin}x{wmin} minimum size", rand(2, hmin, wmin), rand(2, hmin, wmin)),
        Case("broadcast: 1 reference vs 3", rand(1, hb, wb), rand(3, hb, wb)),
        Case("broadcast: 3 vs 1 reference", rand(3, hb, wb), rand(1, hb, wb)),
        Case("smooth vs one-pixel shift", smooth, np.ascontiguousarray(pattern[:, :, :hs, 1 : ws + 1])),
        Case("identical images", smooth, smooth.copy()),
        Case("checkerboard vs inverse", checker, -checker),
        Case("flat grey vs flat white", np.zeros_like(smooth), np.ones_like(smooth)),
    ]


def triplet_candidates(h: int, w: int, count: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One reference and ``count`` distorted versions of it (noise and blur of growing strength), for rank checks."""
    rng = np.random.default_rng(seed)
    ref = np.clip(rng.normal(0, 0.5, (1, 3, h, w)).cumsum(axis=3) / np.sqrt(w), -1, 1).astype(np.float32)
    candidates = []
    for i in range(count):
        noise = rng.normal(0, 0.02 + 0.05 * i, ref.shape)
        shifted = np.roll(ref, i % 3, axis=3)
        candidates.append(np.clip(shifted + noise, -1, 1))
    return ref, np.concatenate(candidates).astype(np.float32)


@dataclass
class CaseResult:
    name: str
    shapes: str
    max_abs: float
    max_rel: float


@dataclass
class ParityReport:
    tolerance: float
    cases: list[CaseResult] = field(default_factory=list)
    rank_agreement: float = 1.0
    real_rank_agreement: float | None = None  # pooled over the triplet sets named "real ..."; None: there were none
    mean_rel_error: float | None = None  # spatial_mean_error on the large pair; None: the graph has no layer maps

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.cases)

    @property
    def max_rel(self) -> float:
        return max(c.max_rel for c in self.cases)

    @property
    def passed(self) -> bool:
        mean_ok = self.mean_rel_error is None or self.mean_rel_error <= SPATIAL_MEAN_MAX_REL
        return self.max_abs <= self.tolerance and mean_ok

    def summary(self) -> str:
        lines = [f"  {'case':<34} {'shapes':<34} {'max abs':>9} {'max rel':>9}"]
        for c in self.cases:
            lines.append(f"  {c.name:<34} {c.shapes:<34} {c.max_abs:9.2e} {c.max_rel:9.2e}")
        if self.mean_rel_error is not None:
            h, w = MEAN_CHECK_SIZE
            lines.append(f"  {f'spatial mean, {h}x{w} pair':<34} {'vs float64 mean of its layer maps':<34} "
                         f"{'':>9} {self.mean_rel_error:9.2e}  (bound {SPATIAL_MEAN_MAX_REL:g})")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"  parity {verdict}: max abs {self.max_abs:.2e} (tolerance {self.tolerance:g}), max rel "
            f"{self.max_rel:.2e}, 2AFC rank agreement {100 * self.rank_agreement:.1f}%"
        )
        return "\n".join(lines)

    def raise_if_failed(self, what: str) -> None:
        if not self.passed:
            if self.max_abs > self.tolerance:
                why = (f"ONNX Runtime differs from the PyTorch reference by {self.max_abs:.3g} (tolerance "
                       f"{self.tolerance:g})")
            else:
                why = (f"the graph's spatial mean is {self.mean_rel_error:.3g} relative from a float64 mean of its "
                       f"layer maps (bound {SPATIAL_MEAN_MAX_REL:g})")
            raise ParityError(f"{what}: {why}; nothing was written.\n{self.summary()}")


def _session(graph: onnx.ModelProto):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


Run = Callable[[np.ndarray, np.ndarray, list[str]], list[np.ndarray]]


def reference_outputs(model: PerceptualDistance, case: Case) -> list[np.ndarray]:
    """Every output of the float32 PyTorch reference on one case."""
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(case.in0), torch.from_numpy(case.in1))]


def compare(run: Run, outputs: list[str], cases: list[Case], triplets: list[Case],
            expected: dict[str, list[np.ndarray]], tolerance: float) -> ParityReport:
    """The one parity comparison, shared by the export gate and ``stlpips-parity``: run every case, measure the
    error of every output against ``expected`` (case name -> reference outputs), and the 2AFC rank agreement of
    ``dist`` on the triplet sets (one reference against several candidates; the worst set counts)."""
    report = ParityReport(tolerance)
    agreements, real = [], []
    for case in cases + triplets:
        got = run(case.in0, case.in1, outputs)
        errors = [error_stats(e, a) for e, a in zip(expected[case.name], got, strict=True)]
        shapes = f"{list(case.in0.shape)} {list(case.in1.shape)}"
        report.cases.append(CaseResult(case.name, shapes, max(e[0] for e in errors), max(e[1] for e in errors)))
        if case in triplets:
            agreements.append(rank_agreement(expected[case.name][0], got[0]))
            if case.name.startswith("real "):
                judgments = len(case.in1) * (len(case.in1) - 1) / 2
                real.append((agreements[-1] * judgments, judgments))
    report.rank_agreement = min(agreements, default=1.0)
    if real:
        report.real_rank_agreement = sum(a for a, _ in real) / sum(n for _, n in real)
    return report


def verify_parity(
    graph: onnx.ModelProto,
    model: PerceptualDistance,
    min_size: int,
    tolerance: float,
    static_hw: tuple[int, int] | None = None,
) -> ParityReport:
    """Compare every output of ``graph`` (ONNX Runtime, CPU) with the float32 PyTorch ``model``; where the graph
    returns its layer maps, also hold its spatial mean to :data:`SPATIAL_MEAN_MAX_REL` on one large pair."""
    session = _session(graph)
    h, w = static_hw or (64, 64)
    triplets = [Case("2AFC triplets: 1 ref vs 12", *triplet_candidates(h, w))]
    cases = parity_cases(min_size, static_hw)
    expected = {c.name: reference_outputs(model, c) for c in cases + triplets}
    outputs = [o.name for o in session.get_outputs()]
    if outputs != model.output_names:
        raise ValueError(f"the graph returns {outputs} and the reference {model.output_names}: build the reference "
                         "with the graph's options (spatial, layers, layer_maps)")
    report = compare(lambda in0, in1, names: session.run(names, {"in0": in0, "in1": in1}), outputs, cases, triplets,
                     expected, tolerance)
    layer_maps = [name for name in outputs if name.startswith("layer_map")]
    if layer_maps:
        report.mean_rel_error = spatial_mean_error(session, layer_maps, *MEAN_CHECK_SIZE)
    return report


def spatial_mean_error(session, layer_maps: list[str], h: int, w: int) -> float:  # noqa: ANN001 - onnxruntime
    """Relative error of the graph's ``dist`` against the float64 mean of its own layer maps on one smooth,
    photo-like ``h x w`` pair (the graph's float32 mean is all that differs)."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / 23 + c) * np.cos(yy / 17 - c) for c in range(3)])[None]
    in0 = np.clip(base * 0.8, -1, 1).astype(np.float32)
    in1 = np.clip(in0 + rng.normal(0, 0.05, in0.shape), -1, 1).astype(np.float32)
    dist, *maps = session.run(["dist", *layer_maps], {"in0": in0, "in1": in1})
    exact = float64_distance(maps)
    return abs(float(dist[0]) - exact) / exact
