"""``stlpips-parity MODEL``: every available execution provider and precision of the runtime against the PyTorch
reference, on random and real images at several shapes, with a pass/fail verdict per provider.

Tolerances (max abs error of any output, and 2AFC rank agreement) depend on the arithmetic that actually runs
(``Scorer.precision``):

- fp32: 1e-5 abs, 100% rank agreement (DESIGN.md "Numerical parity").
- fp16 (TensorRT fast, fp16 graphs) and tf32 (CUDA fast): 1e-2 abs, >= 98% rank agreement. Both keep a 10-bit
  mantissa. Measured here by running the reference with a float16 backbone in PyTorch on this command's parity
  cases: max abs 2.6e-4 (alex-st) and 9.6e-4 (vgg-st), rank agreement 100%; the export stage measured < 2e-3 on
  fp16 graphs. 1e-2 leaves 5-10x margin for larger images and other kernels without admitting a broken graph
  (a wrong graph is off by 1e-1 and more on distances of 0.05..0.8).
- bf16 (OpenVINO fast): 2e-2 abs, >= 98% rank agreement. bf16 keeps 7 mantissa bits, 8x coarser than fp16;
  the reference with a bfloat16 backbone in PyTorch gives max abs 5.6e-3 (alex-st) and 4.0e-3 (vgg-st), max rel
  1.3e-2, rank agreement 100%. OpenVINO accumulates in fp32 and does better (about 1e-4 reported on an AMX CPU);
  2e-2 bounds the emulated worst case with 3.5x margin.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from stlpips_rt import Scorer, StlpipsError, available_providers, read_model_info, resolve_model
from stlpips_rt.providers import resolve_providers

from .model import PerceptualDistance, build_model
from .verify import Case, CaseResult, ParityReport, error_stats, parity_cases, rank_agreement, triplet_candidates

# precision label -> (max abs tolerance, minimum 2AFC rank agreement); see the module docstring for the why.
TOLERANCES = {"fp32": (1e-5, 1.0), "tf32": (1e-2, 0.98), "fp16": (1e-2, 0.98), "bf16": (2e-2, 0.98)}
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# --- inputs --------------------------------------------------------------------------------------------------
def _to_input(u8: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 [1, 3, H, W] in [-1, 1], the runtime's normalisation."""
    return (u8.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None].copy()


def _resize(u8: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(u8).resize((w, h), Image.Resampling.BICUBIC))


def _distortions(u8: np.ndarray, seed: int) -> list[np.ndarray]:
    """Noise, blur, shifts and JPEG of growing strength: candidates whose distances a 2AFC judge must order."""
    rng = np.random.default_rng(seed)
    out = []
    for sigma in (3, 8, 16, 32):
        out.append(np.clip(u8 + rng.normal(0, sigma, u8.shape), 0, 255).astype(np.uint8))
    for shift in (1, 2, 4):
        out.append(np.roll(u8, shift, axis=1))
    for quality in (10, 40, 80):
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    small = _resize(u8, max(u8.shape[0] // 2, 1), max(u8.shape[1] // 2, 1))
    out.append(_resize(small, u8.shape[0], u8.shape[1]))  # blur by down- and up-sampling
    return out


def real_images(data_dir: Path | None) -> list[tuple[str, np.ndarray]]:
    """Natural images: the example images of ../shared/data when present, and scikit-image's sample photos when
    scikit-image is installed (the ``eval`` extra). Empty when neither is there."""
    found: list[tuple[str, np.ndarray]] = []
    if data_dir is not None and data_dir.is_dir():
        for p in sorted(data_dir.glob("*.png")):
            found.append((p.stem, np.asarray(Image.open(p).convert("RGB"))))
    try:
        from skimage import data as skdata
    except ImportError:
        return found
    for name in ("astronaut", "coffee", "chelsea"):
        found.append((name, np.ascontiguousarray(getattr(skdata, name)()[:, :, :3])))
    return found


def real_cases(images: list[tuple[str, np.ndarray]], min_size: int) -> tuple[list[Case], list[Case]]:
    """Pair cases and triplet cases (1 reference vs its distortions) from natural images at several shapes."""
    pairs, triplets = [], []
    shapes = [(64, 64), (96, 128), (max(min_size, 67), max(min_size, 93))]
    for k, (name, u8) in enumerate(images):
        h, w = shapes[k % len(shapes)]
        img = _resize(u8, h, w)
        cands = _distortions(img, seed=k)
        stack = np.concatenate([_to_input(c) for c in cands])
        ref = _to_input(img)
        pairs.append(Case(f"real {name} {h}x{w} pairs", np.repeat(ref, len(cands), axis=0), stack))
        triplets.append(Case(f"real {name} {h}x{w} 2AFC", ref, stack))
    return pairs, triplets


# --- comparison ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    provider: str
    mode: str
    precision: str
    max_abs: float
    max_rel: float
    rank_agreement: float
    tolerance: float
    min_rank_agreement: float
    passed: bool


def _reference(model: PerceptualDistance, case: Case) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(case.in0), torch.from_numpy(case.in1))]


