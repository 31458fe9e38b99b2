// Fuzz target: loading a tokenizer.json (Tokenizer::from_json), then using
// whatever loaded on a fixed text.
#include <cstdint>
#include <string>
#include <string_view>

#include "model/tokenizer.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const md::Tokenizer t = md::Tokenizer::from_json(text, "tokenizer.json");
    const auto ids = t.encode("Hello world! 12 <|endoftext|> caf\xc3\xa9\n\n  x");
    (void)t.decode(ids);
    (void)t.vocab_size();
    (void)t.token_id("<|endoftext|>");
    (void)t.id_to_token(0);
  } catch (const md::Error&) {
  }
  return 0;
}
