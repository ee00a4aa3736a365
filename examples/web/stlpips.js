// ST-LPIPS / LPIPS in the browser: an exported stlpips .onnx file (docs/contract.md) scored client-side with
// onnxruntime-web. Same file, same input conversion and the same refusals as the Python runtime (stlpips_rt).
//
//   import { loadScorer } from './stlpips.js';
//   const scorer = await loadScorer('models/stlpips_alex_st.onnx');
//   const d = await scorer.score(imageA, imageB);   // ImageData, ImageBitmap, HTMLImageElement, HTMLCanvasElement
//
// Everything (this module, onnxruntime-web's JavaScript and .wasm files) is served from this folder: nothing is
// fetched from anywhere else. See docs/web.md.

import * as bundledOrt from './node_modules/onnxruntime-web/dist/ort.min.mjs';

/** Where onnxruntime-web's .wasm/.mjs files are served from: node_modules beside this module. */
export const DEFAULT_WASM_PATHS = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;

/**
 * Default working-memory budget of one graph run on the WASM backend, in bytes. onnxruntime-web's WebAssembly
 * heap is 32-bit (4 GiB at most) and must also hold the weights, the inputs and the allocator's slack; docs/web.md
 * gives the measurement behind this figure. Pairs whose estimate (stlpips.bytes_per_pixel x pixels) is over it
 * are refused before anything runs, so a large image gives an error instead of an out-of-memory abort.
 */
export const DEFAULT_MAX_WASM_BYTES = 1.5 * 2 ** 30;

const FORMAT_VERSION = '1';
const INPUTS = ['in0', 'in1'];
const KNOWN_OUTPUTS = ['dist', 'dist_layers', 'dist_map'];
const REQUIRED_KEYS = ['stlpips.format', 'stlpips.net', 'stlpips.variant', 'stlpips.input_range',
  'stlpips.min_size', 'stlpips.outputs'];

// --- errors (the Python runtime's names: stlpips_rt.errors) --------------------------------------------------
export class StlpipsError extends Error {
  constructor(message) { super(message); this.name = this.constructor.name; }
}
export class ModelError extends StlpipsError {}
export class NotAnStlpipsModelError extends ModelError {}
export class InferenceError extends StlpipsError {}
export class ImageError extends StlpipsError {
  constructor(item, message) { super(`${item}: ${message}`); this.item = item; }
}
export class ImageValueError extends ImageError {}
export class ImageSizeError extends ImageError {}
export class ImageTooLargeError extends ImageError {}

// --- the ONNX file's metadata_props, read from its bytes -----------------------------------------------------
// onnxruntime-web does not expose custom metadata, so the ModelProto is walked here: a protobuf message is a run of
// (key varint = field << 3 | wire type, value) records; ModelProto field 14 is metadata_props, each a
// StringStringEntryProto with key = 1 and value = 2. Everything else (the graph: field 7) is skipped by length.

function readVarint(buf, pos, end) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) throw new Error('truncated varint');
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if ((byte & 0x80) === 0) return [value, pos];
    scale *= 128;
  }
  throw new Error('varint longer than 10 bytes');
}

function* protoFields(buf, start, end) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = readVarint(buf, pos, end);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0) throw new Error('field number 0');
    if (wire === 0) {
      let value;
      [value, pos] = readVarint(buf, pos, end);
      yield { field, wire, value };
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos, end);
      if (pos + length > end) throw new Error(`field ${field} runs past the end of its message`);
      yield { field, wire, start: pos, end: pos + length };
      pos += length;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
      if (pos > end) throw new Error('truncated fixed-width field');
    } else {
      throw new Error(`wire type ${wire} (not used by ONNX)`);
    }
  }
}

/**
 * All metadata_props of an ONNX model, as {key: value}. Throws NotAnStlpipsModelError for bytes that are not a
 * protobuf ModelProto. `name` is used in messages.
 */
