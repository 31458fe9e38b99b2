// moondream-server's web page: an image (file, drop, paste or camera), one of
// the tasks (caption, question with optional grounded reasoning or without the
// image, detect, point, gaze by clicking an eye), the answer streamed in,
// boxes and points drawn over the image, the API's timings, the server's
// health, and a live camera mode that re-asks the same task (one request in
// flight at most).
// Plain JS, no dependencies: it only talks to the server that served it.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = 'moondream.apiKey';
const HEALTH_EVERY_MS = 5000;
const HISTORY_MAX = 20;
const CAMERA_MAX_SIDE = 1280;  // camera frames are sent at most this large (JPEG)

const el = {
  stage: $('stage'), frame: $('frame'), photo: $('photo'), overlay: $('overlay'), video: $('video'),
  backToCamera: $('back-to-camera'), noPreview: $('no-preview'), noPreviewName: $('no-preview-name'),
  placeholder: $('placeholder'), dropHint: $('drop-hint'), file: $('file'), choose: $('choose'),
  camera: $('camera'), switchCamera: $('switch-camera'), sourceInfo: $('source-info'),
  form: $('task-form'), length: $('length'), question: $('question'), object: $('object'),
  temperature: $('temperature'), maxTokens: $('max-tokens'), maxObjects: $('max-objects'),
  run: $('run'), stop: $('stop'), live: $('live'), interval: $('interval'), liveInfo: $('live-info'),
  error: $('error'), busy: $('busy'), answer: $('answer'), results: $('results'),
  timings: $('timings'), timingsFor: $('timings-for'), history: $('history'),
  healthStatus: $('health-status'), healthList: $('health-list'),
  keyDialog: $('key-dialog'), keyForm: $('key-form'), keyInput: $('key-input'), keyReason: $('key-reason'),
  keyCancel: $('key-cancel'), grab: $('grab'),
  reasoningOn: $('reasoning-on'), textOnly: $('text-only'), reasoning: $('reasoning'),
  reasoningText: $('reasoning-text'), gazeHint: $('gaze-hint'),
};

const state = {
  // The image the next request is about:
  //   {kind: 'file', name, dataUrl, width, height} or {kind: 'camera'}.
  source: null,
  shown: null,          // {width, height} of the picture on the stage (0 when the browser cannot show it)
  objectUrl: null,      // blob: URL of the shown file
  stream: null,         // camera MediaStream
  facing: 'environment',
  controller: null,     // AbortController of the request in flight
  live: false,
  liveWake: null,       // resolves the live loop's wait early
  apiKey: sessionStorage.getItem(KEY_STORAGE) || '',
  healthTimer: null,
  requests: 0,
  eye: null,            // gaze: {x, y} clicked on the image (fractions)
};

// ---- small helpers --------------------------------------------------------------

function task() { return el.form.elements.task.value; }

function sleep(ms) {
  return new Promise((resolve) => {
    const t = setTimeout(() => { state.liveWake = null; resolve(); }, ms);
    state.liveWake = () => { clearTimeout(t); state.liveWake = null; resolve(); };
  });
}

