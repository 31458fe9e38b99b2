// The web page's 2025-06-21 skills in Debian's headless Chromium (playwright-
// core), against moondream-server on the 2025-06-21 tiny model:
//   node revision_ui.mjs --base URL --image PATH --expect JSON_FILE --out DIR
// JSON_FILE: {"question", "reasoning": {"text", "grounding"}, "text_only", "gaze_eye": {x, y}}
// Checks: the reasoning switch shows the reasoning text with one underlined
// span per grounded span and its points drawn on the image; hovering a span
// highlights exactly its points; a question without the image is answered;
// clicking an eye in gaze mode sends that eye and draws the answer. Prints one
// JSON line; exits non-zero on the first failure.
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const BASE = args.base.replace(/\/$/, '');
const want = JSON.parse(fs.readFileSync(args.expect, 'utf8'));
const T = Number(process.env.WEB_UI_TIMEOUT_MS || 60000);
fs.mkdirSync(args.out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking'],
  timeout: T,
});
const summary = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const bodies = [];
  page.on('request', (r) => { if (r.url().includes('/v1/')) bodies.push({ url: r.url(), body: r.postData() }); });
  await page.goto(BASE + '/', { timeout: T });

  // Reasoning on an image.
  await page.setInputFiles('#file', args.image);
  await page.waitForSelector('#frame:not([hidden])', { timeout: T });
  await page.check('input[name="task"][value="query"]');
  await page.fill('#question', want.question);
  await page.check('#reasoning-on');
  await page.click('#run');
  await page.waitForSelector('#reasoning:not([hidden])', { timeout: T });
  await page.waitForFunction(() => document.querySelector('#busy').hidden, null, { timeout: T });
  const shown = await page.$eval('#reasoning-text', (e) => e.textContent);
  const grounding = want.reasoning.grounding;
  // Each span's text is its slice of the reasoning (code points); spans cover their ranges.
  const chars = Array.from(want.reasoning.text);
  const spans = await page.$$eval('.ground', (es) => es.map((e) => e.textContent));
  assert.equal(spans.length, grounding.length, 'one underlined span per grounded span');
  grounding.forEach((g, i) => {
    const text = chars.slice(g.start_idx, g.end_idx).join('');
    assert.equal(spans[i], text || `[${i + 1}]`);
  });
  if (grounding.every((g) => g.end_idx > g.start_idx)) assert.equal(shown, want.reasoning.text);
  const totalPoints = grounding.reduce((n, g) => n + g.points.length, 0);
  assert.equal(await page.locator('.marker.ground-pt').count(), totalPoints, 'every grounded point drawn');
  if (grounding.length) {
    await page.hover('.ground[data-span="0"]');
    const hl = await page.$$eval('.marker.ground-pt.hl', (es) => es.map((e) => e.dataset.span));
    assert.equal(hl.length, grounding[0].points.length, 'hovering a span highlights its points');
    assert.ok(hl.every((s) => s === '0'));
    await page.mouse.move(0, 0);
    assert.equal(await page.locator('.marker.ground-pt.hl').count(), 0);
  }
  const q = JSON.parse(bodies.at(-1).body);
  assert.equal(q.reasoning, true);
  assert.ok(q.image_url.startsWith('data:'));
  await page.screenshot({ path: path.join(args.out, 'reasoning.png') });
  summary.reasoning = { spans: spans.length, points: totalPoints };

  // A question without the image.
  await page.uncheck('#reasoning-on');
  await page.check('#text-only');
  await page.click('#run');
  await page.waitForFunction(() => document.querySelector('#busy').hidden && document.querySelector('#answer').textContent, null, { timeout: T });
  const t = JSON.parse(bodies.at(-1).body);
  assert.equal(t.image_url, undefined, 'text-only questions send no image');
  assert.equal(await page.$eval('#answer', (e) => e.textContent), want.text_only || '(empty answer)');
  summary.text_only = true;

  // Gaze: click the eye.
  await page.check('input[name="task"][value="gaze"]');
  const box = await page.locator('#frame').boundingBox();
  await page.mouse.click(box.x + box.width * want.gaze_eye.x, box.y + box.height * want.gaze_eye.y);
  await page.click('#run');
  await page.waitForFunction(() => document.querySelector('#busy').hidden && document.querySelector('#answer').textContent, null, { timeout: T });
  const g = JSON.parse(bodies.at(-1).body);
  assert.ok(Math.abs(g.eye.x - want.gaze_eye.x) < 0.01 && Math.abs(g.eye.y - want.gaze_eye.y) < 0.01, JSON.stringify(g.eye));
  assert.equal(await page.locator('.marker.eye').count(), 1);
  await page.screenshot({ path: path.join(args.out, 'gaze.png') });
  summary.gaze = { eye: g.eye, answer: await page.$eval('#answer', (e) => e.textContent) };
  assert.deepEqual(errors, []);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(summary) + '\n');
