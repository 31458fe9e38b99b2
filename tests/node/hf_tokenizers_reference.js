#!/usr/bin/env node
// Tokenizes inputs with Hugging Face's own engine (npm `tokenizers`, the Rust
// library) for tests/tokenizer_hf_test.cpp.
//
//   node hf_tokenizers_reference.js <request.json> <out.json>
//
// request: {"files": [tokenizer.json paths], "inputs": [{"b64": bytes} | {"u16": [code units]}]}
//   b64: raw bytes, read as a TextDecoder reads them (invalid UTF-8 -> U+FFFD
//        per maximal subpart), the way a client's bytes become a string;
//   u16: a JavaScript string of these UTF-16 code units (lone surrogates included).
// out: {"bytes": [b64 of the UTF-8 bytes the engine received, per input],
//       "results": [per file: {"error": msg} | {"ids": [[..] per input], "decoded": [str per input]}]}
'use strict';

const fs = require('fs');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [reqPath, outPath] = process.argv.slice(2);
  if (!reqPath || !outPath) {
    console.error('usage: hf_tokenizers_reference.js <request.json> <out.json>');
    process.exit(2);
  }
  const req = JSON.parse(fs.readFileSync(reqPath, 'utf8'));
  const decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true })  // keep a leading BOM: it is text;
  const texts = req.inputs.map((inp) => ('b64' in inp ? decoder.decode(Buffer.from(inp.b64, 'base64')) : String.fromCharCode(...inp.u16)));
  // What Rust receives: the string as UTF-8 (a lone surrogate becomes U+FFFD).
  const bytes = texts.map((t) => Buffer.from(t, 'utf8').toString('base64'));
  const results = [];
  for (const file of req.files) {
    let tok;
    try {
      tok = Tokenizer.fromFile(file);
    } catch (e) {
      results.push({ error: String(e && e.message ? e.message : e) });
      continue;
    }
    const ids = [];
    const decoded = [];
    for (const t of texts) {
      const enc = await tok.encode(t);
      const i = Array.from(enc.getIds());
      ids.push(i);
      decoded.push(await tok.decode(i, true));
    }
    results.push({ ids, decoded });
  }
  fs.writeFileSync(outPath, JSON.stringify({ bytes, results }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
