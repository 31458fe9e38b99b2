#pragma once
// A Hugging Face tokenizer.json (BPE model) loaded and run as the `tokenizers`
// library does: added tokens, normalizer, pre-tokenizer, BPE, post-processor
// on the way in; the decoder on the way out. GPT-2 byte-level BPE and the
// superword / sentencepiece-style tokenizers are all configurations of it
// (docs/TOKENIZER.md).
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace md {

class Tokenizer {
 public:
  // Throws md::Error naming the file and the problem (an unsupported
  // component: its section and type).
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  // tokenizers' Tokenizer.encode(text) with its defaults: added tokens
  // matched, post-processor applied. Invalid UTF-8 in `text` is read as
  // U+FFFD per maximal ill-formed subpart (as a TextDecoder would).
  std::vector<int32_t> encode(std::string_view text) const;
  // tokenizers' decode(ids, skip_special_tokens = true); unknown ids skipped.
  std::string decode(std::span<const int32_t> ids) const;
  // The vocabulary string of an id (an added token's content), if any.
  std::optional<std::string> id_to_token(int32_t id) const;
  // tokenizers' token_to_id: the id of a vocabulary string or added token
  // ("Ġthe" in GPT-2's byte-level vocabulary, "<|endoftext|>").
  std::optional<int32_t> token_id(std::string_view token) const;
  bool is_special(int32_t id) const;
  int vocab_size() const;  // highest id + 1
  const std::string& source() const;

  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// Turns a growing token sequence into text chunks for streaming (docs/MODEL.md
// section 8): flush up to and including the last space, everything after a
// newline or a CJK character, the rest at finish(); never splits a UTF-8
// character or a word. The chunks concatenate to decode(all tokens).
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tok) : tok_(&tok) {}
  // Returns the text that became final with this token (may be empty).
  std::string push(int32_t token);
  // Returns whatever is left.
  std::string finish();

 private:
  const Tokenizer* tok_;
  std::vector<int32_t> tokens_;
  size_t emitted_bytes_ = 0;
};

}  // namespace md