export function readMetadataProps(bytes, name = 'model') {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const meta = {};
  let sawGraph = false;
  try {
    for (const f of protoFields(buf, 0, buf.length)) {
      if (f.field === 7 && f.wire === 2) sawGraph = true;
      if (f.field !== 14 || f.wire !== 2) continue;
      let key = '';
      let value = '';
      for (const g of protoFields(buf, f.start, f.end)) {
        if (g.wire !== 2) continue;
        if (g.field === 1) key = utf8.decode(buf.subarray(g.start, g.end));
        else if (g.field === 2) value = utf8.decode(buf.subarray(g.start, g.end));
      }
      meta[key] = value;
    }
  } catch (err) {
    throw new NotAnStlpipsModelError(`${name}: cannot read it as an ONNX model (${err.message}); is it an .onnx file `
      + 'written by `stlpips-export`?');
  }
  if (!sawGraph) {
    throw new NotAnStlpipsModelError(`${name}: not an ONNX model (no graph in it); pass an .onnx file written by `
      + '`stlpips-export`');
  }
  return meta;
}

/** Validate the stlpips contract (format 1) of a metadata dict; the Python runtime's ModelInfo.from_metadata. */
export function modelInfo(meta, name = 'model') {
  const refuse = (why) => new NotAnStlpipsModelError(`${name}: not a usable stlpips model (${why}); export one `
    + 'with `stlpips-export`');
  const fmt = meta['stlpips.format'];
  if (fmt === undefined) throw refuse('no stlpips.format in its metadata_props');
  if (fmt !== FORMAT_VERSION) throw refuse(`stlpips.format is '${fmt}', this reader reads format ${FORMAT_VERSION}`);
  for (const key of REQUIRED_KEYS) if (!(key in meta)) throw refuse(`metadata key ${key} is missing`);
  if (meta['stlpips.input_range'].replace(/ /g, '') !== '-1,1') {
    throw refuse(`stlpips.input_range is '${meta['stlpips.input_range']}', expected '-1,1'`);
  }
  if (!/^\d+$/.test(meta['stlpips.min_size'].trim())) {
    throw refuse(`stlpips.min_size '${meta['stlpips.min_size']}' is not an integer`);
  }
  const minSize = parseInt(meta['stlpips.min_size'], 10);
  if (minSize < 1) throw refuse(`stlpips.min_size is ${minSize}`);
  const outputs = meta['stlpips.outputs'].split(',').map((s) => s.trim()).filter(Boolean);
  if (!outputs.includes('dist') || outputs.some((o) => !KNOWN_OUTPUTS.includes(o))) {
    throw refuse(`stlpips.outputs is '${meta['stlpips.outputs']}'; expected 'dist' plus any of dist_layers, dist_map`);
  }
  let staticHW = null;
  if (meta['stlpips.static_hw']) {
    const m = /^(\d+)x(\d+)$/.exec(meta['stlpips.static_hw'].toLowerCase());
    if (!m) throw refuse(`stlpips.static_hw '${meta['stlpips.static_hw']}' is not HxW`);
    staticHW = [parseInt(m[1], 10), parseInt(m[2], 10)];
  }
  const bpp = parseFloat(meta['stlpips.bytes_per_pixel'] ?? '');
  return {
    net: meta['stlpips.net'],
    variant: meta['stlpips.variant'],
    shortName: `${meta['stlpips.net']}-${meta['stlpips.variant']}`,
    minSize,
    outputs,
    precision: meta['stlpips.precision'] || 'fp32',
    staticHW,
    bytesPerPixel: Number.isFinite(bpp) && bpp > 0 ? bpp : null,
    hasSpatial: outputs.includes('dist_map'),
    metadata: { ...meta },
  };
}

// --- images -> the graph's input -----------------------------------------------------------------------------
// uint8 v -> float32 v / 127.5 - 1, exactly as numpy computes it in float32 (stlpips_rt.io.images.uint8_to_unit):
// both steps are rounded to float32 (Math.fround after a double operation gives the correctly rounded float32
// result for one division or subtraction), so the table holds bit for bit what the Python runtime feeds.
const UNIT = new Float32Array(256);
for (let v = 0; v < 256; v++) UNIT[v] = Math.fround(Math.fround(v / 127.5) - 1);

