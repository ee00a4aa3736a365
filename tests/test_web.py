"""The browser host (examples/web): the same .onnx files scored by onnxruntime-web in headless Chromium, held
against the Python runtime on the same uint8 pixels.

One browser for the module (tests/web_harness.py); pages are reloaded only where a test needs another URL. Skips
with the reason where Chromium, Node.js or examples/web/node_modules are missing (scripts/setup_web.sh installs
them; scripts/test.sh runs it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from example_pairs import authors_published_distance
from PIL import Image
from web_harness import WEB_ROOT, Browser, StaticServer, missing_requirement, open_page, rgba_b64

from stlpips_rt import Scorer
from stlpips_rt.io.images import to_model_input, uint8_to_unit

WHY_NOT = missing_requirement()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"browser tests: {WHY_NOT}")

TOL = 1e-5
SHAPES = [(64, 64), (67, 93), (128, 96)]  # (H, W)


class Web:
    """The served folder, the browser and the models (by file name under /data/)."""

    def __init__(self, browser: Browser, server: StaticServer, data: Path, models: dict[str, Path]) -> None:
        self.browser, self.server, self.data, self.models = browser, server, data, models
        self.page: str | None = None

    def ensure_page(self, url: str) -> None:
        if self.page != url:
            open_page(self.browser, url)
            self.page = url

    def module_page(self) -> None:
        self.ensure_page(self.server.url + "index.html")

    def eval(self, body: str):  # noqa: ANN201 - JSON from the page
        return self.browser.eval(body)

    def scorer_js(self, key: str, **options: object) -> str:
        """JS expression: the page's cached scorer of models[key] (loaded on first use)."""
        name = self.models[key].name
        return (f"(window.__scorers ??= {{}})[{json.dumps(name)}] ??= "
                f"await stlpips.loadScorer('/data/{name}', {json.dumps(options)})")

    def score(self, key: str, a: np.ndarray, b: np.ndarray, kind: str = "imageData") -> float:
        (ha, wa, _), (hb, wb, _) = a.shape, b.shape
        return self.eval(f"const s = {self.scorer_js(key)};"
                         f"return await s.score(__t.{kind}('{rgba_b64(a)}', {wa}, {ha}), "
                         f"__t.{kind}('{rgba_b64(b)}', {wb}, {hb}));")

    def error(self, call: str, key: str = "alex-st") -> dict:
        """The {name, message} of what ``call`` (JS statements, with ``s`` the scorer) throws; fails if it throws
        nothing."""
        err = self.eval(f"const s = {self.scorer_js(key)}; return await __t.error((async () => {{ {call}; }})());")
        assert err is not None, f"no error from {call}"
        return err


@pytest.fixture(scope="module")
def web(exported_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("webdata")
    models = {"alex-st": exported_model("alex", "st"), "vgg-st": exported_model("vgg", "st"),
              "alex-st-spatial": exported_model("alex", "st", spatial=True, layers=True)}
    for path in models.values():
        (data / path.name).symlink_to(path)
    server = StaticServer(data)
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield Web(browser, server, data, models)
    finally:
        browser.close()
        server.close()


@pytest.fixture(scope="module")
def python_scorers(web):
    return {key: Scorer(str(path), providers="cpu", threads=1) for key, path in web.models.items()}


def random_pair(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # b: a with noise added, and new content in its left third: a clear distance, not that of unrelated images
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    b[:, : w // 3] = rng.integers(0, 256, (h, w // 3, 3), dtype=np.uint8)
    return a, b


# --- conversion and metadata ---------------------------------------------------------------------------------
def test_uint8_conversion_is_the_runtimes_bit_for_bit(web):
    web.module_page()
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], (values * 7).astype(np.uint8)], axis=1).reshape(16, 16, 3)
    got = web.eval(f"const d = __t.imageData('{rgba_b64(rgb)}', 16, 16);"
                   "return Array.from(stlpips.toModelInput(d.data, 16, 16));")
    expected = to_model_input(rgb)[0]  # [3, H, W]
    got = np.asarray(got, dtype=np.float64).astype(np.float32).reshape(3, 16, 16)
    assert got.tobytes() == expected.tobytes()  # layout (NCHW, RGB order, alpha dropped) and every bit
    assert np.array_equal(got[0].ravel(), uint8_to_unit(values))


