// Fuzz target: a model's config.json (parse_model_config).
#include <cstdint>
#include <string>

#include "model/config.h"
#include "tensor/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const md::ModelConfig c = md::parse_model_config(text, "config.json");
    // Accepted values are the validated ones.
    if (c.text.dim <= 0 || c.text.n_heads <= 0 || c.text.dim % c.text.n_heads != 0) __builtin_trap();
    if (c.vision.crop_size <= 0 || c.vision.enc_patch_size <= 0) __builtin_trap();
  } catch (const md::Error&) {
  }
  return 0;
}