/** RGBA bytes (ImageData layout) -> float32 NCHW [1, 3, H, W] in [-1, 1]; alpha is dropped, not composited. */
export function toModelInput(rgba, width, height) {
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let i = 0, p = 0; i < plane; i++, p += 4) {
    out[i] = UNIT[rgba[p]];
    out[plane + i] = UNIT[rgba[p + 1]];
    out[2 * plane + i] = UNIT[rgba[p + 2]];
  }
  return out;
}

function makeCanvas(width, height) {
  if (typeof OffscreenCanvas !== 'undefined') return new OffscreenCanvas(width, height);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function readPixels(source, width, height, name) {
  // sRGB canvas, read often (a CPU-backed canvas: no GPU readback), drawn at 1:1 with no smoothing.
  const ctx = makeCanvas(width, height).getContext('2d', { willReadFrequently: true, colorSpace: 'srgb' });
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(source, 0, 0);
  try {
    return ctx.getImageData(0, 0, width, height, { colorSpace: 'srgb' });
  } catch (err) {
    if (err.name !== 'SecurityError') throw err;
    throw new ImageValueError(name, 'the browser will not let the page read this image\'s pixels (a cross-origin '
      + "image without CORS); serve it with Access-Control-Allow-Origin and set img.crossOrigin = 'anonymous'");
  }
}

function isA(value, ctorName) {
  const ctor = globalThis[ctorName];
  return typeof ctor === 'function' && value instanceof ctor;
}

// --- 8-bit RGBA PNG files, decoded here --------------------------------------------------------------------------
// A canvas stores colours premultiplied by alpha in 8 bits, so a translucent pixel's colour does not come back as
// the file stores it; the Python runtime reads the stored colour (and drops alpha). For the common translucent
// format, non-interlaced 8-bit RGBA PNG, the module therefore reads the file itself: the zlib stream through the
// browser's DecompressionStream, then PNG's five row filters. Other files go through the canvas (opaque pixels are
// exact there).
const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** The pixels of a non-interlaced 8-bit RGBA PNG as ImageData (exact, not premultiplied); null for any other file. */
export async function decodeRgbaPng(bytes) {
  if (bytes.length < 33 || PNG_SIGNATURE.some((v, i) => bytes[i] !== v)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const width = view.getUint32(16);
  const height = view.getUint32(20);
  const [depth, colourType, , , interlace] = bytes.subarray(24, 29);
  if (depth !== 8 || colourType !== 6 || interlace !== 0 || !width || !height) return null;
  const parts = [];
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === 'IDAT') parts.push(bytes.subarray(at + 8, at + 8 + length));
    if (type === 'IEND') break;
    at += 12 + length;
  }
  const inflated = new Uint8Array(await new Response(
    new Blob(parts).stream().pipeThrough(new DecompressionStream('deflate'))).arrayBuffer());
  const stride = 4 * width;
  if (inflated.length < height * (stride + 1)) return null;
  const out = new Uint8ClampedArray(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = inflated[y * (stride + 1)];
    const row = inflated.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const at = y * stride;
    for (let x = 0; x < stride; x++) {
      const left = x >= 4 ? out[at + x - 4] : 0;
      const up = y > 0 ? out[at - stride + x] : 0;
      const upLeft = y > 0 && x >= 4 ? out[at - stride + x - 4] : 0;
      const predictor = [0, left, up, (left + up) >> 1, paeth(left, up, upLeft)][filter];
      if (predictor === undefined) return null;
      out[at + x] = (row[x] + predictor) & 255;
    }
  }
  return new ImageData(out, width, height, { colorSpace: 'srgb' });
}

/**
 * One image -> {data: RGBA Uint8ClampedArray, width, height}. ImageData is taken as it is (its bytes are the
 * pixels); a Blob or File that is an 8-bit RGBA PNG is decoded here, exactly (decodeRgbaPng). Other images are
 * decoded without colour-space conversion (createImageBitmap colorSpaceConversion 'none'), as PIL decodes them,
 * then read back through an sRGB canvas, whose premultiplied storage keeps opaque pixels exact but rounds the
 * colour of translucent ones (docs/web.md, "Translucent pixels").
 */