def test_metadata_is_read_from_the_file(web, python_scorers):
    web.module_page()
    for key in ("alex-st", "alex-st-spatial"):
        info = web.eval(f"const s = {web.scorer_js(key)}; return s.info;")
        py = python_scorers[key].info
        assert info["metadata"] == py.metadata
        assert (info["net"], info["variant"], info["minSize"], info["precision"]) == \
               (py.net, py.variant, py.min_size, py.precision)
        assert tuple(info["outputs"]) == py.outputs
        assert info["hasSpatial"] == py.has_spatial
        assert info["bytesPerPixel"] == float(py.metadata["stlpips.bytes_per_pixel"])


# --- distances against the Python runtime --------------------------------------------------------------------
def test_authors_example_pair(web, shared_data, python_scorers):
    web.module_page()
    for name in ("ex_ref.png", "ex_p0.png"):
        target = web.data / name
        if not target.exists():
            shutil.copyfile(shared_data / name, target)
    got = web.eval(f"const s = {web.scorer_js('alex-st')};"
                   "const img = [await __t.img('/data/ex_ref.png'), await __t.img('/data/ex_p0.png')];"
                   "const bmp = [await __t.bitmap('/data/ex_ref.png'), await __t.bitmap('/data/ex_p0.png')];"
                   "return {img: await s.score(...img), bitmap: await s.score(...bmp)};")
    python = python_scorers["alex-st"].score(shared_data / "ex_ref.png", shared_data / "ex_p0.png")
    for kind in ("img", "bitmap"):  # another engine than the authors' and ours: within float32's tolerance
        assert got[kind] == pytest.approx(authors_published_distance(), abs=TOL), kind
        assert got[kind] == pytest.approx(python, abs=TOL), kind


