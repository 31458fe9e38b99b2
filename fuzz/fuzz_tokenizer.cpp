// Fuzz target: encode and decode arbitrary bytes with a GPT-2 byte-level
// BPE tokenizer (a reduced tokenizer.json from the corpus: the 256 byte
// tokens, the first merges and <|endoftext|>). Checks: decode(encode(s)) == s
// (invalid UTF-8 read as U+FFFD); arbitrary ids (also through the streamer) never crash.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "model/unicode_text.h"
#include "tensor/error.h"

namespace {

const md::Tokenizer& tokenizer() {
  static const md::Tokenizer t = [] {
    std::ifstream f(MOONDREAM_FUZZ_TOKENIZER, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return md::Tokenizer::from_json(ss.str(), MOONDREAM_FUZZ_TOKENIZER);
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const md::Tokenizer& t = tokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = t.encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= t.vocab_size()) __builtin_trap();
  // Byte-level BPE round-trips any text, read as TextDecoder reads it;
  // decode drops the special token.
  if (text.find("<|endoftext|>") == std::string::npos && t.decode(ids) != md::text::lossy_utf8(text)) __builtin_trap();

  // The same bytes as token ids (any value, negative and out of range too).
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  const std::string decoded = t.decode(raw);
  md::TextStreamer streamer(t);
  std::string streamed;
  for (int32_t id : raw) streamed += streamer.push(id);
  streamed += streamer.finish();
  if (streamed != decoded) __builtin_trap();
  return 0;
}
