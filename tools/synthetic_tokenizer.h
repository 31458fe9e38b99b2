#pragma once
// Synthetic Hugging Face tokenizer.json files, trained here by a small greedy
// BPE on built-in texts, for the tests and the test models. Each flavour
// exercises a different part of the tokenizer.json format (docs/TOKENIZER.md):
//   superword      ids 0-20 special (the layout of moondream/starmie-v1), a
//                  Split regex pre-tokenizer then ByteLevel without regex, so
//                  merges cross spaces; ignore_merges
//   sentencepiece  normalizer Prepend("▁") + Replace(" ", "▁"), no
//                  pre-tokenizer, byte_fallback, unk (Llama-style decoder)
//   metaspace      Metaspace pre-tokenizer (prepend_scheme "first"),
//                  TemplateProcessing <s> A </s>, byte_fallback, fused unk
//   added_tokens   byte-level with add_prefix_space and added tokens with
//                  lstrip / rstrip / single_word / normalized
//   normalized     normalizer Sequence (NFKD, StripAccents, Lowercase,
//                  Replace regex, Strip), WhitespaceSplit + Punctuation +
//                  Digits, "##" subword prefix and "</w>" suffix, unk
//   limits         sentencepiece with truncation (left) and padding (fixed,
//                  left, to a multiple)
#include <string>
#include <vector>

namespace md::synth {

const std::vector<std::string>& flavours();

// The tokenizer.json text of a flavour with about `merges` merges learnt from
// the built-in texts. `vocab_size` > 0 pads the vocabulary with plain tokens
// ("Ġtok<n>", reachable only by id) to that many entries, as a real 51,200
// entry file has. Deterministic. Throws md::Error for an unknown flavour.
std::string tokenizer_json(const std::string& flavour, int merges = 1500, int vocab_size = 0);

// The texts the merges are learnt from (also useful test input).
const std::vector<std::string>& training_texts();

}  // namespace md::synth
