"""``stlpips-export``: build, trace, simplify, verify and write ST-LPIPS / LPIPS ONNX graphs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from stlpips_rt.cli.options import CONTEXT, fail, models_dir_option
from stlpips_rt.cli.triton import options_from, triton_options
from stlpips_rt.variants import NETS, RELEASED, VARIANT_NAMES

from .errors import ExportError
from .exporters import DEFAULT_EXPORTER, DEFAULT_OPSETS, EXPORTERS
from .onnx_export import ExportOptions, export_model

TOOL = "stlpips-export"


def _parse_hw(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 256x256, got {value!r}") from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"sizes must be positive, got {value!r}")
    return h, w


@click.command(context_settings=CONTEXT)
@click.option("--net", type=click.Choice(NETS), default="alex", show_default=True, help="Backbone.")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), default="st", show_default=True,
              help="st: ST-LPIPS; lpips: LPIPS v0.1; aa/scratch: upstream architectures for --weights.")
@click.option("--all", "export_all", is_flag=True,
              help=f"Export every variant with released weights ({', '.join(RELEASED)}).")
@models_dir_option(writing=True)
@click.option("--opset", type=click.IntRange(13, 23),
              help="ONNX opset [default: " + ", ".join(f"{v} with {k}" for k, v in DEFAULT_OPSETS.items()) + "]")
@click.option("--exporter", type=click.Choice(EXPORTERS),
              help=f"dynamo: torch.export + onnxscript; torchscript: the deprecated tracer "
                   f"[default: {DEFAULT_EXPORTER}; torchscript with --int8] (docs/export.md).")
@click.option("--fp16", is_flag=True, help="float16 backbone inside; float32 inputs and outputs.")
@click.option("--int8", is_flag=True, help="int8 backbone (post-training static quantization), written only if it "
                                           "passes its ranking gate against the float32 graph (docs/int8.md).")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="--int8: a folder of your own images, calibrated on with scikit-image's photos.")
@click.option("--calibration-only", is_flag=True, help="--int8: calibrate on --calibration alone.")
@click.option("--gate-triplets", type=click.IntRange(min=50), default=2000, show_default=True,
              help="--int8: real-photo triplets the gate scores (4 2AFC decisions each).")
@click.option("--spatial", is_flag=True, help="Add the dist_map [N,1,H,W] output.")
@click.option("--layers", is_flag=True, help="Add the dist_layers [N,L] output.")
@click.option("--tiles", is_flag=True, help="No effect since format 1.1: every dynamic export carries each layer's "
                                            "distance map for exact tiled scoring (docs/tiling.md).")
@click.option("--static", "static_hw", callback=_parse_hw, metavar="HxW", help="Fix H and W (batch stays dynamic).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--no-fuse", is_flag=True, help="Keep conv1 and its BlurPool separate (slower, same numbers).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Your own upstream-format checkpoint (.pth).")
@click.option("--tolerance", type=float, help="Override the parity tolerance (max abs) for this export.")
@click.option("--features/--no-features", default=True, show_default=True,
              help="Also write the features graph beside a float32 file ({name}_features.onnx): each image's features "
                   "once, for distance matrices (docs/matrix.md).")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton model repository there: DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx "
                   "(docs/serving.md).")
@triton_options
@click.option("-q", "--quiet", is_flag=True, help="Print only the written paths.")
def main(net: str, variant: str, export_all: bool, models_dir: Path, opset: int | None, exporter: str | None,
         fp16: bool, int8: bool, calibration: Path | None, calibration_only: bool, gate_triplets: int, spatial: bool,
         layers: bool, tiles: bool, static_hw: tuple[int, int] | None, no_simplify: bool, no_fuse: bool,
         weights: str | None, tolerance: float | None, features: bool, triton_dir: Path | None, quiet: bool,
         **triton: object) -> None:
    """Export an ST-LPIPS / LPIPS model to ONNX, proving float32 parity with PyTorch before writing it."""
    if export_all and weights:
        raise click.UsageError("--all exports the registered weights; drop --weights or --all")
    try:
        triton_options_ = options_from(triton)  # checked before the export's minutes, not after
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if export_all and triton_options_.name:
        raise click.UsageError("--triton-name names one model; drop it with --all (each gets its short name)")
    targets = [tuple(key.split("-")) for key in RELEASED] if export_all else [(net, variant)]
    failures = 0
    for target_net, target_variant in targets:
        try:
            options = ExportOptions(net=target_net, variant=target_variant, out_dir=models_dir, opset=opset,
                                    fp16=fp16, spatial=spatial, layers=layers, static_hw=static_hw,
                                    simplify=not no_simplify, fuse=not no_fuse, weights=weights, tolerance=tolerance,
                                    int8=int8, calibration=calibration, calibration_only=calibration_only,
                                    gate_triplets=gate_triplets, tiles=tiles, exporter=exporter, features=features)
            name = options.file_name
        except ExportError as exc:
            fail(TOOL, str(exc))

        def progress(message: str, name: str = name) -> None:
            if not quiet:
                click.echo(f"[{name}] {message}", err=True)

        start = time.perf_counter()
        try:
            result = export_model(options, progress)
        except ExportError as exc:  # a user-fixable problem; anything else is a bug and stays a traceback
            failures += 1
            click.echo(f"{TOOL}: error: {name}: {exc}", err=True)
            if not export_all:
                sys.exit(1)
            continue
        if quiet:
            click.echo(str(result.path))
            if result.features is not None:
                click.echo(str(result.features.path))
        else:
            click.echo(f"wrote {result.path} (min size {result.min_size}px, parity max abs "
                       f"{result.parity.max_abs:.2e}) in {time.perf_counter() - start:.1f}s")
        if triton_dir is not None:
            from stlpips_rt.triton import write_repository

            repository = write_repository(result.path, triton_dir, triton_options_)
            click.echo(str(repository.config) if quiet else f"wrote {repository.config} and {repository.model}")
    if failures:
        click.echo(f"{failures} of {len(targets)} exports failed", err=True)
        sys.exit(1)
