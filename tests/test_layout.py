"""The code's shape: no import cycles, a ground floor that imports nothing above it, a docstring that opens every
module, and a Scorer whose constructor stays small while the 0.1 keywords still work (with a warning)."""

from __future__ import annotations

import ast
import inspect
import pydoc
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from stlpips_rt import CudaOptions, ImageOptions, OpenVinoOptions, Scorer, TensorRTOptions

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"stlpips_rt": ROOT / "runtime" / "stlpips_rt", "stlpips_export": ROOT / "export" / "stlpips_export"}
#: Modules every other module may build on; they import only each other.
GROUND_FLOOR = {"stlpips_rt.errors", "stlpips_rt.contract", "stlpips_rt.variants", "stlpips_rt.precision"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _source(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` in ``package`` reads from."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ours that ``name`` imports anywhere (functions too), but not under ``if TYPE_CHECKING:``; the
    top-level packages' own ``__init__`` (the public facade) is not counted as a target."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = _source(node, package)
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in modules else source)
    return {t for t in targets if t in modules and t not in PACKAGES and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _internal_from_imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """(source module, imported name, line) of every ``from ours import x`` in ``name``, functions included."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            source = _source(node, package)
            if source.split(".")[0] in PACKAGES:
                found += [(source, alias.name, node.lineno) for alias in node.names]
    return found


def test_every_internal_import_names_something_that_exists() -> None:
    """Imports inside functions run only when called: a module moved under them fails late, so check them all."""
    modules = _modules()
    broken = []
    for name, path in modules.items():
        for source, imported, line in _internal_from_imports(name, path):
            if f"{source}.{imported}" in modules:
                continue
            if source not in modules:
                broken.append(f"{path.name}:{line}: no module {source}")
                continue
            tree = ast.parse(modules[source].read_text())
            defined = {n.name for n in ast.walk(tree)
                       if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
            defined |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            defined |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree)
                        if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
            if imported not in defined:
                broken.append(f"{name} line {line}: {source} has no {imported}")
    assert not broken, "\n".join(broken)


def test_no_import_cycles_in_runtime_or_export() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node}->{nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_ground_floor_imports_nothing_above_it() -> None:
    graph = _graph()
    above = {name: sorted(graph[name] - GROUND_FLOOR) for name in GROUND_FLOOR}
    assert all(not targets for targets in above.values()), above


def test_the_runtime_never_imports_the_export_stage() -> None:
    graph = _graph()
    leaks = {name: sorted(t for t in targets if t.startswith("stlpips_export"))
             for name, targets in graph.items() if name.startswith("stlpips_rt")}
    assert not any(leaks.values()), leaks


def test_every_module_opens_with_what_it_is_for() -> None:
    missing = [name for name, path in _modules().items()
               if not ast.get_docstring(ast.parse(path.read_text())) and path.stat().st_size > 0]
    assert not missing, f"modules without a docstring: {missing}"


def test_scorer_constructor_stays_small() -> None:
    params = [p.name for p in inspect.signature(Scorer.__init__).parameters.values()
              if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(params) <= 8, params


def test_scorer_signature_names_its_options() -> None:
    # What help(Scorer), IDEs and API-doc generators read: the class's own signature, not (*args, **kwargs).
    params = inspect.signature(Scorer).parameters
    assert list(params)[:3] == ["model", "providers", "precision"], list(params)
    for name in ("threads", "batch_size", "max_memory", "image", "provider_options"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "model" in (Scorer.__doc__ or "") and "provider_options" in pydoc.render_doc(Scorer)


def test_unknown_scorer_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'resise'"):
        Scorer("alex-st", resise=64)


def test_old_keywords_still_work_and_say_what_replaced_them(exported_model) -> None:
    model = exported_model("alex", "st")
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(2))
    new = Scorer(model, "cpu", image=ImageOptions(resize=(32, 48)),
                 provider_options=[CudaOptions(device_id=1), OpenVinoOptions("gpu")])
    with pytest.warns(DeprecationWarning) as caught:
        old = Scorer(model, providers="cpu", resize=(32, 48), device_id=1, openvino_device="gpu",
                     models_dir=model.parent, tensorrt=TensorRTOptions(workspace_bytes=1 << 20))
    message = str(caught[0].message)
    for hint in ("resize= -> ImageOptions(resize=...)", "device_id= -> CudaOptions(device_id=...)",
                 "openvino_device= -> OpenVinoOptions(device=...)", "tensorrt= -> provider_options",
                 "models_dir= -> Scorer(stlpips_rt.resolve_model"):
        assert hint in message, message
    assert old.image_options == new.image_options and old.config.cuda == new.config.cuda
    assert old.config.openvino.device == "GPU" and old.config.tensorrt.workspace_bytes == 1 << 20
    assert old.score(a, b) == new.score(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        Scorer(model, "cpu")


def test_provider_options_take_one_object_per_provider(exported_model) -> None:
    model = exported_model("alex", "st")
    with pytest.raises(TypeError, match="two CudaOptions"):
        Scorer(model, "cpu", provider_options=[CudaOptions(), CudaOptions(device_id=1)])
    with pytest.raises(TypeError, match="takes CudaOptions, TensorRTOptions and OpenVinoOptions"):
        Scorer(model, "cpu", provider_options=[ImageOptions()])


def test_product_and_docs_name_no_tracker_issue() -> None:
    # A user has no access to the project's tracker: say what was measured, where and with which command instead.
    pattern = re.compile(r"\b[Ii]ssues? #?\d+|\bissue #\d+")
    roots = [ROOT / "export", ROOT / "runtime", ROOT / "examples", ROOT / "docs"]
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md"] + [
        f for root in roots for f in root.rglob("*")
        if f.suffix in (".py", ".md", ".js", ".mjs", ".html", ".cpp", ".h", ".txt") and "node_modules" not in f.parts
        and "build" not in f.parts]
    found = [f"{f.relative_to(ROOT)}:{n}" for f in files
             for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not found, found
