#!/usr/bin/env node
// Writes a deterministic corpus of test strings with their GPT-2 token ids as
// computed by the npm package gpt-3-encoder (an implementation independent of
// ours), for tests/tokenizer_test.cpp.
//
//   node make_gpt2_corpus.js <out.json> [count=3000] [seed=20250414]
//
// Output: [{"text": "...", "ids": [..], "pieces": ["...", ..]}, ...]
// (ids from gpt-3-encoder's encode, pieces: the GPT-2 regex split by V8).
//
// Deliberately left out of the corpus, because gpt-3-encoder (JavaScript
// regex) and Hugging Face tokenizers (Oniguruma) disagree on them, and our
// tokenizer follows tokenizers:
//  - U+0085 (NEL) and U+FEFF (BOM): JS \s includes U+FEFF and not U+0085,
//    tokenizers' \s is the Unicode White_Space property (the reverse);
//  - letters/digits added after Unicode 15.0 (Node's ICU knows them, the
//    Debian libicu72 the engine uses does not): random code points are drawn
//    only from blocks that were complete long before;
//  - the literal "<|endoftext|>" (an added token for tokenizers, plain text
//    for gpt-3-encoder; tested separately in C++).
'use strict';

const fs = require('fs');
const { encode } = require('gpt-3-encoder');

const out = process.argv[2];
if (!out) {
  console.error('usage: make_gpt2_corpus.js <out.json> [count] [seed]');
  process.exit(2);
}
const COUNT = parseInt(process.argv[3] || '3000', 10);
const SEED = parseInt(process.argv[4] || '20250414', 10);

// mulberry32: small seeded PRNG, same sequence on every run.
function mulberry32(a) {
  return function () {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(SEED);
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1)); // inclusive
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const repeat = (n, f) => Array.from({ length: n }, f).join('');
const cp = (lo, hi) => String.fromCodePoint(int(lo, hi));

const WORDS = ('the of and to in is was for on that with as by at from his her it an were are which this be ' +
  'image photo caption question answer detect point a dog cat man woman sitting standing red blue green ' +
  'table window street car tree sky cloud building person people holding wearing shirt hat left right ' +
  'Hello World GPT Moondream OpenAI JavaScript HTTP JSON API tokenizer encode decode BPE URL ' +
  'supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic').split(' ');
const PUNCT = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D",
  "'x", "'", "''", "'''s"];
const EMOJI = ['😀', '😂', '🥲', '❤️', '👍', '👍🏽', '👍🏿', '👋🏻', '🙏🏼', '👨‍👩‍👧‍👦', '👩‍💻', '🧑🏾‍🚀', '🏳️‍🌈',
  '🇫🇷', '🇯🇵', '🇺🇸', '1️⃣', '#️⃣', '©️', '✨', '🔥', '🎉', '🐶', '🍕', '🚀', '⭐', '☀️', '🌍', '🤖', '💯',
  '👁️‍🗨️', '🫠', '🧠', '🦄', '🏃‍♀️', '👩🏽‍❤️‍💋‍👨🏻'];
const ACCENTED = ['café', 'naïve', 'Ångström', 'Zürich', 'façade', 'résumé', 'jalapeño', 'crème brûlée', 'Øresund',
  'São Paulo', 'Kraków', 'İstanbul', 'ﬁancé', 'cafe\u0301', 'n\u0303', 'Straße', 'œuvre', 'Þór', 'Łódź', 'Dvořák'];
const CYRILLIC = ['Привет', 'мир', 'Москва', 'человек', 'собака', 'ЁЛКА', 'ёжик', 'Україна', 'їжак', 'Београд'];
const ARABIC = ['مرحبا', 'بالعالم', 'السلام عليكم', 'كتاب', 'مُحَمَّد', 'القاهرة', '٣٤٥', 'ﷺ'];
const DEVANAGARI = ['नमस्ते', 'दुनिया', 'हिन्दी', 'भारत', 'क्षत्रिय', '२०२५', 'ॐ', 'प्रश्न'];
const CJK_PUNCT = ['。', '，', '、', '「', '」', '！', '？', '：', '（', '）', '・', '〜'];