def _png_with_gamma(rgb: np.ndarray, path: Path, gamma: float) -> None:
    """Write a PNG with a gAMA chunk (file gamma ``gamma``): a colour-managed decoder changes its pixels, PIL and
    the Python runtime do not."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = buf.getvalue()
    body = b"gAMA" + struct.pack(">I", round(gamma * 100000))
    chunk = struct.pack(">I", 4) + body + struct.pack(">I", zlib.crc32(body))
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    path.write_bytes(data[:end_of_ihdr] + chunk + data[end_of_ihdr:])


def test_images_are_read_without_colour_management(web, python_scorers):
    """A PNG whose gAMA chunk a colour-managed decoder would apply: <img>, ImageBitmap and the page's file decoding
    must give the stored pixels, as PIL does, so the distance to the same pixels without the chunk is 0."""
    web.module_page()
    a, _ = random_pair(21, 64, 80)
    Image.fromarray(a).save(web.data / "plain.png")
    _png_with_gamma(a, web.data / "gamma.png", 1.0)
    assert python_scorers["alex-st"].score(web.data / "plain.png", web.data / "gamma.png") == 0.0
    got = web.eval(f"const s = {web.scorer_js('alex-st')};"
                   "return {img: await s.score(await __t.img('/data/plain.png'), await __t.img('/data/gamma.png')),"
                   "  bitmap: await s.score(await __t.bitmap('/data/plain.png'), await __t.bitmap('/data/gamma.png')),"
                   "  managed: await (async () => { const b = await createImageBitmap(await (await fetch("
                   "    '/data/gamma.png')).blob()); const c = new OffscreenCanvas(b.width, b.height).getContext('2d');"
                   "    c.drawImage(b, 0, 0); return Array.from(c.getImageData(0, 0, 4, 1).data); })()};")
    assert got["img"] == 0.0 and got["bitmap"] == 0.0
    # the check could fail: this browser does apply the chunk when asked to manage colour
    assert got["managed"][:3] != a[0, 0].tolist()


@pytest.mark.parametrize("key", ["alex-st", "vgg-st"])
def test_random_shapes_match_python(web, python_scorers, key):
    web.module_page()
    scorer = python_scorers[key]
    for i, (h, w) in enumerate(SHAPES):
        a, b = random_pair(i, h, w)
        expected = scorer.score(a, b)
        got = web.score(key, a, b)
        assert got == pytest.approx(expected, abs=TOL), (key, h, w)
        assert got > 0.01  # a real distance, not a degenerate zero
    # the same pixels through a canvas element (drawn and read back: exact for opaque pixels)
    a, b = random_pair(9, 67, 93)
    assert web.score(key, a, b, kind="canvas") == pytest.approx(scorer.score(a, b), abs=TOL)


def test_spatial_map_matches_python(web, python_scorers):
    web.module_page()
    a, b = random_pair(5, 67, 93)
    got = web.eval(f"const s = {web.scorer_js('alex-st-spatial')};"
                   f"const a = __t.imageData('{rgba_b64(a)}', 93, 67), b = __t.imageData('{rgba_b64(b)}', 93, 67);"
                   "const m = await s.spatialMap(a, b); const r = await s.scoreWithMap(a, b);"
                   "return {w: m.width, h: m.height, data: Array.from(m.data), score: await s.score(a, b),"
                   "        both: r.distance, bothMap: Array.from(r.map.data)};")
    expected = python_scorers["alex-st-spatial"].spatial(a, b)
    assert (got["h"], got["w"]) == expected.shape == (67, 93)
    heat = np.asarray(got["data"], dtype=np.float32).reshape(67, 93)
    np.testing.assert_allclose(heat, expected, rtol=0, atol=TOL)
    assert heat.max() > 0.05
    assert got["score"] == pytest.approx(python_scorers["alex-st-spatial"].score(a, b), abs=TOL)
    assert got["both"] == got["score"]
    np.testing.assert_array_equal(np.asarray(got["bothMap"], dtype=np.float32).reshape(67, 93), heat)


# --- refusals ------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_what_to_do(web):
    web.module_page()
    img = "__t.imageData(btoa('\\xff'.repeat(4 * {w} * {h})), {w}, {h})"

    def pair(h0: int, w0: int, h1: int, w1: int) -> str:
        return f"{img.format(w=w0, h=h0)}, {img.format(w=w1, h=h1)}"

    err = web.error(f"await s.score({pair(64, 64, 64, 65)})")
    assert err["name"] == "ImageSizeError"
    assert "sizes differ (64×64 vs 65×64, W×H)" in err["message"] and "crop or resize" in err["message"]

    min_size = web.eval(f"const s = {web.scorer_js('alex-st')}; return s.info.minSize;")
    small = min_size - 1
    err = web.error(f"await s.score({pair(small, 40, small, 40)})")
    assert err["name"] == "ImageSizeError"
    assert err["message"].startswith(f"a: 40×{small} pixels (W×H) is below this model's minimum of "
                                     f"{min_size}×{min_size}")

    err = web.error("await s.score('ref.png', 'dist.png')")
    assert err["name"] == "ImageValueError" and "unsupported input type" in err["message"]

    err = web.error(f"await s.spatialMap({pair(64, 64, 64, 64)})")
    assert err["name"] == "ModelError" and "--spatial" in err["message"]


def test_files_that_are_not_stlpips_models_are_refused(web):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    web.module_page()
    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, "H", "W"]) for n in ("in0", "in1")]
    y = helper.make_tensor_value_info("dist", TensorProto.FLOAT, [1, 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Sub", ["in0", "in1"], ["dist"])], "plain", x, [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), web.data / "plain.onnx")
    (web.data / "notes.onnx").write_text("this is not a model\n")
    stripped = onnx.load(web.models["alex-st"])
    for prop in stripped.metadata_props:
        if prop.key == "stlpips.format":
            prop.value = "7"
    onnx.save(stripped, web.data / "format7.onnx")

    def refusal(name: str) -> dict:
        return web.eval(f"return await __t.error(stlpips.loadScorer('/data/{name}'));")

    err = refusal("plain.onnx")
    assert err["name"] == "NotAnStlpipsModelError"
    assert "no stlpips.format in its metadata_props" in err["message"] and "stlpips-export" in err["message"]
    err = refusal("notes.onnx")
    assert err["name"] == "NotAnStlpipsModelError" and "stlpips-export" in err["message"]
    err = refusal("format7.onnx")
    assert err["name"] == "NotAnStlpipsModelError" and "format 1" in err["message"]
    err = refusal("missing.onnx")
    assert err["name"] == "ModelError" and "404" in err["message"]


def test_large_pair_gets_a_clear_error_and_the_page_lives_on(web, python_scorers):
    web.module_page()
    err = web.error("const big = () => new ImageData(4000, 3000); await s.score(big(), big())")
    assert err["name"] == "ImageTooLargeError"
    message = err["message"]
    assert message.startswith("a vs b: 4000×3000 pixels (W×H) need about") and "stlpips.bytes_per_pixel" in message
    assert "budget of 1.50 GiB" in message and "Downscale or crop" in message
    limit = web.eval(f"const s = {web.scorer_js('alex-st')}; return s.maxPixels;")
    bpp = float(python_scorers["alex-st"].info.metadata["stlpips.bytes_per_pixel"])
    assert limit == int(1.5 * 2**30 // bpp)
    a, b = random_pair(0, 64, 64)  # the same scorer still works afterwards
    assert web.score("alex-st", a, b) == pytest.approx(python_scorers["alex-st"].score(a, b), abs=TOL)


# --- the page ------------------------------------------------------------------------------------------------
def _pick(which: str, name: str) -> str:
    """JS: put /data/NAME into the page's file input for image `which` and fire its change event."""
    return (f"{{ const blob = await (await fetch('/data/{name}')).blob();"
            f"  const dt = new DataTransfer(); dt.items.add(new File([blob], '{name}', {{type: 'image/png'}}));"
            f"  const input = document.getElementById('file-{which}'); input.files = dt.files;"
            "  input.dispatchEvent(new Event('change')); }")


