#pragma once
// A file of quantised weights written next to the model the first time it is
// loaded with --quantization int8|q4, so later loads map it instead of
// quantising ~2 GB of weights again (seconds → milliseconds, and no 16-bit
// pages resident). The file is only trusted when its key matches: the
// safetensors files' sizes and modification times, the target format, the
// loader's quantisation policy and the kernels' layout version. Anything
// else — missing, truncated, corrupt, stale — is ignored and rewritten.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/quant.h"

namespace md {

struct QuantCacheKey {
  WeightFormat format = WeightFormat::Q8;
  int policy = 0;      // version of the loader's choice of formats and groups (each matrix records its own)
  std::string source;  // identity of the safetensors files (names, sizes, mtimes)
  // Identity of the model files in `model_dir`.
  static std::string source_of(const std::string& model_dir);
};

class QuantCache {
 public:
  // Where the cache for `model_dir` lives: <model_dir>/model.<q8|q4>.mdq when
  // that folder is writable, else $XDG_CACHE_HOME (or ~/.cache)/moondream/.
  // "" when caching is off (MOONDREAM_QUANT_CACHE=0).
  static std::string path_for(const std::string& model_dir, WeightFormat format);

  // Maps `path` if it exists and matches `key`; null otherwise (never throws).
  static std::unique_ptr<QuantCache> open(const std::string& path, const QuantCacheKey& key);
  ~QuantCache();
  QuantCache(const QuantCache&) = delete;
  QuantCache& operator=(const QuantCache&) = delete;

  // The matrix stored under `name` with this shape, viewing the mapping.
  bool find(const std::string& name, int rows, int cols, WeightMatrix* out) const;
  size_t entries() const { return index_.size(); }

  // Writes matrices (name → weights) atomically (temporary file + rename).
  // Returns "" on success, else why not (the caller only warns).
  static std::string write(const std::string& path, const QuantCacheKey& key,
                           const std::vector<std::pair<std::string, const QuantizedWeights*>>& matrices);

 private:
  QuantCache() = default;
  const void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, WeightMatrix> index_;
};

}  // namespace md
