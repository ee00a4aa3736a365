"""Import the released ``stlpips_pytorch`` package (the numerical truth and the benchmark peer) without the
modules it imports at top level but never uses on the ST-LPIPS path (torchvision, IPython, torchsummary).

Only used for parity checks and benchmarks; the project's own models never depend on it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_STUBBED = ("torchvision", "IPython", "torchsummary")


def _install_stubs() -> list[str]:
    added = []
    for name in _STUBBED:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            continue
        except Exception:
            pass
        stub = types.ModuleType(name)
        if name == "torchvision":
            stub.models = types.ModuleType("torchvision.models")
            sys.modules["torchvision.models"] = stub.models
            added.append("torchvision.models")
        elif name == "IPython":
            stub.embed = lambda *a, **k: None
        elif name == "torchsummary":
            stub.summary = lambda *a, **k: None
        sys.modules[name] = stub
        added.append(name)
    return added


def load_upstream(net: str, variant: str = "shift_tolerant", **kwargs: Any) -> Any:
    """Upstream's ``stlpips_pytorch.stlpips.LPIPS`` for ``net`` with its packaged weights, in eval mode.

    ``variant`` is upstream's name: ``"shift_tolerant"`` (ST-LPIPS), ``"antialiased"`` or ``"vanilla"``.
    """
    added = _install_stubs()
    try:
        stlpips = importlib.import_module("stlpips_pytorch.stlpips")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the upstream reference needs `pip install stlpips-pytorch==0.0.2` ({exc})"
        ) from None
    finally:
        # Upstream keeps its own references; the stubs must not stand in for the real packages later in this
        # process (matplotlib, for one, asks sys.modules["IPython"] for get_ipython).
        for name in added:
            sys.modules.pop(name, None)
    pretrained = variant == "shift_tolerant"
    model = stlpips.LPIPS(net=net, variant=variant, pretrained=pretrained, verbose=False, **kwargs)
    return model.eval()