def _run_page(web, a_name: str, b_name: str) -> dict:
    """Pick two images in the page; wait for the run that scored this pair (the page scores on every change)."""
    web.eval(f"await window.stlpipsApp.ready; {_pick('a', a_name)} {_pick('b', b_name)} return true;")
    names = json.dumps([a_name, b_name], separators=(",", ":"))  # as JSON.stringify writes it
    return web.eval(f"const done = () => JSON.stringify(window.stlpipsApp.last?.names) === '{names}';"
                    "for (let i = 0; i < 2400 && !done(); i++) await new Promise((r) => setTimeout(r, 50));"
                    "if (!done()) throw new Error('the page never scored the pair');"
                    "const $ = (id) => document.getElementById(id);"
                    "return {last: window.stlpipsApp.last, distance: $('distance').textContent,"
                    "  backend: $('backend-used').textContent, time: $('time').textContent,"
                    "  heat: [$('heat').width, $('heat').height, getComputedStyle($('heat')).display],"
                    "  error: $('error').textContent, errorShown: getComputedStyle($('error')).display};")


def test_page_scores_picked_images_with_a_heat_map(web, python_scorers, tmp_path):
    a, b = random_pair(11, 96, 128)
    Image.fromarray(a).save(web.data / "page_a.png")
    Image.fromarray(b).save(web.data / "page_b.png")
    model = web.models["alex-st-spatial"].name
    web.ensure_page(f"{web.server.url}index.html?model=/data/{model}")
    shown = _run_page(web, "page_a.png", "page_b.png")
    expected = python_scorers["alex-st-spatial"].score(a, b)
    assert shown["errorShown"] == "none", shown["error"]
    assert shown["last"]["distance"] == pytest.approx(expected, abs=TOL)
    assert shown["distance"] == f"{shown['last']['distance']:.6f}"
    assert shown["backend"] == "WASM" and shown["time"].endswith(" ms")
    assert shown["heat"] == [128, 96, "block"]
    shot = tmp_path / "page.png"
    web.browser.screenshot(shot)
    assert Image.open(shot).size[0] == 1200

    # A 4000x3000 pair through the page: an error on the page, not a crashed tab; then a small pair again.
    Image.new("RGB", (4000, 3000), (120, 130, 140)).save(web.data / "big_a.png")
    Image.new("RGB", (4000, 3000), (121, 130, 140)).save(web.data / "big_b.png")
    shown = _run_page(web, "big_a.png", "big_b.png")
    assert shown["errorShown"] == "block"
    assert shown["error"].startswith("ImageTooLargeError: a vs b: 4000×3000 pixels (W×H) need about")
    shown = _run_page(web, "page_a.png", "page_b.png")
    assert shown["errorShown"] == "none"
    assert shown["last"]["distance"] == pytest.approx(expected, abs=TOL)

    # A model picked from disk (the page's file input), without dist_map: the distance, and no heat map.
    plain = web.models["alex-st"].name
    web.eval(f"const blob = await (await fetch('/data/{plain}')).blob();"
             f"const dt = new DataTransfer(); dt.items.add(new File([blob], '{plain}'));"
             "const input = document.getElementById('model-file'); input.files = dt.files;"
             "window.stlpipsApp.last = null; input.dispatchEvent(new Event('change')); return true;")
    shown = _run_page(web, "page_a.png", "page_b.png")
    assert shown["last"]["distance"] == pytest.approx(python_scorers["alex-st"].score(a, b), abs=TOL)
    assert shown["last"]["map"] is None and shown["heat"][2] == "none"
    assert web.eval("return window.stlpipsApp.scorer.info.outputs;") == ["dist"]


