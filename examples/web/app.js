// The page: pick or drop two images, score them with the model given by ?model=URL or picked from disk.
import * as stlpips from './stlpips.js';

window.stlpips = { ...stlpips, loadScorer: stlpips.loadScorer };

const $ = (id) => document.getElementById(id);
const state = { scorer: null, modelSource: null, images: { a: null, b: null }, names: {}, runs: 0 };
window.stlpipsApp = state;

// The ramp of the Python runtime's heat maps (stlpips_rt/heatmap.py): black, purple, red, orange, pale yellow.
const RAMP = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

// Each error stays on the page until its cause changes: 'model' (another model or backend is loaded), 'image-a' /
// 'image-b' (that image is picked again) and 'run' (the next score: another pair or model).
const errors = new Map();
state.errors = errors;

function setError(cause, err) {
  if (err) errors.set(cause, err); else errors.delete(cause);
  const box = $('error');
  box.textContent = [...errors.values()].map((e) => `${e.name ?? 'Error'}: ${e.message ?? e}`).join('\n');
  box.style.display = errors.size ? 'block' : 'none';
}

function setStatus(text) { $('status').textContent = text; }

// WebGPU is offered only where the browser gives an adapter (navigator.gpu may exist without one).
state.webgpu = stlpips.webgpuAdapter().then((adapter) => {
  if (!adapter) {
    const opt = $('backend').querySelector('option[value=webgpu]');
    opt.disabled = true;
    opt.textContent = navigator.gpu ? 'WebGPU (no adapter in this browser)' : 'WebGPU (not offered by this browser)';
  }
  return adapter;
});

function clearResult(note) {
  for (const id of ['distance', 'time', 'pair-size']) $(id).textContent = '–';
  $('heat').style.display = 'none';
  $('heat-legend').hidden = true;
  $('heat-note').textContent = note;
}

async function loadModel(source, label) {
  setError('model', null);
  setError('run', null);
  state.modelSource = source;
  $('model-info').textContent = `Loading ${label}…`;
  try {
    const previous = state.scorer;
    state.scorer = null; // no run starts on the old model from here on
    if (previous) await previous.release();
    state.scorer = await stlpips.loadScorer(source, { backend: $('backend').value });
    const i = state.scorer.info;
    $('model-info').innerHTML = '';
    const pills = [i.shortName, i.precision, ...i.outputs];
    for (const p of pills) {
      const s = document.createElement('span');
      s.className = 'pill';
      s.textContent = p;
      $('model-info').append(s);
    }
    const rest = document.createElement('span');
    rest.textContent = ` min ${i.minSize}px · up to ${state.scorer.maxPixels?.toLocaleString() ?? '?'} px per image`
      + ` · ${label}`;
    $('model-info').append(rest);
    $('backend-used').textContent = state.scorer.backend.toUpperCase();
    $('threads').textContent = state.scorer.threads ?? '–';
  } catch (err) {
    $('model-info').textContent = `Could not load ${label}.`;
    $('backend-used').textContent = '–';
    clearResult('No model.');
    setStatus('No model: see the error below.');
    setError('model', err);
    return;
  }
  await maybeScore();
}

// The file's pixels: an 8-bit RGBA PNG decoded exactly (stlpips.decodeRgbaPng), any other image through the canvas
// without colour management, as PIL reads it (stlpips.readImage).
async function setImage(which, file) {
  setError(`image-${which}`, null);
  let pixels;
  let exact;
  try {
    exact = await stlpips.decodeRgbaPng(new Uint8Array(await file.arrayBuffer())).catch(() => null);
    pixels = exact ?? await stlpips.readImage(file, file.name);
  } catch (err) {
    state.images[which] = null; // the slot holds what was picked last: nothing scoreable
    $(`preview-${which}`).hidden = true;
    $(`size-${which}`).textContent = `${file.name} · not an image`;
    clearResult('No result.');
    setError(`image-${which}`, err);
    return;
  }
  state.images[which] = pixels;
  state.names = { ...state.names, [which]: file.name };
  const canvas = $(`preview-${which}`);
  canvas.width = pixels.width;
  canvas.height = pixels.height;
  canvas.getContext('2d').putImageData(pixels, 0, 0);
  canvas.hidden = false;
  $(`drop-${which}`).querySelector('.hint').hidden = true;
  const roundedAlpha = !exact && hasTranslucentPixels(pixels);
  $(`size-${which}`).textContent = `${file.name} · ${stlpips.wh(pixels.width, pixels.height)}`
    + (roundedAlpha ? ' · translucent: colours read through the canvas (docs/web.md, "Translucent pixels")' : '');
  await maybeScore();
}