function fmtSeconds(s) {
  if (typeof s !== 'number' || !isFinite(s)) return '–';
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(2)} s`;
}

function fmtBytes(n) {
  if (typeof n !== 'number') return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function fillDl(dl, rows) {
  dl.replaceChildren();
  for (const [k, v, title] of rows) {
    const div = document.createElement('div');
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.textContent = k;
    dd.textContent = v;
    if (title) div.title = title;
    div.append(dt, dd);
    dl.append(div);
  }
}

function showError(msg) {
  el.error.textContent = msg;
  el.error.hidden = !msg;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    const head = this.status ? `Error ${this.status}${this.code ? ` (${this.code})` : ''}` : 'Error';
    return `${head}: ${this.message}`;
  }
}

async function errorFrom(res) {
  let code = '', message = `${res.status} ${res.statusText || 'error'}`;
  try {
    const j = await res.json();
    if (j && j.error) {
      code = j.error.code || '';
      message = j.error.message || message;
    }
  } catch (_) { /* not JSON */ }
  if (res.status === 503) {
    const after = res.headers.get('Retry-After');
    if (after) message += ` (retry after ${after} s)`;
  }
  return new ApiError(res.status, code, message);
}

// ---- API key ------------------------------------------------------------------------

function askKey(reason) {
  return new Promise((resolve) => {
    el.keyReason.textContent = reason;
    el.keyInput.value = '';
    const done = (key) => {
      el.keyForm.removeEventListener('submit', onSubmit);
      el.keyCancel.removeEventListener('click', onCancel);
      el.keyDialog.removeEventListener('cancel', onCancel);
      if (el.keyDialog.open) el.keyDialog.close();
      resolve(key);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const k = el.keyInput.value.trim();
      if (!k) { el.keyInput.focus(); return; }
      state.apiKey = k;
      sessionStorage.setItem(KEY_STORAGE, k);
      done(k);
    };
    const onCancel = (e) => { e.preventDefault(); done(null); };
    el.keyForm.addEventListener('submit', onSubmit);
    el.keyCancel.addEventListener('click', onCancel);
    el.keyDialog.addEventListener('cancel', onCancel);
    el.keyDialog.showModal();
    el.keyInput.focus();
  });
}

// POSTs JSON to the API; asks for the key on 401 and retries. With onChunk,
// reads the Server-Sent Events stream and returns the final event.
async function post(path, body, { signal, onChunk, onReasoning } = {}) {
  const text = JSON.stringify(body);
  for (let attempt = 0; ; attempt++) {
    const headers = { 'Content-Type': 'application/json' };
    if (state.apiKey) headers.Authorization = `Bearer ${state.apiKey}`;
    let res;
    try {
      res = await fetch(path, { method: 'POST', headers, body: text, signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', 'cannot reach the server (is it still running?)');
    }
    if (res.status === 401 && attempt < 3) {
      const err = await errorFrom(res);
      if (state.apiKey) { state.apiKey = ''; sessionStorage.removeItem(KEY_STORAGE); }
      const key = await askKey(err.code === 'invalid_api_key' ? 'That key was not accepted. Enter the server\'s API key.'
                                                              : 'This server needs an API key.');
      if (key === null) throw err;
      continue;
    }
    if (!res.ok) throw await errorFrom(res);
    if (!onChunk) return res.json();
    return readEvents(res, onChunk, onReasoning);
  }
}

async function readEvents(res, onChunk, onReasoning) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let last = null;
  const handle = (data) => {
    let ev;
    try { ev = JSON.parse(data); } catch (_) { return; }
    if (ev.error) throw new ApiError(ev.error.status || 0, ev.error.code, ev.error.message || 'the server stopped');
    if (ev.reasoning && onReasoning) onReasoning(ev.reasoning);
    if (typeof ev.chunk === 'string') onChunk(ev.chunk);
    if (ev.completed) last = ev;
  };
  for (;;) {
    const { value, done } = await reader.read();
    buf += decoder.decode(value || new Uint8Array(), { stream: !done });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of block.split('\n')) {
        if (line.startsWith('data: ')) handle(line.slice(6));
      }
    }
    if (done) break;
  }
  if (!last) throw new ApiError(0, 'incomplete', 'the answer stopped before it was complete');
  return last;
}

// ---- the stage: image, camera, overlay ---------------------------------------------

function setMode(mode) {
  // empty | image | camera (live view) | snapshot (camera frame + small live view)
  el.stage.dataset.mode = mode;
  el.placeholder.hidden = mode !== 'empty';
  el.video.hidden = !(mode === 'camera' || mode === 'snapshot');
  el.backToCamera.hidden = mode !== 'snapshot';
  el.frame.hidden = !(mode === 'image' || mode === 'snapshot') || !state.shown || !state.shown.width;
  el.noPreview.hidden = !(mode === 'image' && state.shown && !state.shown.width);
  layout();
}

// Sizes the frame (picture + overlay) to fit the stage with the picture's own
// aspect ratio; boxes and points are placed in percent of the frame.
function layout() {
  if (el.frame.hidden || !state.shown || !state.shown.width) return;
  const { width: w, height: h } = state.shown;
  const availW = Math.max(50, el.stage.clientWidth - 16);
  const availH = Math.max(200, window.innerHeight * (window.innerWidth < 800 ? 0.55 : 0.72));
  const scale = Math.min(availW / w, availH / h);
  el.frame.style.width = `${w * scale}px`;
  el.frame.style.height = `${h * scale}px`;
}

function clearOverlay() {
  el.overlay.replaceChildren();
  el.results.replaceChildren();
  el.reasoning.hidden = true;
  el.reasoningText.replaceChildren();
}

function marker(p, cls, text, c) {
  const m = document.createElement('div');
  m.className = `marker ${cls}`;
  m.style.left = pct(clamp01(p.x));
  m.style.top = pct(clamp01(p.y));
  m.style.setProperty('--c', c);
  Object.assign(m.dataset, { x: p.x, y: p.y });
  if (text) {
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = text;
    m.append(tag);
  }
  el.overlay.append(m);
  return m;
}

// The reasoning text with its grounded spans (code point offsets) underlined
// and their points drawn; hovering a span (or focusing it) highlights its points.
function showReasoning(r) {
  el.reasoning.hidden = false;
  el.reasoningText.replaceChildren();
  for (const m of el.overlay.querySelectorAll('.ground-pt')) m.remove();
  const chars = Array.from(r.text || '');
  const spans = (r.grounding || []).slice().sort((a, b) => a.start_idx - b.start_idx);
  let at = 0;
  spans.forEach((g, i) => {
    if (g.start_idx > at) el.reasoningText.append(chars.slice(at, g.start_idx).join(''));
    const span = document.createElement('span');
    span.className = 'ground';
    span.tabIndex = 0;
    span.dataset.span = i;
    span.style.setProperty('--c', colour(i));
    span.textContent = chars.slice(Math.max(at, g.start_idx), g.end_idx).join('') || `[${i + 1}]`;
    span.title = `${(g.points || []).length} point(s)`;
    const pts = (g.points || []).map(([x, y]) => {
      const m = marker({ x, y }, 'ground-pt', `${i + 1}`, colour(i));
      m.dataset.span = i;
      return m;
    });
    const on = (v) => () => { span.classList.toggle('hl', v); for (const m of pts) m.classList.toggle('hl', v); };
    span.addEventListener('mouseenter', on(true));
    span.addEventListener('mouseleave', on(false));
    span.addEventListener('focus', on(true));
    span.addEventListener('blur', on(false));
    el.reasoningText.append(span);
    at = Math.max(at, g.end_idx);
  });
  if (at < chars.length) el.reasoningText.append(chars.slice(at).join(''));
}

// Gaze: the eye clicked and where the model says the person looks.
function drawGaze(eye, gaze) {
  clearOverlay();
  marker(eye, 'eye', 'eye', '#ffffff');
  const li = document.createElement('li');
  if (!gaze) {
    li.textContent = `eye x ${eye.x.toFixed(3)}, y ${eye.y.toFixed(3)}: no gaze found`;
    el.results.append(li);
    return;
  }
  marker(gaze, 'gaze', 'gaze', colour(0));
  const r = el.frame.getBoundingClientRect();
  const dx = (clamp01(gaze.x) - clamp01(eye.x)) * r.width, dy = (clamp01(gaze.y) - clamp01(eye.y)) * r.height;
  const line = document.createElement('div');
  line.className = 'gaze-line';
  line.style.left = pct(clamp01(eye.x));
  line.style.top = pct(clamp01(eye.y));
  line.style.width = `${Math.hypot(dx, dy)}px`;
  line.style.transform = `rotate(${Math.atan2(dy, dx)}rad)`;
  line.style.setProperty('--c', colour(0));
  el.overlay.append(line);
  li.style.setProperty('--c', colour(0));
  li.textContent = `gaze from x ${eye.x.toFixed(3)}, y ${eye.y.toFixed(3)} to x ${gaze.x.toFixed(3)}, y ${gaze.y.toFixed(3)}`;
  el.results.append(li);
}

function colour(i) { return `hsl(${(i * 67 + 50) % 360} 95% 55%)`; }
// Coordinates are fractions of the image; the model may answer slightly
// outside [0, 1], which is drawn at the image's edge.
const clamp01 = (v) => Math.min(1, Math.max(0, Number(v) || 0));
const pct = (v) => `${(v * 100).toFixed(4)}%`;

function drawObjects(objects, label) {
  clearOverlay();
  const { width: W, height: H } = state.shown || { width: 0, height: 0 };
  objects.forEach((o, i) => {
    const box = document.createElement('div');
    box.className = 'box';
    const x0 = clamp01(o.x_min), y0 = clamp01(o.y_min), x1 = clamp01(o.x_max), y1 = clamp01(o.y_max);
    box.style.left = pct(Math.min(x0, x1));
    box.style.top = pct(Math.min(y0, y1));
    box.style.width = pct(Math.abs(x1 - x0));
    box.style.height = pct(Math.abs(y1 - y0));
    box.style.setProperty('--c', colour(i));
    box.dataset.index = i;
    Object.assign(box.dataset, { xMin: o.x_min, yMin: o.y_min, xMax: o.x_max, yMax: o.y_max });
    const tag = document.createElement('span');
    tag.className = 'tag';
    if (Math.min(y0, y1) < 0.06) tag.classList.add('inside');
    if (Math.min(x0, x1) > 0.8) tag.classList.add('right');
    tag.textContent = `${label} ${i + 1}`;
    box.append(tag);
    el.overlay.append(box);
    const li = document.createElement('li');
    li.style.setProperty('--c', colour(i));
    const px = W ? ` — ${Math.round(o.x_min * W)},${Math.round(o.y_min * H)} to ${Math.round(o.x_max * W)},${Math.round(o.y_max * H)} px` : '';
    li.textContent = `${label} ${i + 1}: x ${o.x_min.toFixed(3)}–${o.x_max.toFixed(3)}, y ${o.y_min.toFixed(3)}–${o.y_max.toFixed(3)}${px}`;
    el.results.append(li);
  });
}

function drawPoints(points, label) {
  clearOverlay();
  const { width: W, height: H } = state.shown || { width: 0, height: 0 };
  points.forEach((p, i) => {
    const m = document.createElement('div');
    m.className = 'marker';
    m.style.left = pct(clamp01(p.x));
    m.style.top = pct(clamp01(p.y));
    m.style.setProperty('--c', colour(i));
    Object.assign(m.dataset, { index: i, x: p.x, y: p.y });
    const tag = document.createElement('span');
    tag.className = 'tag';
    if (clamp01(p.y) < 0.08) tag.classList.add('below');
    if (clamp01(p.x) > 0.9) tag.classList.add('left');
    tag.textContent = `${i + 1}`;
    m.append(tag);
    el.overlay.append(m);
    const li = document.createElement('li');
    li.style.setProperty('--c', colour(i));
    const px = W ? ` — ${Math.round(p.x * W)},${Math.round(p.y * H)} px` : '';
    li.textContent = `${label} ${i + 1}: x ${p.x.toFixed(3)}, y ${p.y.toFixed(3)}${px}`;
    el.results.append(li);
  });
}

// Shows `url` on the stage; resolves with its size ({0, 0} when the browser cannot decode it).
function showPicture(url) {
  return new Promise((resolve) => {
    const img = el.photo;
    img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
    img.onerror = () => resolve({ width: 0, height: 0 });
    img.src = url;
  });
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error || new Error('cannot read the file'));
    r.readAsDataURL(file);
  });
}

async function useFile(file) {
  state.eye = null;
  if (!file) return;
  stopLive();
  stopCamera();
  abortRequest();
  showError('');
  clearOverlay();
  el.answer.textContent = '';
  let dataUrl;
  try {
    dataUrl = await readDataUrl(file);
  } catch (e) {
    showError(`Cannot read ${file.name}: ${e.message}`);
    return;
  }
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  const size = await showPicture(state.objectUrl);
  state.shown = size;
  state.source = { kind: 'file', name: file.name || 'pasted image', dataUrl, ...size };
  el.noPreviewName.textContent = state.source.name;
  el.sourceInfo.textContent = size.width
    ? `${state.source.name} · ${size.width}×${size.height} · ${fmtBytes(file.size)}`
    : `${state.source.name} · ${fmtBytes(file.size)}`;
  setMode('image');
  updateButtons();
}

// ---- camera ---------------------------------------------------------------------------

async function startCamera() {
  showError('');
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError('The camera is only available on a secure page: open this page as http://localhost:PORT (or over HTTPS).');
    return;
  }
  abortRequest();
  stopCamera();
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: state.facing, width: { ideal: 1280 }, height: { ideal: 720 } },
      audio: false,
    });
  } catch (e) {
    showError(`Cannot start the camera: ${e.message || e.name}`);
    return;
  }
  el.video.srcObject = state.stream;
  try { await el.video.play(); } catch (_) { /* autoplay of a muted stream is allowed */ }
  if (!el.video.videoWidth) await new Promise((r) => el.video.addEventListener('loadedmetadata', r, { once: true }));
  state.source = { kind: 'camera' };
  el.camera.textContent = 'Stop camera';
  el.camera.setAttribute('aria-pressed', 'true');
  el.sourceInfo.textContent = `camera · ${el.video.videoWidth}×${el.video.videoHeight}`;
  clearOverlay();
  el.answer.textContent = '';
  setMode('camera');
  updateButtons();
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    el.switchCamera.hidden = devices.filter((d) => d.kind === 'videoinput').length < 2;
  } catch (_) { /* not needed */ }
}

function stopCamera() {
  if (!state.stream) return;
  stopLive();
  for (const t of state.stream.getTracks()) t.stop();
  state.stream = null;
  el.video.srcObject = null;
  el.camera.textContent = 'Start camera';
  el.camera.setAttribute('aria-pressed', 'false');
  el.switchCamera.hidden = true;
  if (state.source && state.source.kind === 'camera') {
    state.source = null;
    el.sourceInfo.textContent = '';
    // A snapshot stays on the stage as a still image (without a source to re-send).
    setMode(el.stage.dataset.mode === 'snapshot' ? 'image' : 'empty');
  }
  updateButtons();
}

// The current camera frame: {dataUrl (JPEG), width, height}.
function grabFrame() {
  const v = el.video;
  const vw = v.videoWidth, vh = v.videoHeight;
  if (!vw || !vh) throw new ApiError(0, 'camera', 'the camera has no picture yet');
  const s = Math.min(1, CAMERA_MAX_SIDE / Math.max(vw, vh));
  const w = Math.round(vw * s), h = Math.round(vh * s);
  const c = el.grab;
  c.width = w;
  c.height = h;
  c.getContext('2d').drawImage(v, 0, 0, w, h);
  return { dataUrl: c.toDataURL('image/jpeg', 0.9), width: w, height: h };
}

// Puts a camera frame on the stage (the live view shrinks to a corner).
function showFrame(frame) {
  el.photo.onload = null;
  el.photo.onerror = null;
  el.photo.src = frame.dataUrl;
  state.shown = { width: frame.width, height: frame.height };
  setMode('snapshot');
}

// ---- requests --------------------------------------------------------------------------

function settings(t) {
  const s = {};
  const temp = el.temperature.value.trim();
  if (temp !== '' && (t === 'caption' || t === 'query')) s.temperature = Number(temp);
  const mt = el.maxTokens.value.trim();
  if (mt !== '' && (t === 'caption' || t === 'query')) s.max_tokens = Number(mt);
  const mo = el.maxObjects.value.trim();
  if (mo !== '' && (t === 'detect' || t === 'point')) s.max_objects = Number(mo);
  return s;
}

function abortRequest() {
  if (state.controller) state.controller.abort();
}

// Runs the selected task once on the current image; never throws (errors are shown).
// Returns true when an answer arrived.
async function runOnce() {
  if (state.controller) return false;  // one request at a time
  const t = task();
  // A question may go without the image (revision 2025-06-21).
  const withImage = !(t === 'query' && (el.textOnly.checked || !state.source));
  if (withImage && !state.source) {
    showError('Choose an image first: drop one here, paste one, pick a file, or start the camera.');
    return false;
  }
  const body = {};
  let label = '';
  if (t === 'caption') body.length = el.length.value;
  if (t === 'query') {
    body.question = el.question.value.trim();
    if (!body.question) { showError('Type a question first.'); el.question.focus(); return false; }
    if (el.reasoningOn.checked) body.reasoning = true;
  }
  if (t === 'gaze') {
    if (!state.eye) { showError('Click an eye (or face) on the image first.'); return false; }
    body.eye = { x: state.eye.x, y: state.eye.y };
  }
  if (t === 'detect' || t === 'point') {
    body.object = el.object.value.trim();
    label = body.object;
    if (!body.object) { showError('Type the object to look for first.'); el.object.focus(); return false; }
  }
  const s = settings(t);
  if (Object.keys(s).length) body.settings = s;
  const streaming = t === 'caption' || t === 'query';
  if (streaming) body.stream = true;

  const controller = new AbortController();
  state.controller = controller;
  updateButtons();
  showError('');
  el.busy.hidden = false;
  const started = performance.now();
  let ok = false;
  try {
    // A camera frame goes on the stage when its answer starts: text tasks at
    // once (the text streams in), boxes and points with their answer, so the
    // stage never shows boxes over another frame (and live mode never flickers).
    const frame = withImage && state.source.kind === 'camera' ? grabFrame() : null;
    if (withImage) body.image_url = frame ? frame.dataUrl : state.source.dataUrl;
    if (frame && streaming) showFrame(frame);
    if (streaming || !frame) {
      clearOverlay();
      el.answer.textContent = '';
    }
    el.answer.classList.toggle('streaming', streaming);
    state.requests++;
    const out = await post(`/v1/${t}`, body, {
      signal: controller.signal,
      onChunk: streaming ? (c) => { el.answer.textContent += c; } : undefined,
      onReasoning: showReasoning,
    });
    const ms = performance.now() - started;
    if (frame && !streaming) showFrame(frame);
    if (t === 'detect') {
      drawObjects(out.objects || [], label);
      el.answer.textContent = `${(out.objects || []).length} × ${label}`;
    } else if (t === 'point') {
      drawPoints(out.points || [], label);
      el.answer.textContent = `${(out.points || []).length} × ${label}`;
    } else if (t === 'gaze') {
      drawGaze(body.eye, out.gaze);
      el.answer.textContent = out.gaze ? `looking at x ${out.gaze.x.toFixed(3)}, y ${out.gaze.y.toFixed(3)}` : 'no gaze found';
    } else if (!el.answer.textContent) {
      el.answer.textContent = '(empty answer)';
    }
    showTimings(out, ms, t);
    ok = true;
  } catch (e) {
    if (e.name === 'AbortError') {
      addHistory(t, performance.now() - started, null, 'stopped');
    } else {
      showError(e instanceof ApiError ? e.toString() : `Error: ${e.message || e}`);
      addHistory(t, performance.now() - started, null, e.status ? `error ${e.status}` : 'error');
      if (e.status === 401) stopLive('stopped: the server needs an API key');
    }
  } finally {
    el.answer.classList.remove('streaming');
    el.busy.hidden = true;
    state.controller = null;
    updateButtons();
    refreshHealth();
  }
  return ok;
}

function showTimings(out, ms, t) {
  const tm = out.timings || {};
  const u = out.usage || {};
  el.timingsFor.textContent = `${t}, ${new Date().toLocaleTimeString()}`;
  fillDl(el.timings, [
    ['latency', fmtSeconds(ms / 1000), 'from sending the request to the last byte of the answer, seen by this page'],
    ['server total', fmtSeconds(tm.total_s)],
    ['queue', fmtSeconds(tm.queue_s)],
    ['decode image', fmtSeconds(tm.decode_image_s)],
    ['vision', fmtSeconds(tm.vision_s)],
    ['prefill', fmtSeconds(tm.prefill_s)],
    ['generate', fmtSeconds(tm.decode_s)],
    ['tokens', `${tm.decode_tokens ?? u.completion_tokens ?? '–'}`],
    ['tokens/s', typeof tm.decode_tokens_per_s === 'number' ? tm.decode_tokens_per_s.toFixed(1) : '–'],
    ['prompt tokens', `${u.prompt_tokens ?? '–'}`],
    ['image cache', tm.image_cache || '–'],
    ['response cache', tm.response_cache || '–'],
    ['finish', out.finish_reason || '–'],
  ]);
  addHistory(t, ms, tm, 'ok');
}

function addHistory(t, ms, tm, outcome) {
  const li = document.createElement('li');
  li.dataset.outcome = outcome;
  li.dataset.latencyMs = Math.round(ms);
  const time = new Date().toLocaleTimeString();
  let text = `${time} ${t} — ${fmtSeconds(ms / 1000)}`;
  if (tm) {
    text += ` (server ${fmtSeconds(tm.total_s)}`;
    if (tm.decode_tokens) text += `, ${tm.decode_tokens} tok at ${(tm.decode_tokens_per_s || 0).toFixed(1)} tok/s`;
    text += ')';
  } else {
    text += ` · ${outcome}`;
  }
  li.textContent = text;
  el.history.prepend(li);
  while (el.history.children.length > HISTORY_MAX) el.history.lastElementChild.remove();
  if (state.live) el.liveInfo.textContent = `last answer in ${fmtSeconds(ms / 1000)}`;
}

// ---- live mode -------------------------------------------------------------------------

async function startLive() {
  if (state.live || !state.stream) return;
  state.live = true;
  el.live.textContent = 'Stop live';
  el.live.setAttribute('aria-pressed', 'true');
  el.liveInfo.textContent = 'live';
  updateButtons();
  while (state.live) {
    const t0 = performance.now();
    const ok = await runOnce();
    if (!state.live) break;
    const every = Number(el.interval.value) || 0;
    // After an error, wait at least a second before asking again.
    const wait = Math.max(ok ? 0 : 1000, every - (performance.now() - t0));
    await sleep(wait);
  }
}

function stopLive(why) {
  if (!state.live) return;
  state.live = false;
  if (state.liveWake) state.liveWake();
  abortRequest();
  el.live.textContent = 'Start live';
  el.live.setAttribute('aria-pressed', 'false');
  el.liveInfo.textContent = why || 'stopped';
  updateButtons();
}

// ---- health -----------------------------------------------------------------------------

async function refreshHealth() {
  let h;
  try {
    const res = await fetch('/health', { cache: 'no-store' });
    h = await res.json();
  } catch (_) {
    el.healthStatus.textContent = 'unreachable';
    el.healthStatus.dataset.state = 'down';
    return;
  }
  el.healthStatus.textContent = h.status === 'ok' ? (h.busy ? 'busy' : 'ready') : (h.status || 'unknown');
  el.healthStatus.dataset.state = h.status === 'ok' ? (h.busy ? 'busy' : 'ok') : 'loading';
  const c = h.cache || {}, r = h.response_cache || {};
  fillDl(el.healthList, [
    ['model', h.model || '–', h.model_path],
    ['threads', `${h.threads ?? '–'}`],
    ['queue', `${h.queue_depth ?? '–'}/${h.queue_capacity ?? '–'}`],
    ['image cache', c.enabled ? `${c.hits} hits · ${c.misses} misses` : 'off',
      c.enabled ? `${c.entries} entries, ${fmtBytes(c.bytes)} of ${fmtBytes(c.max_bytes)}` : ''],
    ['response cache', r.enabled ? `${r.hits} hits · ${r.misses} misses` : 'off'],
    ['memory', fmtBytes(h.rss_bytes)],
    ['version', h.version || '–'],
  ]);
}

function startHealthPolling() {
  if (state.healthTimer) return;
  refreshHealth();
  state.healthTimer = setInterval(refreshHealth, HEALTH_EVERY_MS);
}

function stopHealthPolling() {
  clearInterval(state.healthTimer);
  state.healthTimer = null;
}

// ---- wiring ------------------------------------------------------------------------------

function updateButtons() {
  const busy = !!state.controller;
  el.run.disabled = busy || state.live;
  el.stop.disabled = !busy && !state.live;
  el.live.disabled = !state.stream;
}

function updateTaskOptions() {
  const t = task();
  for (const d of document.querySelectorAll('.task-opts')) d.hidden = !d.dataset.tasks.split(' ').includes(t);
  el.frame.classList.toggle('pick', t === 'gaze');
}

// Gaze: a click on the picture picks the eye.
el.frame.addEventListener('click', (e) => {
  if (task() !== 'gaze') return;
  const r = el.frame.getBoundingClientRect();
  state.eye = { x: clamp01((e.clientX - r.left) / r.width), y: clamp01((e.clientY - r.top) / r.height) };
  clearOverlay();
  marker(state.eye, 'eye', 'eye', '#ffffff');
  el.gazeHint.textContent = `Eye at x ${state.eye.x.toFixed(3)}, y ${state.eye.y.toFixed(3)}: press Run.`;
});

el.form.addEventListener('submit', (e) => { e.preventDefault(); runOnce(); });
el.form.addEventListener('change', (e) => { if (e.target.name === 'task') updateTaskOptions(); });
el.stop.addEventListener('click', () => { stopLive('stopped'); abortRequest(); });
el.live.addEventListener('click', () => (state.live ? stopLive('stopped') : startLive()));
el.interval.addEventListener('change', () => { if (state.liveWake) state.liveWake(); });
el.choose.addEventListener('click', () => el.file.click());
el.placeholder.addEventListener('click', () => el.file.click());
el.file.addEventListener('change', () => { useFile(el.file.files[0]); el.file.value = ''; });
el.camera.addEventListener('click', () => (state.stream ? stopCamera() : startCamera()));
el.switchCamera.addEventListener('click', () => {
  state.facing = state.facing === 'environment' ? 'user' : 'environment';
  startCamera();
});
el.backToCamera.addEventListener('click', () => { clearOverlay(); setMode('camera'); });

document.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !el.keyDialog.open) {
    e.preventDefault();
    if (!el.run.disabled) runOnce();
  } else if (e.key === 'Escape' && !el.keyDialog.open && (state.controller || state.live)) {
    stopLive('stopped');
    abortRequest();
  }
});

window.addEventListener('paste', (e) => {
  const items = [...(e.clipboardData ? e.clipboardData.items : [])];
  const item = items.find((it) => it.kind === 'file');
  if (!item) return;
  e.preventDefault();
  useFile(item.getAsFile());
});

let dragDepth = 0;
window.addEventListener('dragenter', (e) => {
  if (!e.dataTransfer || ![...e.dataTransfer.types].includes('Files')) return;
  dragDepth++;
  el.dropHint.hidden = false;
});
window.addEventListener('dragleave', () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) el.dropHint.hidden = true;
});
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => {
  e.preventDefault();
  dragDepth = 0;
  el.dropHint.hidden = true;
  const f = e.dataTransfer && e.dataTransfer.files[0];
  if (f) useFile(f);
});

document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    stopLive('stopped: the tab was hidden');
    stopHealthPolling();
  } else {
    startHealthPolling();
  }
});

let lastStageWidth = 0;
new ResizeObserver(() => {
  if (el.stage.clientWidth !== lastStageWidth) {
    lastStageWidth = el.stage.clientWidth;
    layout();
  }
}).observe(el.stage);
window.addEventListener('resize', layout);

updateTaskOptions();
updateButtons();
startHealthPolling();
document.documentElement.dataset.ready = '1';
