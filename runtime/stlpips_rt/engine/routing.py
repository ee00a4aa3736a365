"""Where "fast" runs: the file (the model's gated int8 sibling, or the file as given) and the providers a Scorer
builds its session on, chosen by :func:`stlpips_rt.precision.fast_path` among the providers usable here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ProviderError
from ..precision import GPU_PROVIDERS, MODES, fast_path
from .model_files import precision_sibling
from .providers import available_providers, resolve_providers


def route(model_path: Path, providers: str | Sequence[str], mode: str) -> tuple[Path, list[str]]:
    """The file and providers a Scorer uses for ``mode``: "exact" keeps the file and resolves ``providers``; "fast"
    takes :func:`fast_path` among the usable providers (all of them for "auto") and the model's int8 sibling when
    that path says so."""
    if mode not in MODES:
        raise ProviderError(f"precision must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "exact":
        return model_path, resolve_providers(providers)
    auto = providers == "auto" or (not isinstance(providers, str) and list(providers) == ["auto"])
    candidates = available_providers() if auto else resolve_providers(providers)
    sibling = precision_sibling(model_path, "int8")
    path = fast_path(candidates, sibling is not None)
    if path.provider in GPU_PROVIDERS:  # the GPU chain and its fp16 / TF32 choice: engine/session.py
        return model_path, resolve_providers(providers)
    chosen = [path.provider] + ([] if auto else [p for p in candidates if p != path.provider])
    return (sibling if path.file_precision == "int8" and sibling is not None else model_path), chosen
