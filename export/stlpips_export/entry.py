"""Console-script entry points of the export package. Each checks that the extra it needs is installed before
importing anything heavy, so that a runtime-only install (``pip install stlpips-deploy``) answers with one line
naming the extra instead of a traceback."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

# tool -> (module with its click command, modules it cannot run without, the extra that installs them)
TOOLS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "stlpips-export": ("stlpips_export.cli", ("torch", "onnx", "onnxsim"), "export"),
    "stlpips-parity": ("stlpips_export.parity", ("torch",), "export"),
    "stlpips-eval": ("stlpips_export.evaluate.cli", ("torch", "skimage"), "export,eval"),
    "stlpips-bench": ("stlpips_export.bench.cli", ("torch",), "export"),
    "stlpips-bench-gpu": ("stlpips_export.bench.gpu", ("torch", "stlpips_pytorch"), "export,gpu"),
}


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ImportError:  # a finder that refuses the name
            return True

    return [m for m in modules if absent(m)]


def _launcher(tool: str) -> Callable[[], None]:
    module, needs, extra = TOOLS[tool]

    def launch() -> None:
        missing = missing_modules(needs)
        if missing:
            print(f"{tool}: error: needs {', '.join(missing)}, which this install lacks; install the extra with "
                  f"`pip install 'stlpips-deploy[{extra}]'` (and torch==2.13.0 for the CPU build)", file=sys.stderr)
            sys.exit(2)
        importlib.import_module(module).main()

    return launch


#: ``stlpips-bench serve``: the service's load client (stlpips_export.bench.serve) needs ray, not torch.
BENCH_SERVE = ("stlpips_export.bench.serve", ("ray", "fastapi"), "ray")

export = _launcher("stlpips-export")
parity = _launcher("stlpips-parity")
evaluate = _launcher("stlpips-eval")
bench_gpu = _launcher("stlpips-bench-gpu")


def bench() -> None:
    """``stlpips-bench ...`` as ever; ``stlpips-bench serve ...`` dispatches to the service's load client."""
    if sys.argv[1:2] != ["serve"]:
        _launcher("stlpips-bench")()
        return
    module, needs, extra = BENCH_SERVE
    missing = missing_modules(needs)
    if missing:
        print(f"stlpips-bench serve: error: needs {', '.join(missing)}, which this install lacks; install the extra "
              f"with `pip install 'stlpips-deploy[{extra}]'`", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(module).main(args=sys.argv[2:], prog_name="stlpips-bench serve")
