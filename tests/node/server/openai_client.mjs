// Drives moondream-server with the official `openai` npm client, unchanged:
//   node openai_client.mjs BASE_URL IMAGE_PATH QUESTION MAX_TOKENS
// Checks a plain and a streaming chat completion (same greedy answer), the
// model list and a 400 for a message without an image, then prints one JSON
// line {"content", "streamed", "finish_reason", "usage", "models"} for the
// calling test to compare with the Moondream API.
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [baseURL, imagePath, question, maxTokensArg] = process.argv.slice(2);
if (!baseURL || !imagePath || !question) {
  console.error('usage: node openai_client.mjs BASE_URL IMAGE_PATH QUESTION [MAX_TOKENS]');
  process.exit(2);
}
const maxTokens = Number(maxTokensArg || 24);
const ext = path.extname(imagePath).toLowerCase();
const mime = ext === '.png' ? 'image/png' : ext === '.webp' ? 'image/webp' : 'image/jpeg';
const url = `data:${mime};base64,${fs.readFileSync(imagePath).toString('base64')}`;

const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || 'not-needed', maxRetries: 0 });
const messages = [
  {
    role: 'user',
    content: [
      { type: 'text', text: question },
      { type: 'image_url', image_url: { url } },
    ],
  },
];

const plain = await client.chat.completions.create({
  model: 'moondream2',
  messages,
  temperature: 0,
  max_tokens: maxTokens,
});
assert.equal(plain.object, 'chat.completion');
assert.equal(plain.choices.length, 1);
assert.equal(plain.choices[0].message.role, 'assistant');
assert.equal(typeof plain.choices[0].message.content, 'string');
assert.ok(['stop', 'length'].includes(plain.choices[0].finish_reason));
assert.ok(plain.usage.completion_tokens > 0);
assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);

const stream = await client.chat.completions.create({
  model: 'moondream2',
  messages,
  temperature: 0,
  max_tokens: maxTokens,
  stream: true,
  stream_options: { include_usage: true },
});
let streamed = '';
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  assert.equal(chunk.object, 'chat.completion.chunk');
  if (chunk.choices.length) {
    streamed += chunk.choices[0].delta.content ?? '';
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
    chunks++;
  }
  if (chunk.usage) usage = chunk.usage;
}
assert.ok(chunks >= 2, 'several chunks');
assert.equal(streamed, plain.choices[0].message.content);
assert.equal(finish, plain.choices[0].finish_reason);
assert.ok(usage && usage.completion_tokens === plain.usage.completion_tokens);

const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);
assert.ok(ids.length >= 1);

let status = 0;
try {
  await client.chat.completions.create({ model: 'moondream2', messages: [{ role: 'user', content: 'hello' }] });
} catch (e) {
  status = e.status;
  assert.match(String(e.message), /image/);
}
assert.equal(status, 400);

console.log(
  JSON.stringify({
    content: plain.choices[0].message.content,
    streamed,
    finish_reason: plain.choices[0].finish_reason,
    usage: plain.usage,
    models: ids,
  }),
);
