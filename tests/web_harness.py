"""Headless Chromium for the browser host (examples/web): a static server for the folder and a driver process.

Used by tests/test_web.py and scripts/bench_web.py. The browser is Debian's ``chromium``; it is driven through
``examples/web/tools/browser_driver.mjs`` (puppeteer-core from examples/web/node_modules), one JSON command per
line. Nothing here reaches past 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB_ROOT = REPO_ROOT / "examples" / "web"
DRIVER = WEB_ROOT / "tools" / "browser_driver.mjs"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    explicit = os.environ.get("STLPIPS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((p for p in CHROMIUM_CANDIDATES if Path(p).is_file()), None)


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if shutil.which("node") is None:
        return "node is not installed (the browser driver runs on Node.js); bash scripts/setup_web.sh"
    if chromium_path() is None:
        return "no Chromium at /usr/bin/chromium (or $STLPIPS_CHROMIUM): bash scripts/setup_web.sh installs it"
    for package in ("onnxruntime-web", "puppeteer-core"):
        if not (WEB_ROOT / "node_modules" / package / "package.json").is_file():
            return f"examples/web/node_modules/{package} is missing: `npm ci` in examples/web (scripts/setup_web.sh)"
    return None


class _Handler(SimpleHTTPRequestHandler):
    """Serves the web folder at / and a data folder at /data/, optionally cross-origin isolated."""

    extensions_map = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                      ".onnx": "application/octet-stream", ".html": "text/html", ".png": "image/png"}

    def __init__(self, *args: Any, web_root: Path, data_root: Path | None, isolated: bool, **kwargs: Any) -> None:
        self.web_root, self.data_root, self.isolated = web_root, data_root, isolated
        super().__init__(*args, directory=str(web_root), **kwargs)

    def translate_path(self, path: str) -> str:
        if self.data_root is not None and path.startswith("/data/"):
            name = path[len("/data/"):].split("?", 1)[0].split("#", 1)[0]
            return str(self.data_root / Path(name).name)
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class StaticServer:
    """``python -m http.server`` for the web folder on 127.0.0.1 (a free port), in a thread; ``/data/NAME`` maps
    to files in ``data_root``. ``isolated=True`` sends COOP/COEP, so the page may use WASM threads."""

    def __init__(self, data_root: Path | None = None, isolated: bool = False, web_root: Path = WEB_ROOT) -> None:
        handler = partial(_Handler, web_root=web_root, data_root=data_root, isolated=isolated)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StaticServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PageError(RuntimeError):
    """An exception thrown in the page (its message is the page's)."""


class Browser:
    """One headless Chromium with one page, driven through the Node.js driver."""

    def __init__(self, user_data_dir: Path, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self.log_lines: list[str] = []
        self.proc = subprocess.Popen(
            ["node", str(DRIVER), chromium_path() or "/usr/bin/chromium", str(user_data_dir)],
            cwd=WEB_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._answers.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.log_lines.append), daemon=True).start()
        self._next_id = 1
        self.version = self._wait(0)

    @staticmethod
    def _pump(stream: Any, sink: Any) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def _wait(self, wanted: int) -> Any:
        while True:
            try:
                line = self._answers.get(timeout=self.timeout)
            except queue.Empty:
                raise TimeoutError(f"browser driver gave no answer in {self.timeout:.0f} s") from None
            if line is None:
                log = "\n".join(x for x in self.log_lines[-30:] if x)
                raise RuntimeError(f"browser driver exited (rc {self.proc.poll()}):\n{log}")
            answer = json.loads(line)
            if answer["id"] != wanted:
                continue
            if not answer["ok"]:
                raise PageError(answer["error"])
            return answer["value"]

    def call(self, op: str, **fields: Any) -> Any:
        cmd_id = self._next_id
        self._next_id += 1
        self.proc.stdin.write(json.dumps({"id": cmd_id, "op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._wait(cmd_id)

    def goto(self, url: str) -> Any:
        return self.call("goto", url=url)

    def eval(self, body: str) -> Any:
        """Run ``body`` as an async function's body in the page; returns its (JSON) result."""
        return self.call("eval", body=body)

    def screenshot(self, path: Path, width: int = 1200, height: int = 900) -> None:
        self.call("screenshot", path=str(path), width=width, height=height)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):  # the driver closes the browser and exits; killed below if not
                self.proc.stdin.write(json.dumps({"id": self._next_id, "op": "close"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rgba_b64(rgb: np.ndarray) -> str:
    """uint8 HxWx3 -> base64 of opaque RGBA bytes (ImageData's layout)."""
    h, w, _ = rgb.shape
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    return base64.b64encode(np.ascontiguousarray(rgba).tobytes()).decode("ascii")


# Installed once per page load: window.__t.imageData(b64, w, h) -> ImageData; __t.canvas(...) -> a canvas with it.
PAGE_HELPERS = """
window.__t = {
  imageData(b64, w, h) {
    const bytes = Uint8ClampedArray.from(atob(b64), (c) => c.charCodeAt(0));
    return new ImageData(bytes, w, h);
  },
  canvas(b64, w, h) {
    const c = document.createElement('canvas');
    c.width = w; c.height = h;
    c.getContext('2d').putImageData(this.imageData(b64, w, h), 0, 0);
    return c;
  },
  async img(url) {
    const el = new Image();
    el.src = url;
    await el.decode();
    return el;
  },
  async bitmap(url) {
    const blob = await (await fetch(url)).blob();
    return createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  },
  async error(promise) {
    try { await promise; return null; } catch (e) { return { name: e.name, message: e.message }; }
  },
};
return true;
"""


def open_page(browser: Browser, url: str) -> None:
    """Load ``url`` (the page, or any page of the folder), wait for ``window.stlpips`` and add the helpers."""
    browser.goto(url)
    browser.eval("for (let i = 0; i < 600 && !window.stlpips; i++) await new Promise((r) => setTimeout(r, 50));"
                 "if (!window.stlpips) throw new Error('window.stlpips never appeared'); return true;")
    browser.eval(PAGE_HELPERS)
