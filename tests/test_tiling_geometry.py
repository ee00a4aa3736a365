"""The layer geometry the exporter writes for the tiler, held against the network itself: perturbing one input
column changes a feature position exactly when the column lies in that position's receptive field."""

from __future__ import annotations

import pytest
import torch

from stlpips_export.architectures import ARCHITECTURES, Backbone
from stlpips_export.geometry import layer_windows
from stlpips_export.onnx_export import read_metadata
from stlpips_rt.contract import ModelSpec
from stlpips_rt.tiling import read_geometry


def random_backbone(key: str) -> Backbone:
    """The variant's layers with random weights: geometry does not depend on the weights, and random ones leave
    no tap at zero."""
    torch.manual_seed(0)
    net = Backbone(ARCHITECTURES[key]).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.1)
            torch.nn.init.normal_(module.bias, std=0.1)
    return net


@pytest.mark.parametrize("key", ["alex-st", "alex-lpips", "vgg-st", "vgg-lpips", "alex-aa"])
def test_position_counts_follow_the_composed_size_rule(key: str) -> None:
    net, windows = random_backbone(key), layer_windows(ARCHITECTURES[key])
    with torch.no_grad():
        for n in (63, 64, 71, 90, 101):
            features = net(torch.zeros(1, 3, 64, n))
            assert [f.shape[-1] for f in features] == [w.positions(n) for w in windows], n


@pytest.mark.parametrize("key", ["alex-st", "alex-lpips", "vgg-st", "vgg-lpips"])
def test_receptive_fields_match_single_column_perturbations(key: str) -> None:
    """For a position ``o`` of each layer: the first and last column of its field change it, the columns just
    outside do not (each compared with an unperturbed copy in the same batch, so kernels see equal batches)."""
    net, windows = random_backbone(key), layer_windows(ARCHITECTURES[key])
    deepest = windows[-1]
    width = deepest.field + 2 * deepest.stride + 8
    x = torch.randn(1, 3, 40, width)
    with torch.no_grad():
        for layer, window in enumerate(windows):
            o = (width // 2) // window.stride
            first, last = window.first_pixel(o), window.end_pixel(o) - 1
            columns = [first - 1, first, last, last + 1]
            batch = x.repeat(len(columns) + 1, 1, 1, 1)
            for i, column in enumerate(columns):
                batch[i, :, :, column] += 5.0
            feature = net(batch)[layer][..., o]
            changed = [bool((feature[i] != feature[-1]).any()) for i in range(len(columns))]
            assert changed == [False, True, True, False], (layer, window, columns, changed)


def test_height_has_the_same_geometry_as_width() -> None:
    """Rows: the transposed version of the column check, on alex-st (every layer pads alike along both axes)."""
    net, windows = random_backbone("alex-st"), layer_windows(ARCHITECTURES["alex-st"])
    height = windows[-1].field + 80
    x = torch.randn(1, 3, height, 40)
    with torch.no_grad():
        window = windows[-1]
        o = (height // 2) // window.stride
        rows = [window.first_pixel(o) - 1, window.first_pixel(o), window.end_pixel(o) - 1, window.end_pixel(o)]
        batch = x.repeat(len(rows) + 1, 1, 1, 1)
        for i, row in enumerate(rows):
            batch[i, :, row, :] -= 5.0
        feature = net(batch)[-1][:, :, o, :]
        assert [bool((feature[i] != feature[-1]).any()) for i in range(4)] == [False, True, True, False]


def test_exported_files_carry_the_geometry_and_a_measured_memory_model(exported_model) -> None:
    meta = read_metadata(exported_model("alex", "st"))
    geometry = read_geometry(meta)
    assert geometry is not None
    assert geometry.windows == layer_windows(ARCHITECTURES["alex-st"])
    assert geometry.layer_maps == tuple(f"layer_map{i}" for i in range(5))
    # Measured, not assumed: a pair of feature maps at stride 2 alone is 2 x 64 x 4 / 4 = 128 bytes per pixel.
    assert geometry.bytes_per_pixel is not None and 128 < geometry.bytes_per_pixel < 8192
    assert meta["stlpips.outputs"] == "dist"  # layer maps are declared apart: older readers see the same outputs


def test_tiles_is_kept_for_old_scripts_and_changes_nothing() -> None:
    """``--tiles`` (0.1) still parses; every dynamic export carries the layer maps, under the default name."""
    from stlpips_export.errors import InvalidOptionError
    from stlpips_export.onnx_export import ExportOptions

    for tiles in (False, True):
        options = ExportOptions(net="alex", variant="st", tiles=tiles)
        assert (options.file_name, options.layer_maps) == ("stlpips_alex_st.onnx", True)
    assert not ExportOptions(net="alex", variant="st", static_hw=(64, 64)).layer_maps
    with pytest.raises(InvalidOptionError, match="dynamic"):
        _ = ExportOptions(net="alex", variant="st", static_hw=(64, 64), tiles=True).spec


def test_format_1_0_tiles_files_keep_their_own_name() -> None:
    spec = ModelSpec("alex", "st", tiles=True)
    assert (spec.short_name, spec.file_name) == ("alex-st-tiles", "stlpips_alex_st_tiles.onnx")
    assert ModelSpec.parse("vgg-lpips-fp16-tiles") == ModelSpec("vgg", "lpips", "fp16", tiles=True)
    with pytest.raises(ValueError, match="dynamic"):
        ModelSpec("alex", "st", static_hw=(64, 64), tiles=True)
