// Fuzz target: encode and decode arbitrary bytes with a GPT-2 byte-level
// BPE tokenizer (a reduced tokenizer.json from the corpus: the 256 byte
// tokens, the first merges and <|endoftext|>). Checks: decode(encode(s)) == s
// for valid UTF-8; arbitrary ids (also through the streamer) never crash.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
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

bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const md::Tokenizer& t = tokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = t.encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= t.vocab_size()) __builtin_trap();
  if (valid_utf8(data, size) && t.decode(ids) != text) __builtin_trap();

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
