#pragma once
// The stages of a Hugging Face tokenizer.json around its model, each built
// from its JSON section exactly as the `tokenizers` library reads it:
//   normalizer -> pre-tokenizer -> (model) -> post-processor, and decoder.
// A component the engine does not implement is refused at load with one error
// naming it ("<file>: pre_tokenizer \"BertPreTokenizer\" is not supported").
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace md::tok {

// A split of the input on its way to the model. `at_origin`: the split starts
// at offset 0 of the original text (Metaspace's prepend_scheme "first").
struct Piece {
  std::string text;
  bool at_origin = false;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string s) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits; empty splits are dropped.
  virtual void split(std::vector<Piece>& pieces) const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // The ids of a single sequence with the special tokens the processor adds.
  virtual std::vector<int32_t> process(std::vector<int32_t> ids) const = 0;
  // How many it adds to a single sequence (truncation leaves room for them).
  virtual int added_tokens() const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // tokenizers' decode_chain: token strings in, strings out (joined by the caller).
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// Each returns nullptr for a JSON null; throws md::Error("<source>: ...").
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& source);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& source);
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, const std::string& source);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& source);

// GPT-2's byte <-> printable-character mapping.
std::string to_byte_level(std::string_view raw);
// Raw bytes of a byte-level string; a string with a character outside the
// mapping is returned as it is (as the ByteLevel decoder does).
std::string from_byte_level(std::string_view tok);
// The GPT-2 pre-tokenizer regex split (ByteLevel with use_regex), by hand.
std::vector<std::string_view> gpt2_split(std::string_view valid_utf8);

}  // namespace md::tok
