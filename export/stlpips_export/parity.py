"""``stlpips-parity MODEL``: every available execution provider and precision of the runtime against the PyTorch
reference, on random and real images at several shapes, with a pass/fail verdict per provider.

Each provider and precision passes when it is within the tolerance of the arithmetic it actually runs
(``Scorer.precision``); the tolerances and why they are what they are: :mod:`stlpips_rt.precision`.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from stlpips_rt import CudaOptions, Scorer, StlpipsError, available_providers, read_model_info, resolve_model
from stlpips_rt.cli.options import CONTEXT, fail, model_option, models_dir_option, runtime_options
from stlpips_rt.engine.providers import resolve_providers
from stlpips_rt.engine.session import fp16_sibling
from stlpips_rt.errors import ProviderFallbackWarning
from stlpips_rt.io.images import to_model_input
from stlpips_rt.precision import tolerance

from . import verify
from .model import build_model
from .verify import Case, ParityReport, parity_cases, triplet_candidates


# --- inputs --------------------------------------------------------------------------------------------------
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
    """Natural images: the PNGs of ``data_dir`` (your own photos, optional), and scikit-image's sample photos when
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
        stack = np.concatenate([to_model_input(c) for c in cands])
        ref = to_model_input(img)
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
    real_2afc: float = float("nan")  # pooled over the real-photo triplets; NaN where there were none
    min_real_2afc: float = float("nan")


def compare_scorer(scorer: Scorer, cases: list[Case], triplets: list[Case],
                   expected: dict[str, list[np.ndarray]]) -> ParityReport:
    """Run every case through the scorer's session against the reference outputs, at its precision's tolerance."""
    return verify.compare(scorer.run_arrays, list(scorer.info.outputs), cases, triplets, expected,
                          tolerance(scorer.precision).max_abs)


def _variants(model_path: Path, provider: str, mode: str) -> list[dict[str, Any]]:
    """Scorer keyword sets for one provider and mode: CUDA's fast mode is checked both ways it can run (the fp16
    export beside the model, when there is one, and TF32)."""
    if provider == "cuda" and mode == "fast":
        choices = ("fp16", "tf32") if fp16_sibling(model_path) else ("tf32",)
        return [{"provider_options": [CudaOptions(fast=choice)]} for choice in choices]
    return [{}]


def _scorers(model_path: Path, providers: list[str], modes: list[str], threads: int | None
             ) -> list[tuple[str, str, Scorer | str]]:
    """(provider, mode, Scorer or the reason it could not be built); fast modes that run like exact are skipped,
    and so is a provider that fell back to another one checked anyway (TensorRT without its libraries)."""
    built: list[tuple[str, str, Scorer | str]] = []
    for provider in providers:
        labels = set()
        for mode in modes:
            for kwargs in _variants(model_path, provider, mode):
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", ProviderFallbackWarning)
                        scorer = Scorer(model_path, providers=provider, precision=mode, threads=threads, **kwargs)
                except StlpipsError as exc:
                    built.append((provider, mode, str(exc)))
                    continue
                if scorer.provider != provider and scorer.provider in providers:
                    why = "; ".join(str(w.message) for w in caught)
                    click.echo(f"{provider} {mode}: runs on {scorer.provider} here, checked there ({why})")
                    continue
                if scorer.precision in labels:
                    continue  # e.g. the CPU provider's fast mode is fp32 too
                labels.add(scorer.precision)
                built.append((provider, mode, scorer))
    return built


TOOL = "stlpips-parity"


@click.command(context_settings=CONTEXT)
@model_option()
@models_dir_option()
@runtime_options(providers="all", precision=False)
@click.option("--precision", "modes", type=click.Choice(["exact", "fast", "both"]), default="both",
              show_default=True, help="Which precision modes to compare (fast: each provider's reduced precision).")