export async function readImage(image, name = 'image') {
  if (isA(image, 'Blob')) {
    const exact = await decodeRgbaPng(new Uint8Array(await image.arrayBuffer())).catch(() => null);
    if (exact) return exact;
    let bitmap;
    try {
      bitmap = await createImageBitmap(image, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    } catch {
      throw new ImageValueError(name, 'the browser cannot decode it as an image; use a PNG, JPEG or WebP');
    }
    try { return readPixels(bitmap, bitmap.width, bitmap.height, name); } finally { bitmap.close(); }
  }
  if (isA(image, 'ImageData')) {
    if (image.colorSpace && image.colorSpace !== 'srgb') {
      throw new ImageValueError(name, `ImageData in colour space ${image.colorSpace}; read it with `
        + "getImageData(x, y, w, h, {colorSpace: 'srgb'})");
    }
    return image;
  }
  if (isA(image, 'HTMLImageElement')) {
    if (!image.complete || image.naturalWidth === 0) {
      try { await image.decode(); } catch {
        throw new ImageValueError(name, `the <img> (${image.src.slice(0, 80)}) did not load or decode; wait for `
          + 'its load event and check the URL');
      }
    }
    const bitmap = await createImageBitmap(image, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    try { return readPixels(bitmap, bitmap.width, bitmap.height, name); } finally { bitmap.close(); }
  }
  if (isA(image, 'ImageBitmap')) {
    if (image.width === 0 || image.height === 0) {
      throw new ImageValueError(name, 'the ImageBitmap is empty (closed or transferred?)');
    }
    return readPixels(image, image.width, image.height, name);
  }
  if (isA(image, 'HTMLCanvasElement') || isA(image, 'OffscreenCanvas')) {
    if (image.width === 0 || image.height === 0) throw new ImageValueError(name, 'the canvas is 0 pixels wide or high');
    return readPixels(image, image.width, image.height, name);
  }
  const kind = image === null ? 'null' : (image?.constructor?.name ?? typeof image);
  throw new ImageValueError(name, `unsupported input type ${kind}; pass an ImageData, ImageBitmap, `
    + 'HTMLImageElement, HTMLCanvasElement or an image file (Blob, File)');
}

/** A size as the page shows it: width × height, the order browsers and image tools use (messages say W×H). */
export function wh(width, height) {
  return `${width}×${height}`;
}

function formatBytes(n) {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

// --- the scorer ----------------------------------------------------------------------------------------------
async function modelBytes(source) {
  if (source instanceof Uint8Array) return [source, 'model bytes'];
  if (source instanceof ArrayBuffer) return [new Uint8Array(source), 'model bytes'];
  if (typeof Blob !== 'undefined' && source instanceof Blob) {
    return [new Uint8Array(await source.arrayBuffer()), source.name || 'model file'];
  }
  const url = String(source);
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new ModelError(`${url}: cannot fetch the model (${err.message}); check the URL (same origin, or CORS)`);
  }
  if (!response.ok) {
    throw new ModelError(`${url}: the server answered ${response.status} ${response.statusText}; check the URL`);
  }
  return [new Uint8Array(await response.arrayBuffer()), url];
}

/** Whether the browser offers a WebGPU adapter (navigator.gpu may exist with none, as in headless Chromium). */
export async function webgpuAdapter() {
  if (typeof navigator === 'undefined' || !navigator.gpu) return false;
  try { return Boolean(await navigator.gpu.requestAdapter()); } catch { return false; }
}

async function pickBackend(wanted) {
  if (wanted === 'wasm') return wanted;
  if (wanted === 'webgpu') {
    if (await webgpuAdapter()) return wanted;
    throw new ModelError("backend 'webgpu': this browser offers no WebGPU adapter (navigator.gpu.requestAdapter() "
      + "gave none); choose 'wasm', or 'auto' to take WebGPU only where there is one");
  }
  if (wanted !== 'auto') throw new StlpipsError(`backend '${wanted}': use 'wasm', 'webgpu' or 'auto'`);
  return (await webgpuAdapter()) ? 'webgpu' : 'wasm';
}

const wasmThreads = new WeakMap(); // onnxruntime-web module -> the WASM threads it was initialised with

/**
 * Load an stlpips model and return a scorer.
 *
 * source: a URL, or the file's bytes (ArrayBuffer, Uint8Array, Blob/File).
 * options: backend 'wasm' (default) | 'webgpu' | 'auto' (WebGPU where an adapter exists, else WASM);
 *   threads: WASM threads (used only in a cross-origin isolated page, and only before onnxruntime-web's first
 *   session: it is one setting per page); wasmPaths: where onnxruntime-web's files are (default: node_modules
 *   beside this module); maxWasmBytes: working-memory budget of one pair (default DEFAULT_MAX_WASM_BYTES);
 *   ort: an onnxruntime-web module to use instead of the bundled one.
 */
export async function loadScorer(source, options = {}) {
  const ort = options.ort ?? bundledOrt;
  const [bytes, name] = await modelBytes(source);
  const info = modelInfo(readMetadataProps(bytes, name), name);
  const backend = await pickBackend(options.backend ?? 'wasm');
  ort.env.wasm.wasmPaths = options.wasmPaths ?? DEFAULT_WASM_PATHS;
  if (options.threads !== undefined) ort.env.wasm.numThreads = options.threads;
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: [backend],
      graphOptimizationLevel: 'all',
    });
  } catch (err) {
    throw new ModelError(`${name}: onnxruntime-web could not create a session on ${backend} (${err.message ?? err})`);
  }
  for (const input of INPUTS) {
    if (!session.inputNames.includes(input)) {
      throw new NotAnStlpipsModelError(`${name}: graph has no input '${input}'; re-export it`);
    }
  }
  const missing = info.outputs.filter((o) => !session.outputNames.includes(o));
  if (missing.length) {
    throw new NotAnStlpipsModelError(`${name}: metadata declares outputs ${missing.join(', ')} that the graph does `
      + 'not have; re-export it');
  }
  // onnxruntime-web fixes its WASM thread count at its first session, once per page: remember what that was.
  const isolated = typeof crossOriginIsolated !== 'undefined' && crossOriginIsolated;
  if (!wasmThreads.has(ort)) wasmThreads.set(ort, isolated ? ort.env.wasm.numThreads || 1 : 1);
  if (options.threads !== undefined && options.threads !== wasmThreads.get(ort) && isolated) {
    console.warn(`stlpips: threads: ${options.threads} ignored; onnxruntime-web already runs `
      + `${wasmThreads.get(ort)} WASM thread(s) in this page (set it before the first loadScorer)`);
  }
  return new Scorer(ort, session, info, name, {
    backend,
    threads: backend === 'wasm' ? wasmThreads.get(ort) : null,
    maxWasmBytes: options.maxWasmBytes ?? DEFAULT_MAX_WASM_BYTES,
    modelSize: bytes.length,
  });
}

