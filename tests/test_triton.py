"""Triton model repositories (stlpips_rt.triton, stlpips-export --triton): every generated config.pbtxt parses as
Triton's own ModelConfig protobuf (tritonclient.grpc.model_config_pb2 with google.protobuf.text_format) and matches
its .onnx file's inputs and outputs, read here with the onnx package (not with the reader under test). Triton
itself does not run here (docs/serving.md says what was and was not exercised)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from stlpips_rt.contract import INPUTS
from stlpips_rt.triton import TritonOptions, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient is not installed: bash scripts/setup.sh")
text_format = pytest.importorskip("google.protobuf.text_format")
onnx = pytest.importorskip("onnx")

OPTIONS = {
    "cpu, batched (default)": TritonOptions(),
    "cpu, graph batch axes": TritonOptions(max_batch_size=0),
    "cpu, openvino": TritonOptions(accelerator="openvino", instances=2),
    "gpu, tensorrt fp16": TritonOptions(instance="gpu", accelerator="tensorrt", precision="fast", max_batch_size=8),
    "gpu, tensorrt fp32, no warm-up": TritonOptions(instance="gpu", accelerator="tensorrt", warmup=False),
}
TRITON_TYPE = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32, onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16}


@pytest.fixture(scope="module", params=["plain", "spatial+layers"])
def model(request, exported_model) -> Path:
    if request.param == "plain":
        return exported_model("alex", "st")
    return exported_model("alex", "st", spatial=True, layers=True)


def parse(config: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def graph_tensors(path: Path) -> tuple[dict, dict, list[str]]:
    """(inputs, outputs as name -> (elem type, dims with -1 for dynamic axes), the public outputs) from the file."""
    proto = onnx.load(str(path), load_external_data=False)

    def dims(value_info) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]

    inputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in proto.graph.input}
    outputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in proto.graph.output}
    meta = {p.key: p.value for p in proto.metadata_props}
    return inputs, outputs, [o.strip() for o in meta["stlpips.outputs"].split(",")]


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_every_config_parses_as_triton_model_config_and_matches_its_onnx_file(model: Path, tmp_path: Path,
                                                                               case: str) -> None:
    options = OPTIONS[case]
    repository = write_repository(model, tmp_path, options)
    assert repository.model == repository.model_dir / "1" / "model.onnx"
    assert hashlib.sha256(repository.model.read_bytes()).digest() == hashlib.sha256(model.read_bytes()).digest()
    config = parse(repository.config)
    inputs, outputs, public = graph_tensors(model)
    batched = options.max_batch_size > 0

    assert config.name == repository.name == repository.model_dir.name
    assert config.backend == "onnxruntime" and config.max_batch_size == options.max_batch_size
    assert [i.name for i in config.input] == list(INPUTS) == [n for n in inputs]
    for tensor in config.input:
        elem, dims = inputs[tensor.name]
        assert tensor.data_type == TRITON_TYPE[elem]
        assert list(tensor.dims) == (dims[1:] if batched else dims), tensor.name
        assert dims[0] == -1  # the graph's batch axes are dynamic, as Triton's batching needs
    # the public outputs (stlpips.outputs), not the per-layer maps the tiler reads
    assert [o.name for o in config.output] == public and set(public) <= set(outputs)
    for tensor in config.output:
        elem, dims = outputs[tensor.name]
        assert tensor.data_type == TRITON_TYPE[elem]
        if batched and len(dims) == 1:  # [N] per pair: dims [1] reshaped to a scalar, as Triton documents
            assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == []
        else:
            assert list(tensor.dims) == (dims[1:] if batched else dims) and not tensor.HasField("reshape")
    assert config.HasField("dynamic_batching") == batched
    if batched:
        assert config.dynamic_batching.max_queue_delay_microseconds == options.queue_delay_us
    [group] = config.instance_group
    assert group.count == options.instances
    assert group.kind == (model_config_pb2.ModelInstanceGroup.KIND_GPU if options.instance == "gpu"
                          else model_config_pb2.ModelInstanceGroup.KIND_CPU)

    accelerators = config.optimization.execution_accelerators
    if options.accelerator == "tensorrt":
        [trt] = accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and not accelerators.cpu_execution_accelerator
        assert trt.parameters["precision_mode"] == ("FP16" if options.precision == "fast" else "FP32")
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            shapes = dict(part.split(":") for part in trt.parameters[key].split(","))
            assert set(shapes) == set(INPUTS)
            for name, shape in shapes.items():  # each profile shape fits the graph's own dims
                assert all(g in (-1, int(s)) for g, s in zip(inputs[name][1], shape.split("x"), strict=True))
    elif options.accelerator == "openvino":
        assert [a.name for a in accelerators.cpu_execution_accelerator] == ["openvino"]
        assert not accelerators.gpu_execution_accelerator
    else:
        assert not config.HasField("optimization")

    if options.warmup:
        [warmup] = config.model_warmup
        assert warmup.batch_size == 1 and set(warmup.inputs) == set(INPUTS)
        for name, value in warmup.inputs.items():
            declared = next(t for t in config.input if t.name == name)
            assert value.data_type == declared.data_type and value.zero_data
            assert len(value.dims) == len(declared.dims)
            sizes = list(value.dims) if batched else list(value.dims[1:])  # less the graph's batch axis
            assert batched or value.dims[0] == 1
            assert all(d == w or (d == -1 and w >= 21) for d, w in zip(declared.dims[-3:], sizes, strict=True))
    else:
        assert not config.model_warmup


def test_a_static_graph_keeps_its_size(exported_model, tmp_path: Path) -> None:
    """A --static file (the one test_export.py exports): fixed H and W in the dims, the warm-up and the TensorRT
    profile."""
    model = exported_model("alex", "st", static_hw=(64, 64))
    options = TritonOptions(instance="gpu", accelerator="tensorrt")
    config = parse(write_repository(model, tmp_path, options).config)
    assert [list(t.dims) for t in config.input] == [[3, 64, 64], [3, 64, 64]]
    assert list(config.model_warmup[0].inputs["in0"].dims) == [3, 64, 64]
    trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.parameters["trt_profile_max_shapes"] == "in0:16x3x64x64,in1:16x3x64x64"


def test_options_that_cannot_run_are_refused() -> None:
    with pytest.raises(ValueError, match="GPU instances"):
        TritonOptions(accelerator="tensorrt")
    with pytest.raises(ValueError, match="CPU instances"):
        TritonOptions(instance="gpu", accelerator="openvino")
    with pytest.raises(ValueError, match="instance must be"):
        TritonOptions(instance="tpu")


def test_the_torch_free_command_writes_a_repository(exported_model, tmp_path: Path) -> None:
    from stlpips_rt.cli.triton import main

    model = exported_model("alex", "st")
    result = CliRunner().invoke(main, [str(model), str(tmp_path), "--triton-max-batch", "4", "--triton-name", "lp"])
    assert result.exit_code == 0, result.output
    config = parse(tmp_path / "lp" / "config.pbtxt")
    assert (config.name, config.max_batch_size) == ("lp", 4)
    result = CliRunner().invoke(main, [str(model), str(tmp_path), "--triton-accelerator", "tensorrt"])
    assert result.exit_code == 2 and "GPU instances" in result.stderr


def test_export_writes_the_repository_after_the_file(exported_model, tmp_path: Path, monkeypatch) -> None:
    """stlpips-export --triton: the export (stood in for by an exported file: the real export is tested in
    test_export.py), then the repository from the written file."""
    from stlpips_export import cli

    model = exported_model("alex", "st")
    result_of_export = SimpleNamespace(path=model, features=None, min_size=21, parity=SimpleNamespace(max_abs=0.0))
    monkeypatch.setattr(cli, "export_model", lambda options, progress=None: result_of_export)
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli.main, ["--out", str(tmp_path), "--triton", str(out), "--triton-instance", "gpu",
                                           "--triton-accelerator", "tensorrt", "--triton-precision", "fast", "-q"])
    assert result.exit_code == 0, result.output
    config = parse(out / "alex-st" / "config.pbtxt")
    trt = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.parameters["precision_mode"] == "FP16"
    assert str(out / "alex-st" / "config.pbtxt") in result.output.splitlines()
    # options that cannot run are refused before the export's minutes
    monkeypatch.setattr(cli, "export_model", lambda *a, **k: pytest.fail("exported despite bad --triton options"))
    result = CliRunner().invoke(cli.main, ["--out", str(tmp_path), "--triton", str(out),
                                           "--triton-accelerator", "tensorrt"])
    assert result.exit_code == 2 and "GPU instances" in result.output


def test_options_dataclass_names_every_cli_option() -> None:
    from stlpips_rt.cli.triton import options_from

    values = {"triton_max_batch": 3, "triton_queue_delay_us": 7, "triton_instance": "gpu", "triton_instances": 2,
              "triton_accelerator": "tensorrt", "triton_precision": "fast", "triton_warmup": False,
              "triton_name": "x"}
    options = options_from(dict(values))
    assert dataclasses.asdict(options) == {**dataclasses.asdict(TritonOptions()), "max_batch_size": 3,
                                           "queue_delay_us": 7, "instance": "gpu", "instances": 2,
                                           "accelerator": "tensorrt", "precision": "fast", "warmup": False,
                                           "name": "x"}
