"""Exact tiled scoring: plans that cover every feature position once with enough halo, and tiled results equal to
the full frame (budgets forced tiny so that small images really are tiled)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from legacy_files import format_1_0_copy

from stlpips_export.architectures import ARCHITECTURES
from stlpips_export.geometry import layer_windows
from stlpips_rt import MemoryBudgetError, ModelError, Scorer, read_model_info
from stlpips_rt.cli.score import main as score_cli
from stlpips_rt.errors import InferenceError
from stlpips_rt.precision import float64_distance
from stlpips_rt.tiling import ModelGeometry, parse_memory, plan_tiles, split_axis
from stlpips_rt.tiling.plan import planned_bytes_per_pixel
from stlpips_rt.tiling.run import assemble_layers

TOLERANCE = 1e-6  # relative: tiled vs full frame differ only in the order of floating-point sums


def image_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with texture and a noisy, locally shifted copy: structure at every scale the layers see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 9 + c) * np.cos(yy / 13 - c) for c in range(3)], axis=-1) * 90 + 128
    a = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    b = np.clip(np.roll(base, 2, axis=1) + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return a, b


def relative(got: np.ndarray | float, want: np.ndarray | float) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def exact_full_frame(scorer: Scorer, a: np.ndarray, b: np.ndarray) -> float:
    """The full frame's distance from its own per-layer maps, averaged in float64: the graph's float32 means
    carry their own rounding (a few 1e-7 at these sizes, over 1e-6 beyond about a megapixel)."""
    names = list(scorer.info.layer_maps)
    maps = scorer.run_arrays(scorer.load(a)[None], scorer.load(b)[None], names)
    return float64_distance(maps)


def budget_for(scorer: Scorer, pixels: int) -> int:
    """A budget that fits one pair of ``pixels`` pixels through this scorer's tiles graph."""
    return planned_bytes_per_pixel(scorer.geometry.bytes_per_pixel) * pixels


# --- plans (no model) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["alex-st", "alex-lpips", "vgg-st"])
def test_axis_splits_cover_every_position_once_with_full_fields(key: str) -> None:
    windows = layer_windows(ARCHITECTURES[key])
    align = max(w.stride for w in windows)
    for n in (120, 233, 256, 301, 517):
        for parts in range(1, 7):
            spans = split_axis(n, parts, windows, 21)
            if spans is None:
                continue
            for layer, w in enumerate(windows):
                ranges = [s.layers[layer] for s in spans]
                assert ranges[0][0] == 0 and ranges[-1][1] == w.positions(n)
                assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # disjoint, in order
            for s in spans:
                assert s.start % align == 0 and s.length >= min(21, n)
                for w, (lo, hi) in zip(windows, s.layers, strict=True):
                    if hi > lo:  # the tile holds every pixel of its core's fields, or reaches the image border
                        assert s.start == 0 or s.start <= w.first_pixel(lo)
                        assert s.stop == n or w.end_pixel(hi - 1) <= s.stop


def test_plans_respect_the_budget_and_prefer_the_full_frame() -> None:
    geometry = ModelGeometry(layer_windows(ARCHITECTURES["alex-st"]), bytes_per_pixel=1000)
    rate = planned_bytes_per_pixel(1000)  # the measured rate, with room for the CPU arena's steps
    assert 1000 < rate < 2000
    whole = plan_tiles(300, 200, geometry, budget=rate * 300 * 200 * 3, min_size=21, batch_size=16)
    assert not whole.tiled and whole.pairs_per_run == 3 and "full frame" in str(whole)
    assert whole.bytes_per_pixel == rate and whole.bytes_per_run == rate * 300 * 200 * 3
    assert plan_tiles(300, 200, geometry, budget=1000 * 300 * 200 * 3, min_size=21, batch_size=16).pairs_per_run == 2
    for pixels in (120 * 120, 150 * 170, 200 * 210):
        plan = plan_tiles(300, 200, geometry, budget=rate * pixels, min_size=21)
        assert plan.tiled and plan.bytes_per_run <= plan.budget
        assert f"{len(plan.tiles)} tiles" in str(plan) and plan.overhead > 0
    with pytest.raises(MemoryBudgetError, match="raise max_memory"):
        plan_tiles(300, 200, geometry, budget=rate * 50 * 50, min_size=21)
    unknown = plan_tiles(300, 200, dataclasses.replace(geometry, bytes_per_pixel=None), budget=1, min_size=21)
    assert not unknown.tiled and "re-export" in str(unknown)


@pytest.mark.parametrize("text, expected", [("1G", 2**30), ("1.5GiB", 3 * 2**29), ("512M", 2**29),
                                            ("800MB", 800 * 2**20), ("4096", 4096), (2048, 2048)])