def test_threads_in_a_cross_origin_isolated_page(web, python_scorers):
    """threads: 2 in an isolated page runs onnxruntime-web's threaded build: the page starts a Web Worker for the
    second thread (counted by wrapping the page's Worker constructor before the first session), which threads: 1
    does not; the distance is the single-threaded one's."""
    a, b = random_pair(3, 67, 93)
    got = {}
    for threads in (2, 1):
        with StaticServer(web.data, isolated=True) as isolated:  # a new origin: a fresh onnxruntime-web
            web.ensure_page(isolated.url + "index.html")
            try:
                assert web.eval("return crossOriginIsolated;") is True
                got[threads] = web.eval(
                    "const started = []; const Plain = window.Worker;"
                    "window.Worker = new Proxy(Plain, {construct(target, args) {"
                    "  started.push(String(args[0])); return new target(...args); }});"
                    f"const s = await stlpips.loadScorer('/data/{web.models['alex-st'].name}', {{threads: {threads}}});"
                    f"const d = await s.score(__t.imageData('{rgba_b64(a)}', 93, 67), "
                    f"__t.imageData('{rgba_b64(b)}', 93, 67));"
                    "await s.release(); return {d, threads: s.threads, workers: started};")
            finally:
                web.page = None  # the next test reloads from the plain server
    assert got[2]["threads"] == 2 and len(got[2]["workers"]) >= 1, got
    assert all("threaded" in url for url in got[2]["workers"]), got
    assert got[1]["threads"] == 1 and got[1]["workers"] == [], got
    assert got[2]["d"] == pytest.approx(python_scorers["alex-st"].score(a, b), abs=TOL)
    assert got[2]["d"] == pytest.approx(got[1]["d"], abs=TOL)


