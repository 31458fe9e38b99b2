// Drives moondream-server's web page in Debian's headless Chromium with
// playwright-core, against the real server on the tiny model:
//   node web_ui.mjs --base URL --key-base URL --key KEY --out DIR
// --base serves without an API key; --key-base needs KEY. Screenshots go to
// DIR/*.png. Checks:
//   - upload -> caption: the answer streams into the page (several growing
//     states) and ends as the API's greedy caption; timings and health shown;
//   - detect on a 640x360 image: every box sits where the API's normalised
//     coordinates put it on the drawn image (DOM and screenshot pixels), on a
//     desktop and a phone viewport; point markers the same, driven by keyboard;
//   - camera (fake device) live mode: repeated requests, never two in flight,
//     spaced by the interval, stops when asked and when the tab is hidden;
//   - a text file uploaded as an image: the server's 400 shown readably;
//   - API key: asked once on 401, kept in session storage, sent afterwards;
//   - no request leaves the server's origin, no CSP violation, no page error.
// Prints one JSON line of measurements; exits non-zero on the first failure.
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const k of ['base', 'key-base', 'key', 'out']) {
  if (!args[k]) {
    console.error('usage: node web_ui.mjs --base URL --key-base URL --key KEY --out DIR');
    process.exit(2);
  }
}
const BASE = args.base.replace(/\/$/, '');
const KEY_BASE = args['key-base'].replace(/\/$/, '');
const OUT = args.out;
const T = Number(process.env.WEB_UI_TIMEOUT_MS || 60000);  // one step's time limit (ASan builds are slower)
fs.mkdirSync(OUT, { recursive: true });

const summary = {};
const log = (...a) => console.error('[web_ui]', ...a);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
         '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking'],
  timeout: T,
});

// Watches a page: API requests in flight, requests to other origins, errors.
function watch(page, origin) {
  const w = { api: [], inflight: 0, maxInflight: 0, external: [], errors: [], csp: [] };
  const entries = new Map();
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol !== 'data:' && u.protocol !== 'blob:' && u.origin !== origin) w.external.push(r.url());
    if (u.pathname.startsWith('/v1/')) {
      const e = { path: u.pathname, start: Date.now(), end: 0, auth: r.headers().authorization || '' };
      entries.set(r, e);
      w.api.push(e);
      w.inflight++;
      w.maxInflight = Math.max(w.maxInflight, w.inflight);
    }
  });
  const done = (r) => {
    const e = entries.get(r);
    if (!e || e.end) return;
    e.end = Date.now();
    w.inflight--;
  };
  page.on('requestfinished', done);
  page.on('requestfailed', done);
  page.on('pageerror', (e) => w.errors.push(String(e)));
  page.on('console', (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) w.csp.push(t);
    else if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of (400|401)/.test(t))
      w.errors.push(t);
  });
  return w;
}

function checkClean(w, what) {
  assert.deepEqual(w.external, [], `${what}: requests to other origins`);
  assert.deepEqual(w.csp, [], `${what}: Content-Security-Policy violations`);
  assert.deepEqual(w.errors, [], `${what}: page errors`);
}