function hasTranslucentPixels(image) {
  for (let i = 3; i < image.data.length; i += 4) if (image.data[i] < 255) return true;
  return false;
}

function drawHeat(map) {
  const canvas = $('heat');
  canvas.width = map.width;
  canvas.height = map.height;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(map.width, map.height);
  let top = 0;
  for (const v of map.data) if (v > top) top = v;
  for (let i = 0; i < map.data.length; i++) {
    const t = top > 0 ? Math.min(Math.max(map.data[i] / top, 0), 1) : 0;
    const pos = t * (RAMP.length - 1);
    const lo = Math.min(Math.floor(pos), RAMP.length - 2);
    const f = pos - lo;
    for (let c = 0; c < 3; c++) img.data[4 * i + c] = Math.round(RAMP[lo][c] * (1 - f) + RAMP[lo + 1][c] * f);
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  canvas.style.display = 'block';
  $('heat-note').textContent = 'Where the images differ, per pixel';
  $('heat-legend').hidden = false;
  $('heat-max').textContent = top.toPrecision(3);
}

// Scores whenever the model or an image changes. Runs queue in the scorer; only the latest one updates the page.
async function maybeScore() {
  const { scorer, images } = state;
  if (!scorer) {
    setStatus(errors.has('model') ? 'No model: see the error below.' : 'Open a model (.onnx) to score the images.');
    return null;
  }
  if (!images.a || !images.b) {
    setStatus('Pick two images of the same size.');
    return null;
  }
  const generation = (state.generation = (state.generation ?? 0) + 1);
  const latest = () => generation === state.generation;
  const names = [state.names.a, state.names.b];
  setError('run', null);
  setStatus('Scoring…');
  $('distance').textContent = '…';
  let result;
  try {
    const t0 = performance.now();
    const { distance, map } = await scorer.scoreWithMap(images.a, images.b);
    const ms = performance.now() - t0;
    result = { names, distance, ms, backend: scorer.backend, map: map && { width: map.width, height: map.height } };
    if (latest()) {
      $('distance').textContent = distance.toFixed(6);
      $('time').textContent = `${ms.toFixed(0)} ms`;
      $('backend-used').textContent = scorer.backend.toUpperCase();
      $('threads').textContent = scorer.threads ?? '–';
      $('pair-size').textContent = stlpips.wh(images.a.width, images.a.height);
      if (map) {
        drawHeat(map);
      } else {
        $('heat').style.display = 'none';
        $('heat-legend').hidden = true;
        $('heat-note').textContent = `${scorer.info.shortName} has no dist_map output: export it with --spatial `
          + 'for a heat map.';
      }
      setStatus('Done.');
    }
  } catch (err) {
    result = { names, error: { name: err.name, message: err.message } };
    if (latest()) {
      clearResult('No result.');
      setStatus('Failed: see the error below.');
      setError('run', err);
    }
  }
  state.runs += 1;
  if (latest()) state.last = result;
  return result;
}

for (const which of ['a', 'b']) {
  const zone = $(`drop-${which}`);
  $(`file-${which}`).addEventListener('change', (e) => { if (e.target.files[0]) setImage(which, e.target.files[0]); });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (e.dataTransfer.files[0]) setImage(which, e.dataTransfer.files[0]);
  });
}

$('model-file').addEventListener('change', (e) => {
  const file = e.target.files[0];
  if (file) loadModel(file, file.name);
});
$('backend').addEventListener('change', () => {
  if (state.modelSource) loadModel(state.modelSource, 'the model again');
});

const params = new URLSearchParams(location.search);
if (params.get('backend')) $('backend').value = params.get('backend');
if (params.get('model')) {
  state.ready = loadModel(params.get('model'), params.get('model'));
} else {
  state.ready = Promise.resolve();
}