# --- the page in each state a person meets ------------------------------------------------------------------------
def _pick_only(web, a_name: str, b_name: str) -> dict:
    """Pick two images in the page without waiting for a score (there may be none); what the page then shows."""
    web.eval(f"await window.stlpipsApp.ready; await window.stlpipsApp.webgpu; {_pick('a', a_name)} "
             f"{_pick('b', b_name)} return true;")
    return web.eval(f"const names = {json.dumps([a_name, b_name])};"
                    "const $ = (id) => document.getElementById(id);"
                    "const shown = () => names.every((n, i) => $(`size-${'ab'[i]}`).textContent.startsWith(n));"
                    "for (let i = 0; i < 600 && !shown(); i++) await new Promise((r) => setTimeout(r, 50));"
                    "await new Promise((r) => setTimeout(r, 200));"
                    "return {distance: $('distance').textContent, status: $('status').textContent,"
                    "  error: $('error').textContent, errorShown: getComputedStyle($('error')).display,"
                    "  model: $('model-info').textContent, sizes: [$('size-a').textContent, $('size-b').textContent],"
                    "  webgpu: $('backend').querySelector('option[value=webgpu]').disabled};")


@pytest.fixture(scope="module")
def page_images(web) -> dict[str, np.ndarray]:
    a, b = random_pair(21, 64, 80)
    c = random_pair(22, 64, 72)[0]
    for name, x in (("state_a.png", a), ("state_b.png", b), ("state_c.png", c)):
        Image.fromarray(x).save(web.data / name)
    (web.data / "not_a_model.onnx").write_text("not a model")
    return {"a": a, "b": b, "c": c}


def test_page_without_a_model_asks_for_one(web, page_images):
    web.ensure_page(f"{web.server.url}index.html")
    shown = _pick_only(web, "state_a.png", "state_b.png")
    assert shown["errorShown"] == "none" and shown["distance"] == "–"
    assert shown["status"] == "Open a model (.onnx) to score the images."
    assert shown["sizes"][0] == "state_a.png · 80×64"  # W×H, as everywhere on the page
    assert shown["webgpu"] is True  # headless Chromium offers no WebGPU adapter: the choice is disabled


@pytest.mark.parametrize("query, error", [
    ("model=/data/missing.onnx", "ModelError: /data/missing.onnx: the server answered 404"),
    ("model=/data/not_a_model.onnx", "NotAnStlpipsModelError: "),
    ("backend=webgpu&model=/data/{alex}", "ModelError: backend 'webgpu': this browser offers no WebGPU adapter"),
], ids=["missing model", "a file that is no model", "a backend that fails"])
def test_a_model_or_backend_that_fails_stays_on_the_page(web, page_images, query, error):
    web.ensure_page(f"{web.server.url}index.html?{query.format(alex=web.models['alex-st'].name)}")
    shown = _pick_only(web, "state_a.png", "state_b.png")  # picking images is no cure: the error stays
    assert shown["errorShown"] == "block" and shown["error"].startswith(error), shown
    assert shown["model"].startswith("Could not load") and shown["distance"] == "–"
    assert shown["status"] == "No model: see the error below."
    web.eval("const sel = document.getElementById('backend'); sel.value = 'wasm';"
             "sel.dispatchEvent(new Event('change')); return true;")  # the cause changes: another backend
    if query.startswith("backend"):
        shown = _run_page(web, "state_a.png", "state_b.png")
        assert shown["errorShown"] == "none" and shown["backend"] == "WASM"
    web.page = None


def test_a_size_mismatch_is_shown_until_the_pair_changes(web, page_images, python_scorers):
    web.ensure_page(f"{web.server.url}index.html?model=/data/{web.models['alex-st'].name}")
    shown = _run_page(web, "state_a.png", "state_c.png")
    assert shown["errorShown"] == "block", shown
    assert shown["error"].startswith("ImageSizeError: a vs b: sizes differ (80×64 vs 72×64, W×H)")
    assert shown["last"]["error"]["name"] == "ImageSizeError" and shown["distance"] == "–"
    shown = _run_page(web, "state_a.png", "state_b.png")  # the cause changes: a matching image
    assert shown["errorShown"] == "none" and shown["error"] == ""
    expected = python_scorers["alex-st"].score(page_images["a"], page_images["b"])
    assert shown["last"]["distance"] == pytest.approx(expected, abs=TOL)