@click.option("--weights", default=None, help="Upstream-format checkpoint the model was exported from (aa, scratch).")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of your own natural PNG images, added to scikit-image's sample photos.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary rows as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Print the per-case table of every provider.")
def main(model: str, models_dir: Path | None, providers: str, threads: int | None, modes: str, weights: str | None,
         data_dir: Path | None, json_out: Path | None, verbose: bool) -> None:
    """Compare the model on every available provider and precision with the PyTorch reference.

    Exits 1 when any provider is outside its tolerance, 2 when the comparison cannot run."""
    try:
        path = resolve_model(model, [models_dir] if models_dir else [])
        info = read_model_info(path)
        chosen = available_providers() if providers == "all" else resolve_providers(providers)
    except StlpipsError as exc:
        fail(TOOL, str(exc))
    reference = build_model(info.net, info.variant, weights=weights, spatial=info.has_spatial,
                            layers=info.has_layers)
    file_sha = info.metadata.get("stlpips.weights_sha256", "")
    if file_sha and reference.weights_sha256 and file_sha != reference.weights_sha256:
        fail(TOOL, f"{path.name} was exported from weights {file_sha[:12]}..., the reference loads "
                   f"{reference.weights_sha256[:12]}...; pass --weights with the checkpoint it came from")

    cases = parity_cases(info.min_size, info.static_hw)
    h, w = info.static_hw or (64, 64)
    ref, cands = triplet_candidates(h, w)
    triplets = [Case(f"synthetic {h}x{w} 2AFC", ref, cands)]
    if info.static_hw is None:
        real_pairs, real_triplets = real_cases(real_images(data_dir), info.min_size)
        cases += real_pairs
        triplets += real_triplets
    expected = {c.name: verify.reference_outputs(reference, c) for c in cases + triplets}
    click.echo(f"{path.name}: {info.net}-{info.variant}, outputs {', '.join(info.outputs)}; "
               f"{len(cases)} pair cases, {len(triplets)} triplet sets "
               f"({sum(len(t.in1) for t in triplets)} candidates)")

    rows: list[Row] = []
    mode_list = ["exact", "fast"] if modes == "both" else [modes]
    for provider, mode, scorer in _scorers(path, chosen, mode_list, threads):
        if isinstance(scorer, str):
            click.echo(f"\n{provider} {mode}: could not run: {scorer}")
            rows.append(Row(provider, mode, "-", float("nan"), float("nan"), float("nan"), 0.0, 0.0, False))
            continue
        report = compare_scorer(scorer, cases, triplets, expected)
        bound = tolerance(scorer.precision)
        real, min_real = report.real_rank_agreement, bound.min_real_rank_agreement
        passed = (report.max_abs <= bound.max_abs and report.rank_agreement >= bound.min_rank_agreement
                  and (real is None or min_real is None or real >= min_real))
        rows.append(Row(scorer.provider, mode, scorer.precision, report.max_abs, report.max_rel,
                        report.rank_agreement, bound.max_abs, bound.min_rank_agreement, passed,
                        float("nan") if real is None else real, float("nan") if min_real is None else min_real))
        if verbose or not passed:
            click.echo(f"\n{scorer.provider} {mode} ({scorer.precision}):\n{report.summary()}")

    click.echo(f"\n{'provider':<10} {'mode':<6} {'runs as':<8} {'max abs':>9} {'max rel':>9} {'2AFC agree':>10} "
               f"{'real 2AFC':>10} {'tolerance':>10}  verdict")
    for r in rows:
        click.echo(f"{r.provider:<10} {r.mode:<6} {r.precision:<8} {r.max_abs:9.2e} {r.max_rel:9.2e} "
                   f"{100 * r.rank_agreement:9.1f}% {100 * r.real_2afc:9.1f}% {r.tolerance:10.0e}  "
                   f"{'PASS' if r.passed else 'FAIL'}")
    skipped = [p for p in ("tensorrt", "cuda", "openvino", "cpu") if p not in chosen]
    if skipped and providers == "all":
        click.echo(f"not available here: {', '.join(skipped)}")
    if json_out is not None:
        json_out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if not all(r.passed for r in rows):
        sys.exit(1)
