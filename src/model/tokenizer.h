#pragma once
// GPT-2 byte-level BPE from a Hugging Face tokenizer.json, encoding and
// decoding exactly as the `tokenizers` library does for GPT-2.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace md {

class Tokenizer {
 public:
  // Throws md::Error naming the file and the problem.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  // Added/special tokens listed in added_tokens are matched first (as HF does);
  // the rest goes through the GPT-2 pre-tokenizer regex and BPE.
  std::vector<int32_t> encode(std::string_view text) const;
  // Concatenated bytes of the tokens (may end in an incomplete UTF-8 sequence).
  std::string decode(std::span<const int32_t> ids) const;
  // Raw bytes of one token; empty for an unknown id.
  std::string token_bytes(int32_t id) const;
  // Id of the token whose decoded text is exactly `token` (an added token's
  // content, or a vocabulary entry given as raw text, e.g. " the").
  std::optional<int32_t> token_id(std::string_view token) const;
  int vocab_size() const;  // highest id + 1

  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// Turns a growing token sequence into text chunks for streaming (contract
// section 8): flush up to and including the last space, everything after a
// newline or a CJK character, the rest at finish(); never splits a UTF-8
// character or a word.
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
  std::string text_;  // decode(tokens_), grown one token at a time
  size_t emitted_bytes_ = 0;
};

namespace detail {
// The GPT-2 pre-tokenizer regex split (exposed for tests).
std::vector<std::string_view> gpt2_pre_tokenize(std::string_view text);
}  // namespace detail

}  // namespace md