async function shot(page, name) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const until = async (what, fn, timeout = T) => {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

let current = null;  // the page under test, for a screenshot on failure
try {
// A page with no origin restrictions of its own, for canvas work.
const scratch = await browser.newPage();
await scratch.setContent('<canvas id="c"></canvas>');

// The 640x360 test picture: shapes on a gradient (PNG).
const wideB64 = await scratch.evaluate(() => {
  const c = document.createElement('canvas');
  c.width = 640;
  c.height = 360;
  const g = c.getContext('2d');
  const grad = g.createLinearGradient(0, 0, 640, 360);
  grad.addColorStop(0, '#1d4e89');
  grad.addColorStop(1, '#7fb7be');
  g.fillStyle = grad;
  g.fillRect(0, 0, 640, 360);
  g.fillStyle = '#f2c14e';
  g.fillRect(60, 50, 200, 250);
  g.fillStyle = '#d1495b';
  g.beginPath();
  g.arc(480, 180, 100, 0, Math.PI * 2);
  g.fill();
  return c.toDataURL('image/png').split(',')[1];
});
const widePng = Buffer.from(wideB64, 'base64');
const wideUrl = `data:image/png;base64,${wideB64}`;

// Colours of screenshot pixels at CSS-pixel positions (deviceScaleFactor 1).
async function pixelsAt(pngBuffer, points) {
  return scratch.evaluate(async ({ b64, points }) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.getElementById('c');
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext('2d', { willReadFrequently: true });
    g.drawImage(img, 0, 0);
    return points.map(([x, y]) => Array.from(g.getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3)));
  }, { b64: pngBuffer.toString('base64'), points });
}

async function apiJson(base, p, body, key) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  const r = await fetch(base + p, { method: 'POST', headers, body: JSON.stringify(body) });
  const j = await r.json();
  assert.equal(r.status, 200, `${p}: ${JSON.stringify(j)}`);
  return j;
}

const clamp01 = (v) => Math.min(1, Math.max(0, v));

// Every .box / .marker against the API's coordinates on the drawn picture.
async function checkOverlay(page, kind, items) {
  const geo = await page.evaluate((kind) => {
    const r = (e) => { const b = e.getBoundingClientRect(); return { l: b.left, t: b.top, w: b.width, h: b.height }; };
    return {
      photo: r(document.getElementById('photo')),
      natural: [document.getElementById('photo').naturalWidth, document.getElementById('photo').naturalHeight],
      stage: r(document.getElementById('stage')),
      items: [...document.querySelectorAll(kind === 'box' ? '#overlay .box' : '#overlay .marker')].map(r),
      vw: document.documentElement.clientWidth,
      scrollW: document.documentElement.scrollWidth,
    };
  }, kind);
  assert.equal(geo.items.length, items.length, `${kind}: one per API result`);
  // The picture keeps its aspect ratio and fits the stage.
  assert.deepEqual(geo.natural, [640, 360]);
  assert.ok(Math.abs(geo.photo.w / geo.photo.h - 640 / 360) < 0.01, `aspect ${geo.photo.w}x${geo.photo.h}`);
  assert.ok(geo.photo.w <= geo.stage.w + 0.5, 'picture wider than the stage');
  assert.ok(geo.photo.w > 0.6 * geo.stage.w, `picture not shown large (${geo.photo.w} of ${geo.stage.w})`);
  assert.ok(geo.scrollW <= geo.vw + 1, `page scrolls sideways (${geo.scrollW} > ${geo.vw})`);
  const P = geo.photo;
  let maxErr = 0;
  const expected = [];
  items.forEach((o, i) => {
    const g = geo.items[i];
    if (kind === 'box') {
      const x0 = clamp01(o.x_min), x1 = clamp01(o.x_max), y0 = clamp01(o.y_min), y1 = clamp01(o.y_max);
      const want = { l: P.l + Math.min(x0, x1) * P.w, t: P.t + Math.min(y0, y1) * P.h,
                     r: P.l + Math.max(x0, x1) * P.w, b: P.t + Math.max(y0, y1) * P.h };
      const got = { l: g.l, t: g.t, r: g.l + g.w, b: g.t + g.h };
      for (const k of ['l', 't', 'r', 'b']) {
        const e = Math.abs(got[k] - want[k]);
        maxErr = Math.max(maxErr, e);
        assert.ok(e <= 1.0, `box ${i} ${k}: drawn at ${got[k].toFixed(2)}, API says ${want[k].toFixed(2)} (${JSON.stringify(o)})`);
      }
      expected.push(want);
    } else {
      const want = { x: P.l + clamp01(o.x) * P.w, y: P.t + clamp01(o.y) * P.h };
      const got = { x: g.l + g.w / 2, y: g.t + g.h / 2 };
      for (const k of ['x', 'y']) {
        const e = Math.abs(got[k] - want[k]);
        maxErr = Math.max(maxErr, e);
        assert.ok(e <= 1.0, `marker ${i} ${k}: drawn at ${got[k].toFixed(2)}, API says ${want[k].toFixed(2)}`);
      }
      expected.push(want);
    }
  });
  return { maxErr, expected, photo: P };
}