export class Scorer {
  constructor(ort, session, info, name, { backend, threads, maxWasmBytes, modelSize }) {
    this.ort = ort;
    this.session = session;
    this.info = info;
    this.name = name;
    /** 'wasm' or 'webgpu': what runs the graph. */
    this.backend = backend;
    /** WASM threads that run (1 unless the page is cross-origin isolated); null on WebGPU. */
    this.threads = threads;
    this.maxWasmBytes = maxWasmBytes;
    this.modelSize = modelSize;
    this._queue = Promise.resolve(); // one run at a time: a session is not re-entrant in onnxruntime-web
  }

  /** Largest pair (pixels of one image) within the memory budget, or null when the file has no memory model. */
  get maxPixels() {
    if (!this.info.bytesPerPixel) return null;
    return Math.floor(this.maxWasmBytes / this.info.bytesPerPixel);
  }

  async _pair(a, b) {
    const [x0, x1] = [await readImage(a, 'a'), await readImage(b, 'b')];
    this._checkSize(x0, 'a');
    this._checkSize(x1, 'b');
    if (x0.width !== x1.width || x0.height !== x1.height) {
      throw new ImageSizeError('a vs b', `sizes differ (${wh(x0.width, x0.height)} vs ${wh(x1.width, x1.height)}, W×H); `
        + 'the metric compares aligned images: crop or resize them to one size');
    }
    this._checkMemory(x0.height, x0.width);
    return [x0, x1];
  }

