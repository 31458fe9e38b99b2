// Drives a moondream-server running a 2025-06-21 model with the official
// clients, unchanged: the `moondream` npm client (query with reasoning, a
// question without an image, point with spatial references) and the `openai`
// client (a conversation without an image). Prints one JSON line for the
// calling test (tests/server_revision_ref_test.cpp) to compare with the engine.
//   node revision_clients.mjs BASE_URL IMAGE_PATH QUESTION
import fs from 'node:fs';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import OpenAI from 'openai';

const require = createRequire(import.meta.url);
// The moondream client loads sharp to convert local image files; these tests
// give it data URLs (the client's `imageUrl` form), which it sends as they
// are, and sharp's native binary is not installed (install-deps.sh).
require.cache[require.resolve('sharp')] = {
  id: 'sharp',
  filename: require.resolve('sharp'),
  loaded: true,
  exports: () => {
    throw new Error('sharp is not available in the tests: pass {imageUrl}');
  },
};
const { vl } = require('moondream');

const [baseURL, imagePath, question] = process.argv.slice(2);
if (!baseURL || !imagePath || !question) {
  console.error('usage: node revision_clients.mjs BASE_URL IMAGE_PATH QUESTION');
  process.exit(2);
}
const imageUrl = `data:image/png;base64,${fs.readFileSync(imagePath).toString('base64')}`;
const md = new vl({ endpoint: baseURL, apiKey: 'not-needed' });

const reasoned = await md.query({ image: { imageUrl }, question, reasoning: true });
assert.equal(typeof reasoned.answer, 'string');
assert.ok(reasoned.reasoning, 'query({reasoning: true}) returned no reasoning object');
assert.equal(typeof reasoned.reasoning.text, 'string');
assert.ok(Array.isArray(reasoned.reasoning.grounding));

const textOnly = await md.query({ question });
assert.equal(typeof textOnly.answer, 'string');
assert.equal(textOnly.reasoning, undefined);

const pointed = await md.point({ image: { imageUrl }, object: 'cat' });
assert.ok(Array.isArray(pointed.points));

const openai = new OpenAI({ baseURL, apiKey: 'not-needed', maxRetries: 0 });
const chat = await openai.chat.completions.create({
  model: 'moondream2',
  messages: [{ role: 'user', content: question }],
  temperature: 0,
  max_tokens: 16,
});
assert.equal(chat.object, 'chat.completion');
assert.equal(typeof chat.choices[0].message.content, 'string');

process.stdout.write(
  JSON.stringify({
    reasoning: reasoned.reasoning,
    answer: reasoned.answer,
    text_only: textOnly.answer,
    points: pointed.points,
    chat: chat.choices[0].message.content,
  }) + '\n',
);
