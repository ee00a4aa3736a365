"""The ONNX contract has one home (stlpips_rt.contract): names, metadata keys and what every reader checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stlpips_rt.contract import AXES, INPUTS, OUTPUTS, REQUIRED_KEYS, Key, ModelInfo, ModelSpec
from stlpips_rt.errors import ModelNotFoundError, NotAnStlpipsModelError
from stlpips_rt.variants import VARIANTS

CPP_SOURCES = Path(__file__).resolve().parents[1] / "examples" / "cpp"


def cpp_keys() -> set[str]:
    text = "".join(p.read_text() for p in CPP_SOURCES.rglob("*") if p.suffix in (".cpp", ".h"))
    return set(re.findall(r'"(stlpips\.[a-z0-9_]+)"', text))


def test_cpp_host_reads_only_contract_keys_and_all_required_ones() -> None:
    keys = cpp_keys()
    assert keys, "no stlpips.* key found in examples/cpp: did the sources move?"
    assert keys <= set(Key.all()), f"C++ reads keys the contract does not define: {keys - set(Key.all())}"
    assert set(REQUIRED_KEYS) <= keys, f"C++ does not check required keys {set(REQUIRED_KEYS) - keys}"


@pytest.mark.parametrize("spec", [
    ModelSpec("alex", "st"),
    ModelSpec("vgg", "lpips", "fp16"),
    ModelSpec("alex", "st", "int8", spatial=True, layers=True),
    ModelSpec("alex", "st", static_hw=(256, 192)),
    ModelSpec("alex", "st", fused=False),
    ModelSpec("alex", "aa", spatial=True, static_hw=(64, 64)),
    ModelSpec("vgg", "st", "fp16", spatial=True, tiles=True),
])
def test_short_names_round_trip_and_file_names_follow_them(spec: ModelSpec) -> None:
    assert ModelSpec.parse(spec.short_name) == spec
    assert spec.file_name == "stlpips_" + spec.short_name.replace("-", "_") + ".onnx"


def test_every_option_that_changes_the_graph_changes_the_file_name() -> None:
    base = ModelSpec("alex", "st")
    variants = [base, ModelSpec("alex", "st", "fp16"), ModelSpec("alex", "st", "int8"),
                ModelSpec("alex", "st", spatial=True), ModelSpec("alex", "st", layers=True),
                ModelSpec("alex", "st", static_hw=(64, 64)), ModelSpec("alex", "st", fused=False),
                ModelSpec("alex", "st", tiles=True)]
    assert len({v.file_name for v in variants}) == len(variants)
    # Fusion changes nothing for variants with no fusable layers, so their name does not say it.
    assert ModelSpec("vgg", "st", fused=False).file_name == ModelSpec("vgg", "st").file_name


def test_bad_short_names_say_what_a_short_name_is() -> None:
    with pytest.raises(ModelNotFoundError, match="known models: alex-st"):
        ModelSpec.parse("resnet-st")
    with pytest.raises(ModelNotFoundError, match="unknown part 'huge'"):
        ModelSpec.parse("alex-st-huge")


def test_axes_cover_every_input_and_output_with_separate_batch_axes() -> None:
    assert set(AXES) == {*INPUTS, *OUTPUTS}
    assert AXES["in0"][0] != AXES["in1"][0]


def meta(**overrides: str) -> dict[str, str]:
    base = {Key.FORMAT: "1", Key.NET: "alex", Key.VARIANT: "st", Key.INPUT_RANGE: "-1,1", Key.MIN_SIZE: "21",
            Key.OUTPUTS: "dist,dist_map", Key.STATIC_HW: "64x80", Key.FUSED: "none"}
    return {**base, **overrides}


def test_model_info_reads_what_the_exporter_writes() -> None:
    info = ModelInfo.from_metadata(Path("m.onnx"), meta())
    assert info.spec == ModelSpec("alex", "st", spatial=True, static_hw=(64, 80), fused=False)
    assert info.has_spatial and not info.has_layers and info.min_size == 21


@pytest.mark.parametrize(("override", "why"), [
    ({Key.FORMAT: "2"}, "reads format 1"),
    ({Key.INPUT_RANGE: "0,1"}, "expected '-1,1'"),
    ({Key.MIN_SIZE: "x"}, "is not an integer"),
    ({Key.OUTPUTS: "dist_map"}, "expected 'dist'"),
    ({Key.STATIC_HW: "64"}, "is not HxW"),
])
def test_model_info_refuses_violations_naming_them(override: dict[str, str], why: str) -> None:
    with pytest.raises(NotAnStlpipsModelError, match=why):
        ModelInfo.from_metadata(Path("m.onnx"), meta(**override))


def test_every_variant_has_an_architecture() -> None:
    from stlpips_export.architectures import ARCHITECTURES

    assert list(ARCHITECTURES) == list(VARIANTS)