// The screenshot itself: the left, right and bottom lines of the last box
// large enough to have them are drawn in its colour at the API's positions.
async function checkBoxPixels(page, name, expected) {
  const png = await page.screenshot({ path: path.join(OUT, `${name}.png`) });
  let i = expected.length - 1;
  while (i >= 0 && (expected[i].r - expected[i].l < 10 || expected[i].b - expected[i].t < 10)) i--;
  assert.ok(i >= 0, `${name}: no box is 10 px wide and high: ${JSON.stringify(expected)}`);
  const b = expected[i];
  const colour = await page.evaluate((i) => {
    const box = document.querySelectorAll('#overlay .box')[i];
    const c = getComputedStyle(box).getPropertyValue('--c');
    const probe = document.createElement('span');
    probe.style.color = c;
    document.body.append(probe);
    const rgb = getComputedStyle(probe).color;
    probe.remove();
    return rgb.match(/[\d.]+/g).slice(0, 3).map(Number);
  }, i);
  const midY = (b.t + b.b) / 2, midX = (b.l + b.r) / 2;
  const inside = [[b.l + 1.5, midY], [b.r - 1.5, midY], [midX, b.b - 1.5]];
  const px = await pixelsAt(png, inside);
  px.forEach((p, k) => {
    const d = Math.max(...p.map((v, c) => Math.abs(v - colour[c])));
    assert.ok(d <= 40, `${name}: box ${i} border ${['left', 'right', 'bottom'][k]} pixel ${p} is not the box colour ${colour}`);
  });
  return { colour, sampled: px };
}

// ---------------------------------------------------------------------------------------
const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
await ctx.grantPermissions(['camera'], { origin: BASE });
const page = await ctx.newPage();
current = page;
page.setDefaultTimeout(T);
const origin = new URL(BASE).origin;
const w = watch(page, origin);
// File choosers are intercepted from the start (no race with the key press).
const choosers = [];
page.on('filechooser', (fc) => choosers.push(fc));

// 1. The page loads and shows the server's health.
await page.goto(BASE + '/');
await page.waitForSelector('html[data-ready="1"]');
await until('health', () => page.locator('#health-list').innerText().then((t) => t.includes('moondream2-tiny')));
const healthText = await page.locator('#health-list').innerText();
assert.match(healthText, /threads/);
assert.match(healthText, /image cache/);
assert.equal(await page.locator('#health-status').innerText(), 'ready');

// 2. Upload -> caption streams in.
await page.locator('#file').setInputFiles({ name: 'wide.png', mimeType: 'image/png', buffer: widePng });
await until('the picture', () => page.evaluate(() => document.getElementById('photo').naturalWidth === 640));
await page.locator('summary').click();
await page.locator('#temperature').fill('0');
await page.locator('#max-tokens').fill('24');
await page.evaluate(() => {
  window.__answers = [];
  const a = document.getElementById('answer');
  new MutationObserver(() => window.__answers.push(a.textContent)).observe(a, { childList: true, characterData: true, subtree: true });
});
const captionResponse = page.waitForResponse((r) => r.url().endsWith('/v1/caption'));
await page.locator('#run').click();
await captionResponse;
await until('the caption', () => page.locator('#history li').count().then((n) => n >= 1));
const answers = (await page.evaluate(() => window.__answers)).filter((s) => s.length > 0);
const finalCaption = await page.locator('#answer').innerText();
const refCaption = (await apiJson(BASE, '/v1/caption', {
  image_url: wideUrl, length: 'normal', settings: { temperature: 0, max_tokens: 24 },
})).caption;
assert.equal(finalCaption.trim(), refCaption.trim(), 'the page shows the API\'s caption');
const distinct = [...new Set(answers)];
assert.ok(distinct.length >= 3, `the caption arrived in ${distinct.length} piece(s), not streamed: ${JSON.stringify(distinct)}`);
for (let i = 1; i < distinct.length; i++) assert.ok(distinct[i].startsWith(distinct[i - 1]), 'the caption only grows');
const timingsText = await page.locator('#timings').innerText();
for (const k of ['decode image', 'vision', 'prefill', 'generate', 'tokens/s', 'latency']) assert.ok(timingsText.includes(k), `timings show ${k}`);
assert.match(await page.locator('#history li').first().innerText(), /caption .*\d+ tok at [\d.]+ tok\/s/);
summary.caption = { states: distinct.length, text: finalCaption };
await shot(page, '01-caption-streamed');

