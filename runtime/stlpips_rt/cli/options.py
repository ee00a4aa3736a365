"""Option groups shared by every console script: each option has one name, one default and one help text.

A tool is a click command decorated with the groups it needs (as Polygraphy's tools share argument groups):

    @click.command()
    @model_option()
    @models_dir_option()
    @runtime_options()
    def main(model, models_dir, providers, precision, threads): ...

User errors end the tool through :func:`fail` (one line on stderr, exit 2); a bug stays a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..engine.model_files import resolve_model
from ..engine.providers import PROVIDERS
from ..io.images import ImageOptions
from ..precision import MODES, REDUCED
from ..scorer import Scorer
from ..tiling.plan import parse_memory
from ..variants import DEFAULT

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"]}
MODEL_HELP = "Short name (alex-st, vgg-lpips-spatial, ...; see --models) or path to an .onnx file."


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def model_option(default: str | None = DEFAULT, multiple: bool = False) -> Callable[[F], F]:
    """``-m/--model``: which exported model to use (repeatable where a tool takes several)."""
    return click.option("-m", "--model", "models" if multiple else "model", default=(default,) if multiple and
                        default else default, multiple=multiple, show_default=True, help=MODEL_HELP)


def models_dir_option(writing: bool = False) -> Callable[[F], F]:
    """``--models DIR``: the folder short names are looked up in first (then $STLPIPS_MODEL_DIR, then ./models);
    for the exporter, the folder it writes to."""
    if writing:
        return click.option("--out", "--models", "models_dir", type=click.Path(file_okay=False, path_type=Path),
                            default=Path("models"), show_default=True,
                            help="The models folder the .onnx files are written to: the folder the other tools "
                                 "read with --models.")
    return click.option("--models", "models_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                        default=None, help="Folder of exported models, searched before $STLPIPS_MODEL_DIR and "
                                           "./models.")


def runtime_options(providers: str = "auto", precision: bool = True) -> Callable[[F], F]:
    """``--providers``, ``--precision`` and ``--threads``: how the runtime runs a model."""
    reduced = ", ".join(f"{arith} on {p}" for p, arith in REDUCED.items())
    group = [
        click.option("--providers", default=providers, show_default=True,
                     help=f"auto{', all' if providers == 'all' else ''}, or a comma list of "
                          f"{', '.join(PROVIDERS)} (auto: a GPU where there is one, else "
                          "the CPU provider; OpenVINO only when named or for --precision fast)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads (default: one per CPU this process may use, a container's CPU quota included)."),
    ]
    if precision:
        group.insert(1, click.option("--precision", type=click.Choice(MODES), default="exact", show_default=True,
                                     help=f"exact: float32 parity with PyTorch; fast: {reduced}."))
    return _stack(*group)


def _memory(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def max_memory_option() -> Callable[[F], F]:
    """``--max-memory SIZE``: a scorer's working-memory budget; larger pairs are scored exactly, tile by tile."""
    return click.option("--max-memory", "max_memory", callback=_memory, default=None, metavar="SIZE",
                        help="Working memory for one graph run, e.g. 2G or 512M (default: a quarter of this "
                             "machine's memory). Larger pairs are scored tile by tile with the same result "
                             "(docs/tiling.md).")


def build_scorer(model: str | Path, models_dir: Path | None, providers: str, precision: str, threads: int | None,
                 batch_size: int = 16, max_memory: int | str | None = None,
                 resize: int | tuple[int, int] | None = None) -> Scorer:
    """The Scorer a tool's shared options describe: the model looked up in ``--models`` first."""
    return Scorer(resolve_model(model, [models_dir] if models_dir else []), providers, precision, threads=threads,
                  batch_size=batch_size, max_memory=max_memory, image=ImageOptions(resize=resize))


def fail(tool: str, message: str, code: int = 2) -> NoReturn:
    """End a tool on a user error: ``tool: error: message`` on stderr and exit ``code``."""
    click.echo(f"{tool}: error: {message}", err=True)
    sys.exit(code)