def test_translucent_pngs_read_as_python_reads_them_and_the_canvas_path_as_documented(web, python_scorers):
    """docs/web.md "Translucent pixels": an 8-bit RGBA PNG file (Blob, File, the page) is decoded by the module, so
    its colours are the stored ones, as PIL reads them, alpha dropped: the page's distance is Python's. Through an
    <img> (the canvas's premultiplied 8-bit storage) a pixel of alpha a < 255 reads as c' with
    round(c' a / 255) == round(c a / 255) for the stored c (0 where a = 0); opaque pixels exactly."""
    web.module_page()
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 0
    rgba[8:16, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(web.data / "rgba.png")
    got = web.eval("const blob = await (await fetch('/data/rgba.png')).blob();"
                   "const img = new Image(); img.src = '/data/rgba.png'; await img.decode();"
                   "return [Array.from((await stlpips.readImage(blob)).data),"
                   "        Array.from((await stlpips.readImage(img)).data)];")
    from_file, through_canvas = (np.asarray(g, dtype=np.int64).reshape(64, 80, 4) for g in got)
    assert np.array_equal(from_file, rgba)  # bit for bit, as PIL decodes it
    c, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    assert np.array_equal(through_canvas[..., 3], rgba[..., 3])
    assert np.array_equal(np.floor(through_canvas[..., :3] * a / 255 + 0.5), np.floor(c * a / 255 + 0.5))
    assert np.array_equal(through_canvas[8:16, :, :3], c[8:16]) and not through_canvas[:8, :, :3].any()
    assert not np.array_equal(through_canvas[16:, :, :3], c[16:])  # translucent through a canvas: rounded

    other = rgba.copy()
    other[..., :3] = np.roll(rgba[..., :3], 3, axis=1)
    Image.fromarray(other, "RGBA").save(web.data / "rgba_b.png")
    web.ensure_page(f"{web.server.url}index.html?model=/data/{web.models['alex-st'].name}")
    try:
        shown = _run_page(web, "rgba.png", "rgba_b.png")
    finally:
        web.page = None
    expected = python_scorers["alex-st"].score(web.data / "rgba.png", web.data / "rgba_b.png")
    assert shown["errorShown"] == "none", shown["error"]
    assert shown["last"]["distance"] == pytest.approx(expected, abs=TOL)


def test_the_steps_of_docs_web_md_open_a_working_page(web, page_images, python_scorers, tmp_path):
    """docs/web.md "Run the page": examples/web with models/ linked beside it holding what the set-up exports
    (alex-st alone), then the URL the doc says to open: the page loads that model and scores."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "web.md").read_text()
    steps = doc[doc.index("## Run the page"):doc.index("## Use it in another page")]
    url = re.search(r"# open http://localhost:8000/(\S+)", steps)[1]
    assert "ln -s ../../models models" in steps
    site, models = tmp_path / "web", tmp_path / "models"
    site.mkdir()
    models.mkdir()
    for item in WEB_ROOT.iterdir():
        (site / item.name).symlink_to(item)
    (site / "models").symlink_to(models)
    (models / web.models["alex-st"].name).symlink_to(web.models["alex-st"])  # what demo.sh exports
    with StaticServer(web.data, web_root=site) as server:
        web.ensure_page(server.url + url)
        try:
            shown = _run_page(web, "state_a.png", "state_b.png")
        finally:
            web.page = None
    assert shown["errorShown"] == "none", shown["error"]
    expected = python_scorers["alex-st"].score(page_images["a"], page_images["b"])
    assert shown["last"]["distance"] == pytest.approx(expected, abs=TOL)