// 3. Detect on the 640x360 picture: boxes where the API says.
await page.locator('input[name="task"][value="detect"]').check();
await page.locator('#object').fill('face');
await page.locator('#max-objects').fill('3');
const detectResponse = page.waitForResponse((r) => r.url().endsWith('/v1/detect'));
await page.locator('#run').click();
const detected = await (await detectResponse).json();
assert.ok(detected.objects.length >= 1 && detected.objects.length <= 3, `objects: ${detected.objects.length}`);
await until('the boxes', () => page.locator('#overlay .box').count().then((n) => n === detected.objects.length));
const desk = await checkOverlay(page, 'box', detected.objects);
const deskPx = await checkBoxPixels(page, '02-detect-boxes-desktop', desk.expected);
assert.equal(await page.locator('#results li').count(), detected.objects.length);
summary.detect_desktop = { objects: detected.objects, max_error_px: desk.maxErr, photo: desk.photo, pixels: deskPx };

// The same boxes on a phone screen (the page lays itself out again).
await page.setViewportSize({ width: 390, height: 844 });
await until('the phone layout', async () => (await page.evaluate(() => document.getElementById('photo').getBoundingClientRect().width)) < 390);
const phone = await checkOverlay(page, 'box', detected.objects);
const phonePx = await checkBoxPixels(page, '03-detect-boxes-phone', phone.expected);
await shot(page, '03-phone-full');
summary.detect_phone = { max_error_px: phone.maxErr, photo: phone.photo, pixels: phonePx };
await page.setViewportSize({ width: 1280, height: 900 });

// 4. Keyboard only: choose the file with the keyboard, pick "Point", run with Ctrl+Enter.
await page.locator('#choose').focus();
await page.keyboard.press('Enter');
await (await until('the file chooser', () => choosers.shift())).setFiles({ name: 'wide-again.png', mimeType: 'image/png', buffer: widePng });
await until('the picture again', () => page.locator('#source-info').innerText().then((t) => t.includes('wide-again.png')));
await page.locator('input[name="task"][value="detect"]').focus();
await page.keyboard.press('ArrowRight');  // radio group: detect -> point
assert.equal(await page.evaluate(() => document.querySelector('input[name="task"]:checked').value), 'point');
await page.locator('#object').focus();
const pointResponse = page.waitForResponse((r) => r.url().endsWith('/v1/point'));
await page.keyboard.press('Control+Enter');
const pointed = await (await pointResponse).json();
await until('the markers', () => page.locator('#overlay .marker').count().then((n) => n === pointed.points.length));
const pts = await checkOverlay(page, 'marker', pointed.points);
await shot(page, '04-point-markers');
summary.point = { points: pointed.points.length, max_error_px: pts.maxErr };

