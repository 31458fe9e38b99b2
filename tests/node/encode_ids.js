#!/usr/bin/env node
// Token ids of strings under a tokenizer.json, by Hugging Face's own engine
// (npm `tokenizers`), for the reference fixture (tests/reference/prepare.sh).
//   node encode_ids.js <tokenizer.json> <text>...   -> JSON [[ids], ...]
'use strict';
const { Tokenizer } = require('tokenizers');

async function main() {
  const [file, ...texts] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(file);
  const out = [];
  for (const t of texts) out.push(Array.from((await tok.encode(t)).getIds()));
  process.stdout.write(JSON.stringify(out) + '\n');
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
