"""The code's shape: no import cycles, a ground floor that imports nothing above it, a runtime that never imports the
export stage, a docstring that opens every module (the rules: tests/layout_rules.py, each tried here on a small
tree that breaks it), and a Scorer whose constructor stays small while the 0.1 keywords still work (with a
warning)."""

from __future__ import annotations

import inspect
import pydoc
import re
import textwrap
import warnings
from pathlib import Path

import layout_rules as rules
import numpy as np
import pytest

from stlpips_rt import CudaOptions, ImageOptions, OpenVinoOptions, Scorer, TensorRTOptions

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"stlpips_rt": ROOT / "runtime" / "stlpips_rt", "stlpips_export": ROOT / "export" / "stlpips_export"}
#: Modules every other module may build on; they import only each other.
GROUND_FLOOR = {"stlpips_rt.errors", "stlpips_rt.contract", "stlpips_rt.variants", "stlpips_rt.precision"}


def test_every_internal_import_names_something_that_exists() -> None:
    broken = rules.broken_imports(PACKAGES)
    assert not broken, "\n".join(broken)


def test_no_import_cycles_in_runtime_or_export() -> None:
    found = rules.cycles(rules.import_graph(PACKAGES), set(PACKAGES))
    assert not found, "import cycles:\n" + "\n".join(found)


def test_ground_floor_imports_nothing_above_it() -> None:
    above = rules.floor_violations(rules.import_graph(PACKAGES), GROUND_FLOOR)
    assert not above, above


def test_the_runtime_never_imports_the_export_stage() -> None:
    found = rules.leaks(rules.import_graph(PACKAGES), "stlpips_rt", "stlpips_export")
    assert not found, found


def test_every_module_opens_with_what_it_is_for() -> None:
    missing = rules.without_docstring(PACKAGES)
    assert not missing, f"modules without a docstring: {missing}"


# --- the rules, on a small tree that breaks each of them ---------------------------------------------------------
SMALL_TREE = {
    "low/__init__.py": '"""Facade."""\nfrom .floor import A\nfrom .mid import B\n',
    "low/floor.py": '"""Floor."""\nimport up\nA = 1\n',  # a top-level import of the other package
    "low/base.py": '"""Floor too."""\nfrom low import B\n',  # the facade: above the floor
    "low/typed.py": '"""Floor, typing only."""\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n'
                    '    from .mid import B\n',
    "low/mid.py": '"""Mid."""\nfrom . import floor\nfrom .sub.deep import C\nB = 2\n',
    "low/sub/__init__.py": "",
    "low/sub/deep.py": '"""Deep."""\nC = 3\n\ndef late():\n    from ..mid import B\n    from ..mid import Z\n'
                       '    from up.tool import T\n    return B\n',
    "up/__init__.py": '"""Up."""\n',
    "up/tool.py": "T = 4\n",
}


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layout")
    for name, text in SMALL_TREE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return {"low": root / "low", "up": root / "up"}


def test_rules_see_every_kind_of_import(small_tree: dict[str, Path]) -> None:
    graph = rules.import_graph(small_tree)
    assert graph["low.floor"] == {"up"}  # ``import up``: the top-level package counts
    assert graph["low.base"] == {"low"}  # ``from low import B``: the facade
    assert graph["low.typed"] == set()  # under TYPE_CHECKING: not an import at run time
    assert graph["low.mid"] == {"low.floor", "low.sub.deep"}  # relative, a module and a name from one
    assert graph["low.sub.deep"] == {"low.mid", "up.tool"}  # inside a function, two levels up, the other package
    assert graph["low"] == {"low.floor", "low.mid"}


def test_rules_find_a_cycle_but_not_through_the_facade(small_tree: dict[str, Path]) -> None:
    graph = rules.import_graph(small_tree)
    assert rules.cycles(graph, set(small_tree)) == ["low.mid -> low.sub.deep -> low.mid"]
    assert rules.cycles({"a": {"b"}, "b": set(), "p": {"a"}}, {"p"}) == []
    assert rules.cycles({"a": {"a"}}, set()) == ["a -> a"]


def test_rules_find_a_floor_that_imports_above_it(small_tree: dict[str, Path]) -> None:
    graph = rules.import_graph(small_tree)
    assert rules.floor_violations(graph, {"low.floor", "low.base", "low.typed"}) == {
        "low.floor": ["up"], "low.base": ["low"]}
    assert rules.floor_violations(graph, {"low.typed"}) == {}


def test_rules_find_the_lower_package_importing_the_upper(small_tree: dict[str, Path]) -> None:
    graph = rules.import_graph(small_tree)
    assert rules.leaks(graph, "low", "up") == {"low.floor": ["up"], "low.sub.deep": ["up.tool"]}
    assert rules.leaks(graph, "up", "low") == {}
    assert rules.leaks({"lowx.a": {"up"}, "low.b": {"upper"}}, "low", "up") == {}  # prefixes are not packages


def test_rules_find_broken_imports_and_missing_docstrings(small_tree: dict[str, Path]) -> None:
    assert rules.broken_imports(small_tree) == ["low.sub.deep line 6: low.mid has no Z"]
    assert rules.without_docstring(small_tree) == ["up.tool"]  # an empty __init__.py needs none


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
    with pytest.raises(TypeError, match="takes CudaOptions, TensorRTOptions, OpenVinoOptions and CpuOptions"):
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