// 5. A text file uploaded as an image: the server's 400, readable.
await page.locator('#file').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('These are notes, not a picture.\n') });
await until('the file', () => page.locator('#source-info').innerText().then((t) => t.includes('notes.txt')));
assert.ok(await page.locator('#no-preview').isVisible(), 'the page says it cannot show the file');
await page.locator('input[name="task"][value="caption"]').check();
const badResponse = page.waitForResponse((r) => r.url().endsWith('/v1/caption'));
await page.locator('#run').click();
assert.equal((await badResponse).status(), 400);
await page.locator('#error').waitFor({ state: 'visible' });
const errText = await page.locator('#error').innerText();
assert.match(errText, /^Error 400 \(invalid_image\): \S.{10,}/, errText);
assert.ok(!/[{}]/.test(errText), `the message is not raw JSON: ${errText}`);
assert.equal(await page.locator('#error').getAttribute('role'), 'alert');
summary.error_message = errText;
await shot(page, '05-error-400');

// Drag and drop, and paste, bring an image in too (and clear the error).
const dropFile = (type, name) => page.evaluate(({ b64, type, name }) => {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: 'image/png' }));
  const ev = type === 'drop' ? new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })
                             : new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
  document.getElementById('stage').dispatchEvent(ev);
}, { b64: wideB64, type, name });
await dropFile('drop', 'dropped.png');
await until('the dropped picture', () => page.locator('#source-info').innerText().then((t) => t.startsWith('dropped.png · 640×360')));
assert.ok(await page.locator('#error').isHidden(), 'a new picture clears the error');
await dropFile('paste', 'pasted.png');
await until('the pasted picture', () => page.locator('#source-info').innerText().then((t) => t.startsWith('pasted.png · 640×360')));

// 6. Camera live mode, as fast as the server answers: one request at a time; stops when asked.
await page.locator('#camera').click();
await until('the camera', () => page.evaluate(() => document.getElementById('video').videoWidth > 0));
await page.locator('input[name="task"][value="detect"]').check();
await page.locator('#interval').selectOption('0');
const before = w.api.length;
await page.locator('#live').click();
assert.equal(await page.locator('#live').getAttribute('aria-pressed'), 'true');
await until('4 live answers', async () => w.api.slice(before).filter((e) => e.end).length >= 4);
// The analysed frame stays on the stage with its boxes while the next one is asked.
assert.equal(await page.locator('#stage').getAttribute('data-mode'), 'snapshot');
assert.ok(await page.locator('#overlay .box').count() > 0, 'boxes over the camera frame');
assert.ok(await page.locator('#video').isVisible(), 'the live view stays visible');
await shot(page, '06-camera-live');
await page.locator('#live').click();  // stop
assert.equal(await page.locator('#live').getAttribute('aria-pressed'), 'false');
await until('the last live request to end', async () => w.inflight === 0, 10000);
const afterStop = w.api.length;
await new Promise((r) => setTimeout(r, 2500));
assert.equal(w.api.length, afterStop, 'no request after stopping live mode');
const fast = w.api.slice(before);
assert.equal(w.maxInflight, 1, 'never more than one request in flight');
for (let i = 1; i < fast.length; i++) assert.ok(fast[i].start >= fast[i - 1].end, 'each request starts after the previous answer');
const latencies = await page.locator('#history li').evaluateAll((lis) => lis.map((l) => Number(l.dataset.latencyMs)));
assert.ok(latencies.length >= 4 && latencies.every((x) => x > 0), 'latency of each answer shown');
assert.match(await page.locator('#live-info').innerText(), /stopped/);
summary.live_fast = { requests: fast.length, max_in_flight: w.maxInflight, gaps_ms: fast.slice(1).map((e, i) => e.start - fast[i].end) };