def test_memory_sizes_parse(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1G", "0", "1Q"])
def test_bad_memory_sizes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_memory(bad)


# --- exactness through ONNX Runtime --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alex_st(exported_model) -> Path:
    """The default export: since format 1.1 it carries the per-layer maps tiling reads."""
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def full_frame(alex_st: Path) -> Scorer:
    return Scorer(alex_st, providers="cpu", max_memory="64G")


def tiny(path: Path, pixels: int, **options: object) -> Scorer:
    """A scorer whose budget fits one pair of ``pixels`` pixels: anything larger is tiled."""
    probe = Scorer(path, providers="cpu")
    return Scorer(path, providers="cpu", max_memory=budget_for(probe, pixels), **options)


@pytest.mark.parametrize("h, w, tile_pixels", [
    (157, 203, 130 * 140),   # odd sizes
    (97, 331, 110 * 150),    # non-square, one row of tiles
    (190, 190, 190 * 189),   # one pixel over a single full frame
    (261, 245, 120 * 125),   # a grid with interior tiles on both axes
])
def test_tiled_scores_equal_the_full_frame(alex_st: Path, full_frame: Scorer, h: int, w: int,
                                           tile_pixels: int) -> None:
    a, b = image_pair(h, w)
    scorer = tiny(alex_st, tile_pixels)
    plan = scorer.plan(h, w)
    assert plan.tiled, str(plan)
    got = scorer.score(a, b)
    assert relative(got, full_frame.score(a, b)) <= TOLERANCE
    assert relative(got, exact_full_frame(full_frame, a, b)) <= TOLERANCE / 10


def test_batches_broadcast_and_mixed_sizes_tile_too(alex_st: Path, full_frame: Scorer) -> None:
    pairs = [image_pair(150, 170, seed) for seed in range(3)] + [image_pair(60, 70, 9)]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    scorer = tiny(alex_st, 125 * 130)
    assert scorer.plan(150, 170).tiled and not scorer.plan(60, 70).tiled
    assert relative(scorer.score_batch(a, b), full_frame.score_batch(a, b)) <= TOLERANCE
    ref, candidates = pairs[0][0], [p[1] for p in pairs[:3]]
    assert relative(scorer.score_many(ref, candidates), full_frame.score_many(ref, candidates)) <= TOLERANCE


def test_a_halo_one_pixel_short_or_a_shifted_origin_breaks_exactness(alex_st: Path) -> None:
    """Every feature of every layer equals the full frame's (compared position by position: a mean hides a
    change at the edge of a field, where the taps are small), and the halo is as small as it can be: tiles one
    pixel shorter on the far side, or starting one stride later, change some feature."""
    h, w = 200, 230
    a, b = image_pair(h, w, 4)
    scorer = tiny(alex_st, 125 * 130)
    plan = scorer.plan(h, w)
    session, geometry = scorer._tiles()
    x0, x1 = scorer.load(a), scorer.load(b)
    names = list(geometry.layer_maps)
    want = [m[0, 0] for m in scorer.run_arrays(x0[None], x1[None], names)]

    def error(tiles: tuple) -> float:
        run = dataclasses.replace(plan, tiles=tiles)
        try:
            _, maps = assemble_layers(lambda i0, i1, out: scorer._infer(i0, i1, out, session), run,
                                      geometry.windows, names, [x0], [x1], keep_maps=True)
        except InferenceError:  # the tile could not even produce its core
            return float("inf")
        return max(relative(got, ref) for got, ref in zip(maps[0], want, strict=True))

    def change_x(edit) -> tuple:  # noqa: ANN001
        return tuple(dataclasses.replace(t, x=edit(t.x)) for t in plan.tiles)

    assert any(t.x.stop < w for t in plan.tiles) and any(t.x.start > 0 for t in plan.tiles), str(plan)
    assert error(plan.tiles) <= TOLERANCE
    short = change_x(lambda s: dataclasses.replace(s, stop=s.stop - 1) if s.stop < w else s)
    assert error(short) > 5 * TOLERANCE
    later = change_x(lambda s: dataclasses.replace(s, start=s.start + geometry.align) if s.start > 0 else s)
    assert error(later) > 5 * TOLERANCE


def test_spatial_maps_and_layers_tile_with_their_own_file_alone(exported_model, tmp_path: Path) -> None:
    """A spatial + layers export alone in its folder scores large pairs tile by tile; the per-layer maps are
    reassembled and upsampled as the graph does."""
    rich = Path(shutil.copy(exported_model("alex", "st", spatial=True, layers=True), tmp_path))
    h, w = 143, 211
    a, b = image_pair(h, w, 2)
    whole = Scorer(rich, providers="cpu", max_memory="64G")
    scorer = Scorer(rich, providers="cpu", max_memory=tiny(rich, 120 * 130, batch_size=4).max_memory)
    assert scorer.plan(h, w).tiled
    assert relative(scorer.spatial(a, b), whole.spatial(a, b)) <= TOLERANCE
    assert relative(scorer.layers(a, b), whole.layers(a, b)) <= TOLERANCE
    assert relative(scorer.score(a, b), exact_full_frame(whole, a, b)) <= TOLERANCE / 10


def test_format_1_0_files_tile_through_a_tiles_file_beside_them(exported_model, alex_st: Path,
                                                                 tmp_path: Path) -> None:
    """Files exported by 0.1 keep working: a plain spatial file without layer maps tiles through the ``-tiles``
    file beside it, as before."""
    old = format_1_0_copy(exported_model("alex", "st", spatial=True), tmp_path / "stlpips_alex_st_spatial.onnx")
    tiles = format_1_0_copy(alex_st, tmp_path / "stlpips_alex_st_tiles.onnx", keep_layer_maps=True)
    # A file's spec names it: a 0.1 tiles file by its -tiles name, a 1.1 file with the same outputs by the plain one.
    assert read_model_info(tiles).spec.file_name == tiles.name
    assert read_model_info(alex_st).spec.file_name == "stlpips_alex_st.onnx"
    h, w = 143, 211
    a, b = image_pair(h, w, 4)
    whole = Scorer(old, providers="cpu", max_memory="64G")
    assert whole.info.predates_built_in_tiling and not whole.info.layer_maps
    scorer = Scorer(old, providers="cpu", max_memory=tiny(alex_st, 120 * 130).max_memory)
    assert scorer.plan(h, w).tiled
    assert relative(scorer.spatial(a, b), whole.spatial(a, b)) <= TOLERANCE


def test_an_old_file_without_maps_says_to_re_export(alex_st: Path, tmp_path: Path) -> None:
    plain = format_1_0_copy(alex_st, tmp_path / alex_st.name)
    scorer = Scorer(plain, providers="cpu", max_memory="12M")
    a, b = image_pair(200, 200)
    assert "cannot run" in str(scorer.plan(200, 200))
    with pytest.raises(ModelError, match="exported before every export carried them.*stlpips-export --net alex"):
        scorer.score(a, b)
    with pytest.raises(MemoryBudgetError, match="200x200"):
        Scorer(plain, providers="cpu", max_memory="1M").score(a, b)


def test_score_cli_takes_max_memory(alex_st: Path, tmp_path: Path) -> None:
    from PIL import Image

    a, b = image_pair(180, 150, 3)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    args = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-m", str(alex_st), "--providers", "cpu"]
    whole = CliRunner().invoke(score_cli, args)
    tiled = CliRunner().invoke(score_cli, [*args, "--max-memory", "14M"])
    assert whole.exit_code == 0 and tiled.exit_code == 0, whole.output + tiled.output
    assert abs(float(tiled.output) - float(whole.output)) <= 2e-7
    bad = CliRunner().invoke(score_cli, [*args, "--max-memory", "lots"])
    assert bad.exit_code == 2 and "memory size" in bad.output


@pytest.mark.parametrize("net, variant, h, w, tile_pixels", [
    ("alex", "lpips", 171, 229, 180 * 180),
    ("vgg", "st", 301, 263, 280 * 280),  # the widest field (226 px): vgg once, on the variant with blur padding
])
def test_other_variants_tile_exactly(exported_model, net: str, variant: str, h: int, w: int,
                                     tile_pixels: int) -> None:
    path = exported_model(net, variant)
    a, b = image_pair(h, w, 5)
    scorer = tiny(path, tile_pixels)
    assert scorer.plan(h, w).tiled
    whole = Scorer(path, providers="cpu", max_memory="64G")
    got = scorer.score(a, b)
    assert relative(got, whole.score(a, b)) <= TOLERANCE
    assert relative(got, exact_full_frame(whole, a, b)) <= TOLERANCE / 10


def test_score_cli_scores_the_other_pairs_when_one_is_over_the_budget(exported_model, tmp_path: Path) -> None:
    """A pair that cannot run even tiled within --max-memory becomes an error row; its chunk's other pairs are
    still scored."""
    import csv

    from PIL import Image

    sizes = {"small0": (48, 48), "huge": (400, 400), "small1": (56, 40)}
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ref", "dist"])
        for name, (h, w) in sizes.items():
            a, b = image_pair(h, w, len(name))
            Image.fromarray(a).save(tmp_path / f"{name}_a.png")
            Image.fromarray(b).save(tmp_path / f"{name}_b.png")
            writer.writerow([f"{name}_a.png", f"{name}_b.png"])
    out = tmp_path / "rows.csv"
    done = CliRunner().invoke(score_cli, ["--pairs", str(tmp_path / "pairs.csv"), "-m",
                                          str(exported_model("alex", "st")), "--providers", "cpu",
                                          "--max-memory", "4M", "-o", str(out), "-q"])
    with open(out) as f:
        rows = {Path(r["ref"]).name: r for r in csv.DictReader(f)}
    assert done.exit_code == 1
    assert rows["small0_a.png"]["status"] == "ok" and rows["small1_a.png"]["status"] == "ok"
    assert rows["huge_a.png"]["status"] == "error" and "max_memory" in rows["huge_a.png"]["error"]