  _checkSize(img, name) {
    const { height: h, width: w } = img;
    const s = this.info.staticHW;
    if (s && (h !== s[0] || w !== s[1])) {
      throw new ImageSizeError(name, `${wh(w, h)} pixels (W×H), but this model was exported for ${wh(s[1], s[0])} only; `
        + 'resize the images to that size or use a model exported without --static');
    }
    if (h < this.info.minSize || w < this.info.minSize) {
      throw new ImageSizeError(name, `${wh(w, h)} pixels (W×H) is below this model's minimum of `
        + `${wh(this.info.minSize, this.info.minSize)}; use larger images or scale them up`);
    }
  }

  _checkMemory(h, w) {
    const max = this.maxPixels;
    if (max === null || h * w <= max) return;
    const need = this.info.bytesPerPixel * h * w;
    const side = Math.floor(Math.sqrt(max));
    throw new ImageTooLargeError('a vs b', `${wh(w, h)} pixels (W×H) need about ${formatBytes(need)} of working memory `
      + `(the model's stlpips.bytes_per_pixel, ${this.info.bytesPerPixel} bytes per pixel of a pair, times the `
      + `pixels), over this page's budget of ${formatBytes(this.maxWasmBytes)} for onnxruntime-web's WebAssembly `
      + `heap (4 GiB at most, weights and inputs included): at most ${max} pixels (about ${wh(side, side)}). `
      + 'Downscale or crop the images, or score them with the Python runtime, which tiles large pairs exactly');
  }

  async _run(x0, x1, outputs) {
    const { Tensor } = this.ort;
    const dims = [1, 3, x0.height, x0.width];
    const feeds = {
      in0: new Tensor('float32', toModelInput(x0.data, x0.width, x0.height), dims),
      in1: new Tensor('float32', toModelInput(x1.data, x1.width, x1.height), dims),
    };
    const run = this._queue.then(async () => {
      try {
        return await this.session.run(feeds, outputs);
      } catch (err) {
        throw new InferenceError(`onnxruntime-web failed on a ${wh(x0.width, x0.height)} (W×H) pair on ${this.backend}: `
          + `${err.message ?? err}`);
      }
    });
    this._queue = run.catch(() => {});
    return run;
  }

  /** Distance between two images (0 = identical), as the Python runtime's Scorer.score computes it. */
  async score(a, b) {
    const [x0, x1] = await this._pair(a, b);
    const result = await this._run(x0, x1, ['dist']);
    return Number(result.dist.data[0]);
  }

  /** Per-pixel distance map {width, height, data: Float32Array (row-major)}: `-spatial` files only. */
  async spatialMap(a, b) {
    if (!this.info.hasSpatial) {
      throw new ModelError(`${this.name} has no output 'dist_map' (it has ${this.info.outputs.join(', ')}); export `
        + `a model with it: \`stlpips-export --net ${this.info.net} --variant ${this.info.variant} --spatial\``);
    }
    const [x0, x1] = await this._pair(a, b);
    const result = await this._run(x0, x1, ['dist_map']);
    const map = result.dist_map;
    return { width: map.dims[3], height: map.dims[2], data: Float32Array.from(map.data) };
  }

  /** Distance and (where the file has dist_map) the map from one run: {distance, map}. */
  async scoreWithMap(a, b) {
    const [x0, x1] = await this._pair(a, b);
    const names = this.info.hasSpatial ? ['dist', 'dist_map'] : ['dist'];
    const result = await this._run(x0, x1, names);
    const map = result.dist_map;
    return {
      distance: Number(result.dist.data[0]),
      map: map ? { width: map.dims[3], height: map.dims[2], data: Float32Array.from(map.data) } : null,
    };
  }

  /** Free the session (after the run in progress, if any); the scorer cannot be used afterwards. */
  async release() {
    await this._queue;
    await this.session.release();
  }
}