// Every second: answers spaced by the interval; stops when the tab is hidden.
await page.locator('#interval').selectOption('1000');
const before2 = w.api.length;
await page.locator('#live').click();
await until('3 paced live requests', async () => w.api.length - before2 >= 3 && w.api[w.api.length - 1].end > 0);
const paced = w.api.slice(before2);
// (Start times as the test's route sees them, after the browser's network
// stack: on a busy 2-core machine that adds tens of ms of jitter (937 ms
// was seen once under ctest -j 2); unpaced requests would follow each
// answer at once, far under 900.)
for (let i = 1; i < paced.length; i++) assert.ok(paced[i].start - paced[i - 1].start >= 900, `requests ${paced[i].start - paced[i - 1].start} ms apart, not 1 s`);
await page.evaluate(() => {
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
  document.dispatchEvent(new Event('visibilitychange'));
});
assert.equal(await page.locator('#live').getAttribute('aria-pressed'), 'false');
assert.match(await page.locator('#live-info').innerText(), /hidden/);
await until('the in-flight request to end', async () => w.inflight === 0, 10000);
const afterHide = w.api.length;
await new Promise((r) => setTimeout(r, 2500));
assert.equal(w.api.length, afterHide, 'no request while the tab is hidden');
assert.equal(w.maxInflight, 1, 'never more than one request in flight');
await page.evaluate(() => {
  delete document.hidden;
  delete document.visibilityState;
  document.dispatchEvent(new Event('visibilitychange'));
});
await shot(page, '07-live-stopped-hidden');
summary.live_paced = { requests: paced.length, starts_ms: paced.slice(1).map((e, i) => e.start - paced[i].start) };
await page.locator('#camera').click();  // stop the camera
checkClean(w, 'main page');
await ctx.close();

// 7. API key: the page loads without it, asks once on 401, keeps it for the tab.
const kctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
const kpage = await kctx.newPage();
current = kpage;
kpage.setDefaultTimeout(T);
const kw = watch(kpage, new URL(KEY_BASE).origin);
await kpage.goto(KEY_BASE + '/');
await kpage.waitForSelector('html[data-ready="1"]');
await kpage.locator('#file').setInputFiles({ name: 'wide.png', mimeType: 'image/png', buffer: widePng });
await kpage.locator('input[name="task"][value="point"]').check();
await kpage.locator('#run').click();
await kpage.locator('#key-dialog[open]').waitFor();
await shot(kpage, '08-api-key-dialog');
await kpage.locator('#key-input').fill('wrong-key');
await kpage.keyboard.press('Enter');
await until('the second ask', () => kpage.locator('#key-reason').innerText().then((t) => /not accepted/.test(t)));
await kpage.locator('#key-dialog[open]').waitFor();
await kpage.locator('#key-input').fill(args.key);
await kpage.keyboard.press('Enter');
await until('points with the key', () => kpage.locator('#overlay .marker').count().then((n) => n > 0));
assert.equal(await kpage.evaluate(() => sessionStorage.getItem('moondream.apiKey')), args.key);
const nBefore = kw.api.length;
await kpage.locator('#run').click();
await until('a second answer', () => kpage.locator('#history li').count().then((n) => n >= 2));
assert.equal(kw.api.length, nBefore + 1, 'asked once, answered at once');
assert.equal(kw.api[kw.api.length - 1].auth, `Bearer ${args.key}`);
await kpage.reload();
await kpage.waitForSelector('html[data-ready="1"]');
await kpage.locator('#file').setInputFiles({ name: 'wide.png', mimeType: 'image/png', buffer: widePng });
await kpage.locator('#run').click();
await until('an answer after reload', () => kpage.locator('#history li').count().then((n) => n >= 1));
assert.ok(!(await kpage.locator('#key-dialog').evaluate((d) => d.open)), 'no second ask after a reload');
assert.ok(await kpage.locator('#error').isHidden(), await kpage.locator('#error').innerText());
await shot(kpage, '09-api-key-used');
summary.api_key = { requests: kw.api.map((e) => ({ path: e.path, auth: e.auth ? 'Bearer …' : '' })) };
checkClean(kw, 'key page');
await kctx.close();

console.log(JSON.stringify(summary));
} catch (e) {
  process.exitCode = 1;
  console.error('[web_ui] FAILED:', e && e.stack ? e.stack : e);
  if (current) await current.screenshot({ path: path.join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close().catch(() => {});
}