def compare(scorer: Scorer, cases: list[Case], triplets: list[Case], expected: dict[str, list[np.ndarray]]
            ) -> ParityReport:
    """Run every case through the scorer's session and measure the error of every output."""
    tolerance, _ = TOLERANCES.get(scorer.precision, TOLERANCES["fp16"])
    report = ParityReport(tolerance)
    outputs = list(scorer.info.outputs)
    agreements = []
    for case in cases + triplets:
        got = scorer.run_arrays(case.in0, case.in1, outputs)
        errors = [error_stats(e, a) for e, a in zip(expected[case.name], got, strict=True)]
        shapes = f"{list(case.in0.shape)} {list(case.in1.shape)}"
        report.cases.append(CaseResult(case.name, shapes, max(e[0] for e in errors), max(e[1] for e in errors)))
        if case in triplets:
            agreements.append(rank_agreement(expected[case.name][0], got[0]))
    report.rank_agreement = float(min(agreements)) if agreements else 1.0
    return report


def _scorers(model_path: Path, providers: list[str], modes: list[str]) -> list[tuple[str, str, Scorer | str]]:
    """(provider, mode, Scorer or the reason it could not be built); fast modes that run like exact are skipped."""
    built: list[tuple[str, str, Scorer | str]] = []
    for provider in providers:
        labels = set()
        for mode in modes:
            try:
                scorer = Scorer(model_path, providers=provider, precision=mode)
            except StlpipsError as exc:
                built.append((provider, mode, str(exc)))
                continue
            if scorer.precision in labels:
                continue  # e.g. the CPU provider's fast mode is fp32 too
            labels.add(scorer.precision)
            built.append((provider, mode, scorer))
    return built


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--providers", default="all", show_default=True,
              help="'all' available providers, or a comma list of tensorrt, cuda, openvino, cpu.")
@click.option("--precision", "modes", type=click.Choice(["exact", "fast", "both"]), default="both",
              show_default=True)
@click.option("--weights", default=None, help="Upstream-format checkpoint the model was exported from (aa, scratch).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Folder of natural PNG images (default: {SHARED_DATA} when present).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary rows as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Print the per-case table of every provider.")
def main(model: str, providers: str, modes: str, weights: str | None, data_dir: Path | None,
         json_out: Path | None, verbose: bool) -> None:
    """Compare MODEL (path or short name) on every available provider and precision with the PyTorch reference.

    Exits 1 when any provider is outside its tolerance, 2 when the comparison cannot run."""
    try:
        path = resolve_model(model)
        info = read_model_info(path)
        chosen = available_providers() if providers == "all" else resolve_providers(providers)
    except StlpipsError as exc:
        click.echo(f"stlpips-parity: error: {exc}", err=True)
        sys.exit(2)
    reference = build_model(info.net, info.variant, weights=weights, spatial=info.has_spatial,
                            layers=info.has_layers)
    file_sha = info.metadata.get("stlpips.weights_sha256", "")
    if file_sha and reference.weights_sha256 and file_sha != reference.weights_sha256:
        click.echo(f"stlpips-parity: error: {path.name} was exported from weights {file_sha[:12]}..., the reference "
                   f"loads {reference.weights_sha256[:12]}...; pass --weights with the checkpoint it came from",
                   err=True)
        sys.exit(2)

    cases = parity_cases(info.min_size, info.static_hw)
    h, w = info.static_hw or (64, 64)
    ref, cands = triplet_candidates(h, w)
    triplets = [Case(f"synthetic {h}x{w} 2AFC", ref, cands)]
    if info.static_hw is None:
        real_pairs, real_triplets = real_cases(real_images(data_dir or SHARED_DATA), info.min_size)
        cases += real_pairs
        triplets += real_triplets
    expected = {c.name: _reference(reference, c) for c in cases + triplets}
    click.echo(f"{path.name}: {info.net}-{info.variant}, outputs {', '.join(info.outputs)}; "
               f"{len(cases)} pair cases, {len(triplets)} triplet sets "
               f"({sum(len(t.in1) for t in triplets)} candidates)")

    rows: list[Row] = []
    mode_list = ["exact", "fast"] if modes == "both" else [modes]
    for provider, mode, scorer in _scorers(path, chosen, mode_list):
        if isinstance(scorer, str):
            click.echo(f"\n{provider} {mode}: could not run: {scorer}")
            rows.append(Row(provider, mode, "-", float("nan"), float("nan"), float("nan"), 0.0, 0.0, False))
            continue
        report = compare(scorer, cases, triplets, expected)
        tolerance, min_rank = TOLERANCES.get(scorer.precision, TOLERANCES["fp16"])
        passed = report.max_abs <= tolerance and report.rank_agreement >= min_rank
        rows.append(Row(scorer.provider, mode, scorer.precision, report.max_abs, report.max_rel,
                        report.rank_agreement, tolerance, min_rank, passed))
        if verbose or not passed:
            click.echo(f"\n{scorer.provider} {mode} ({scorer.precision}):\n{report.summary()}")

    click.echo(f"\n{'provider':<10} {'mode':<6} {'runs as':<8} {'max abs':>9} {'max rel':>9} {'2AFC agree':>10} "
               f"{'tolerance':>10}  verdict")
    for r in rows:
        click.echo(f"{r.provider:<10} {r.mode:<6} {r.precision:<8} {r.max_abs:9.2e} {r.max_rel:9.2e} "
                   f"{100 * r.rank_agreement:9.1f}% {r.tolerance:10.0e}  {'PASS' if r.passed else 'FAIL'}")
    skipped = [p for p in ("tensorrt", "cuda", "openvino", "cpu") if p not in chosen]
    if skipped and providers == "all":
        click.echo(f"not available here: {', '.join(skipped)}")
    if json_out is not None:
        json_out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if not all(r.passed for r in rows):
        sys.exit(1)