// Code point ranges [lo, hi] for random text. All of
// these blocks were complete (for letters/digits) by Unicode 13.
const RANGES = [
  [0x20, 0x7e], [0x21, 0x2f], [0x01, 0x1f], [0x7f, 0x84], [0x86, 0xff], [0x100, 0x24f], [0x250, 0x2af],
  [0x2b0, 0x2ff], [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff], [0x531, 0x587], [0x5d0, 0x5ea],
  [0x620, 0x64a], [0x64b, 0x652], [0x660, 0x669], [0x6f0, 0x6f9], [0x905, 0x939], [0x93e, 0x94d],
  [0x966, 0x96f], [0xe01, 0xe3a], [0xe50, 0xe59], [0x10a0, 0x10ff], [0x1100, 0x11ff], [0x1e00, 0x1eff],
  [0x2000, 0x200f], [0x2010, 0x2027], [0x2028, 0x202f], [0x2030, 0x205f], [0x2070, 0x209c],
  [0x20a0, 0x20bf], [0x2100, 0x214f], [0x2150, 0x218b], [0x2190, 0x23ff], [0x2460, 0x24ff],
  [0x2500, 0x27bf], [0x3000, 0x303f], [0x3041, 0x3096], [0x30a1, 0x30fa], [0x4e00, 0x9fa5],
  [0xac00, 0xd7a3], [0xf900, 0xfa2d], [0xff01, 0xff5e], [0xff61, 0xff9f], [0x10330, 0x1034a],
  [0x10400, 0x1044f], [0x1d400, 0x1d7ff], [0x1f300, 0x1f5ff], [0x1f600, 0x1f64f], [0x1f680, 0x1f6c5],
  [0x1f900, 0x1f9ff], [0x20000, 0x2a6d6], [0xe000, 0xe0ff],
];
const SPACES = [' ', ' ', ' ', '\t', '\n', '\r\n', '\u00a0', '\u2003', '\u3000', '\u2028', '\u000b', '\u000c',
  '\u1680', '\u202f', '\u205f'];

function word() {
  let w = pick(WORDS);
  const r = rnd();
  if (r < 0.15) w = w.toUpperCase();
  else if (r < 0.3) w = w[0].toUpperCase() + w.slice(1);
  return w;
}
function sentence(n) {
  let s = '';
  for (let i = 0; i < n; i++) {
    s += (i ? (rnd() < 0.9 ? ' ' : pick([', ', '. ', '; ', ' - ', '  '])) : '') + word();
  }
  return s + pick(['', '.', '!', '?', '...', ':', '']);
}
function punctRun() {
  return repeat(int(1, 8), () => pick(PUNCT));
}
function number() {
  switch (int(0, 6)) {
    case 0: return String(int(0, 9));
    case 1: return String(int(0, 99999999));
    case 2: return `${int(0, 999)}.${int(0, 99999)}`;
    case 3: return `${int(1, 999)},${String(int(0, 999)).padStart(3, '0')},${String(int(0, 999)).padStart(3, '0')}`;
    case 4: return `-${int(1, 5000)}`;
    case 5: return repeat(int(10, 40), () => String(int(0, 9)));
    default: return `${int(1, 31)}/${int(1, 12)}/${int(1900, 2100)}`;
  }
}
function wsRun() {
  return repeat(int(1, 6), () => pick([' ', ' ', '  ', '\t', '\n', '\n\n', '\n\n\n', '\r\n', ' \n', '\t\t']));
}
function randomUnicode(n) {
  let s = '';
  for (let i = 0; i < n; i++) {
    const r = pick(RANGES);
    s += rnd() < 0.15 ? pick(SPACES) : cp(r[0], r[1]);
  }
  return s;
}
function cjk(n) {
  let s = '';
  for (let i = 0; i < n; i++) s += rnd() < 0.15 ? pick(CJK_PUNCT) : cp(0x4e00, 0x9fa5);
  return s;
}
function kana(n) {
  return repeat(n, () => (rnd() < 0.5 ? cp(0x3041, 0x3093) : cp(0x30a1, 0x30f6)));
}
function korean(n) {
  let s = '';
  for (let i = 0; i < n; i++) s += (i && rnd() < 0.3 ? ' ' : '') + repeat(int(1, 4), () => cp(0xac00, 0xd7a3));
  return s;
}
function fromList(list, n, sep = ' ') {
  return Array.from({ length: n }, () => pick(list)).join(sep);
}
function randomLetters(lo, hi, n) {
  return repeat(n, () => cp(lo, hi));
}

