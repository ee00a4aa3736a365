"""Model resolution and the metadata contract: short names, search folders, refusal of non-stlpips files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from stlpips_rt import ModelNotFoundError, NotAnStlpipsModelError, Scorer, read_model_info, resolve_model
from stlpips_rt.engine import winograd
from stlpips_rt.engine.model_files import file_name_for, read_metadata

GOOD_META = {
    "stlpips.format": "1",
    "stlpips.net": "alex",
    "stlpips.variant": "st",
    "stlpips.input_range": "-1,1",
    "stlpips.min_size": "8",
    "stlpips.outputs": "dist",
}


def tiny_graph(path: Path, meta: dict[str, str], output: str = "dist") -> Path:
    """A valid ONNX file with the contract's signature: mean squared difference as 'distance'."""
    shape = ["N", 3, "H", "W"]
    nodes = [
        helper.make_node("Sub", ["in0", "in1"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], [output], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("in0", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("in1", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, path)
    return path


def test_short_names_map_to_file_names() -> None:
    assert file_name_for("alex-st") == "stlpips_alex_st.onnx"
    assert file_name_for("vgg-lpips-fp16") == "stlpips_vgg_lpips_fp16.onnx"
    assert file_name_for("alex-st-spatial-layers") == "stlpips_alex_st_spatial_layers.onnx"


def test_short_name_is_found_in_env_folder_then_in_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, cwd = tmp_path / "env", tmp_path / "work"
    (cwd / "models").mkdir(parents=True)
    env_dir.mkdir()
    in_models = tiny_graph(cwd / "models" / "stlpips_alex_st.onnx", GOOD_META)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("STLPIPS_MODEL_DIR", raising=False)
    assert resolve_model("alex-st").resolve() == in_models.resolve()
    in_env = tiny_graph(env_dir / "stlpips_alex_st.onnx", GOOD_META)
    monkeypatch.setenv("STLPIPS_MODEL_DIR", str(env_dir))
    assert resolve_model("alex-st") == in_env


def test_missing_model_says_where_it_looked_and_how_to_export(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STLPIPS_MODEL_DIR", str(tmp_path / "none"))
    with pytest.raises(ModelNotFoundError, match=r"stlpips_vgg_lpips\.onnx not found in .*stlpips-export"):
        resolve_model("vgg-lpips")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(tmp_path / "x.onnx")
    with pytest.raises(ModelNotFoundError, match="short name like"):
        resolve_model("Alex ST")


def test_valid_metadata_is_read(tmp_path: Path) -> None:
    meta = dict(GOOD_META, **{"stlpips.num_layers": "5", "stlpips.static_hw": "64x64"})
    info = read_model_info(tiny_graph(tmp_path / "m.onnx", meta))
    assert (info.net, info.variant, info.min_size, info.outputs) == ("alex", "st", 8, ("dist",))
    assert info.num_layers == 5 and info.static_hw == (64, 64) and not info.has_spatial


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stlpips.format": None}, "no stlpips.format"),
        ({"stlpips.format": "2"}, "reads format 1"),
        ({"stlpips.input_range": "0,1"}, "input_range"),
        ({"stlpips.min_size": "big"}, "min_size"),
        ({"stlpips.outputs": "score"}, "stlpips.outputs"),
        ({"stlpips.outputs": "dist,dist_map"}, "does not have"),
        ({"stlpips.net": None}, "stlpips.net is missing"),
    ],
)
def test_files_breaking_the_contract_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    meta = {k: v for k, v in {**GOOD_META, **change}.items() if v is not None}
    path = tiny_graph(tmp_path / "m.onnx", meta)
    with pytest.raises(NotAnStlpipsModelError, match=message):
        Scorer(path, providers="cpu")


def test_plain_onnx_without_metadata_and_non_onnx_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotAnStlpipsModelError, match="not a usable stlpips model"):
        read_model_info(tiny_graph(tmp_path / "plain.onnx", {}))
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(NotAnStlpipsModelError, match="cannot load it"):
        read_model_info(tmp_path / "junk.onnx")
    with pytest.raises(NotAnStlpipsModelError):
        Scorer(tmp_path / "junk.onnx", providers="cpu")


def test_metadata_is_read_from_the_protobuf_as_onnxruntime_reads_it(tmp_path: Path, exported_model) -> None:
    """read_metadata skips the graph by its length (the check winograd.declared makes on every load); it must find
    what onnxruntime finds, in a tiny file and in a real export whose weights come before the metadata."""
    import onnxruntime as ort

    tiny = tiny_graph(tmp_path / "m.onnx", dict(GOOD_META, **{"note": "é, ü and 漢字", "empty": ""}))
    for path in (tiny, exported_model("alex", "st")):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        expected = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).get_modelmeta()
        assert read_metadata(path) == dict(expected.custom_metadata_map)
    data = tiny.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[:len(data) - 5])
    (tmp_path / "junk.onnx").write_bytes(b"\x0f\xff\xff")
    for bad in ("cut.onnx", "junk.onnx"):
        with pytest.raises(ValueError):
            read_metadata(tmp_path / bad)
        assert not winograd.declared(tmp_path / bad)  # the session that follows says what is wrong


def test_static_model_refuses_other_sizes(tmp_path: Path) -> None:
    scorer = Scorer(tiny_graph(tmp_path / "s.onnx", dict(GOOD_META, **{"stlpips.static_hw": "16x16"})), "cpu")
    a = np.zeros((16, 16, 3), np.uint8)
    assert scorer.score(a, a) == 0.0
    with pytest.raises(Exception, match="exported for 16x16 only"):
        scorer.score(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 3), np.uint8))
