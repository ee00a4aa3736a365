"""A Triton model repository for an exported file: ``python -m stlpips_rt.cli.triton MODEL DIR`` (no torch), and the
``--triton-*`` options that ``stlpips-export --triton DIR`` shares (docs/serving.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..engine.model_files import resolve_model
from ..errors import StlpipsError
from ..triton import ACCELERATORS, INSTANCE_KINDS, TritonOptions, write_repository
from .options import CONTEXT, fail

TOOL = "python -m stlpips_rt.cli.triton"
F = TypeVar("F", bound=Callable[..., Any])


def triton_options(func: F) -> F:
    """The options of a repository's config (:class:`~stlpips_rt.triton.TritonOptions`)."""
    for option in reversed([
        click.option("--triton-max-batch", type=click.IntRange(min=0), default=16, show_default=True,
                     help="Triton's max_batch_size, with dynamic batching of pairs; 0: the graph's own batch axes "
                          "(one in0 against many in1), no batching by Triton."),
        click.option("--triton-queue-delay-us", type=click.IntRange(min=0), default=5000, show_default=True,
                     help="How long dynamic batching waits for requests to join a batch."),
        click.option("--triton-instance", type=click.Choice(list(INSTANCE_KINDS)), default="cpu", show_default=True,
                     help="instance_group kind."),
        click.option("--triton-instances", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Model instances per device."),
        click.option("--triton-accelerator", type=click.Choice(ACCELERATORS), default="none", show_default=True,
                     help="tensorrt (GPU instances) or openvino (CPU instances) as onnxruntime's accelerator."),
        click.option("--triton-precision", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
                     help="With tensorrt: fast builds FP16 engines, exact FP32."),
        click.option("--triton-warmup/--no-triton-warmup", default=True, show_default=True,
                     help="A warm-up request of one zero pair when Triton loads the model."),
        click.option("--triton-name", default=None, help="The model's name in the repository [default: the file's "
                                                          "short name, e.g. alex-st]."),
    ]):
        func = option(func)
    return func


def options_from(kwargs: dict[str, Any]) -> TritonOptions:
    """TritonOptions from the values of :func:`triton_options` (popped from ``kwargs``)."""
    return TritonOptions(max_batch_size=kwargs.pop("triton_max_batch"),
                         queue_delay_us=kwargs.pop("triton_queue_delay_us"), instance=kwargs.pop("triton_instance"),
                         instances=kwargs.pop("triton_instances"), accelerator=kwargs.pop("triton_accelerator"),
                         precision=kwargs.pop("triton_precision"), warmup=kwargs.pop("triton_warmup"),
                         name=kwargs.pop("triton_name"))


@click.command(context_settings=CONTEXT)
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@triton_options
def main(model: str, out_dir: Path, **kwargs: Any) -> None:
    """Write OUT_DIR/<name>/config.pbtxt and OUT_DIR/<name>/1/model.onnx for Triton's onnxruntime backend, from
    MODEL (a path or short name): tensors, datatypes and shapes read from the file."""
    try:
        options = options_from(kwargs)
        repository = write_repository(resolve_model(model), out_dir, options)
    except (StlpipsError, ValueError) as exc:
        fail(TOOL, str(exc))
    click.echo(f"wrote {repository.config} and {repository.model}")


if __name__ == "__main__":
    main()