// One generator per category; each returns one string.
const GENERATORS = {
  ascii_words: () => sentence(int(1, 20)),
  punctuation: () => repeat(int(1, 6), () => (rnd() < 0.5 ? punctRun() : pick([' ', '']) + word())),
  numbers: () => repeat(int(1, 5), () => pick(['', ' ', ', ', 'x', ' $', '#']) + number()),
  whitespace: () => {
    const parts = [];
    for (let i = int(1, 6); i > 0; i--) parts.push(rnd() < 0.5 ? wsRun() : word());
    let s = parts.join('');
    if (rnd() < 0.3) s += repeat(int(1, 5), () => ' '); // trailing spaces
    if (rnd() < 0.2) s = repeat(int(1, 4), () => pick([' ', '\t', '\n'])) + s; // leading whitespace
    return s;
  },
  only_whitespace: () => repeat(int(1, 12), () => pick([' ', '\t', '\n', '\r', '\u000b', '\u000c', '\u00a0', '\u3000'])),
  newlines: () => repeat(int(1, 6), () => sentence(int(1, 6)) + repeat(int(1, 4), () => pick(['\n', '\n', '\r\n', ' \n']))),
  contractions: () => repeat(int(1, 6), () => pick(['', ' ']) + pick([word(), "I", "don", "they", "we", "IT", "JOHN"]) +
    pick(CONTRACTIONS) + pick(['', ' ', '.', "'"])),
  emoji: () => repeat(int(1, 6), () => pick(['', ' ', '', '  ', word() + ' ']) + pick(EMOJI)),
  cjk: () => repeat(int(1, 4), () => cjk(int(1, 12)) + pick(['', ' ', 'abc', '123', '\n', ' AI '])),
  japanese: () => kana(int(1, 10)) + cjk(int(0, 4)) + kana(int(0, 6)) + pick(['。', '', '！']),
  korean: () => korean(int(1, 6)) + pick(['', '.', '?', ' 123']),
  accented_latin: () => fromList(ACCENTED, int(1, 5), pick([' ', ', ', ''])) + (rnd() < 0.5 ? ' ' + randomLetters(0xc0, 0x17f, int(1, 8)) : ''),
  cyrillic: () => fromList(CYRILLIC, int(1, 6)) + (rnd() < 0.5 ? ' ' + randomLetters(0x410, 0x44f, int(1, 10)) : ''),
  arabic: () => fromList(ARABIC, int(1, 5)) + (rnd() < 0.5 ? ' ' + randomLetters(0x621, 0x652, int(1, 10)) : ''),
  devanagari: () => fromList(DEVANAGARI, int(1, 5)) + (rnd() < 0.5 ? ' ' + randomLetters(0x900, 0x97f, int(1, 10)) : ''),
  mixed_scripts: () => {
    const parts = ['ascii_words', 'cjk', 'korean', 'cyrillic', 'arabic', 'devanagari', 'emoji', 'numbers',
      'accented_latin', 'punctuation', 'contractions'];
    return repeat(int(2, 5), () => GENERATORS[pick(parts)]() + pick(['', ' ', '\n', ', ']));
  },
  random_unicode: () => randomUnicode(int(1, 40)),
  long_text: () => repeat(int(5, 30), () => GENERATORS[pick(['ascii_words', 'numbers', 'newlines', 'contractions',
    'emoji', 'cjk', 'whitespace', 'mixed_scripts'])]() + pick([' ', '\n', '\n\n', ''])),
};

// Fixed strings that exercise the regex corners.
const FIXED = [
  '', ' ', '  ', '\n', '\n\n', 'a', ' a', 'Hello world', 'Hello, world!', "I'm here", "it's", "IT'S", "don't",
  "they're", "we've", "you'll", "he'd", "'s", "''s", " 's", "'sa", '!!!\'s', 'x  y', 'x   y', 'x\t\ty', 'trail   ',
  '\n\nCaption:', '\n\nShort caption:', '\n\nLong caption:', '\n\nQuestion:', '\n\nAnswer:', '\n\nDetect:',
  '\n\nPoint:', ' a dog', 'hello\u00a0world', 'a\u3000b', 'e\u0301', '\r\n\r\n', ' \n ', '\t\n', '  \n\n  x',
  '😀😀😀', 'abc123def', '3.14159', '1,000,000', '$100', '<|endoftext', 'endoftext|>', '<|', '|>',
  '"""', "'''", '...', '—', '–', '“quoted”', '‘single’', '«guillemets»', '¿Qué?', '¡Hola!',
];

// The GPT-2 pre-tokenizer regex, run by V8's regex engine: the expected
// split of each text (token ids alone cannot always tell a split apart).
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const corpus = [];
const seen = new Set();
function add(text) {
  text = text.replace(/[\u0085\ufeff]/g, ' ');
  if (text.includes('<|endoftext|>') || seen.has(text)) return;
  seen.add(text);
  corpus.push({ text, ids: encode(text), pieces: Array.from(text.matchAll(GPT2_SPLIT), (m) => m[0]) });
}
FIXED.forEach(add);
const names = Object.keys(GENERATORS);
for (let i = 0; corpus.length < COUNT && i < COUNT * 10; i++) add(GENERATORS[names[i % names.length]]());

fs.writeFileSync(out, JSON.stringify(corpus));
console.error(`make_gpt2_corpus: ${corpus.length} strings -> ${out}`);
