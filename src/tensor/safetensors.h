#pragma once
// Memory-mapped safetensors files and a model's whole weight set (single file
// or sharded via model.safetensors.index.json). Nothing is copied at load:
// tensors are views into the mapping.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace md {

struct TensorView {
  std::string name;  // canonical name (see WeightStore)
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;    // file it came from, for error messages
  bool mapped = true;  // data points into the file mapping (not a heap copy)
  size_t numel() const;
};

// One mapped safetensors file, fully validated at open: header length vs file
// size, JSON, dtype, offsets in range and non-overlapping, shape × dtype size =
// byte length. Throws md::Error naming the file and the problem.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Keyed by the name exactly as stored.
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  const void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All weights of a model directory under canonical names: the 2025 HF layout
// without the "model." prefix (e.g. "vision.blocks.0.ln1.weight",
// "text.wte", "region.coord_features"). The 2024-08-26 layout is mapped onto
// the same names (its transposed coord/size features are transposed back into
// owned buffers), and stray "._orig_mod" segments are ignored.
class WeightStore {
 public:
  // Opens <dir>/model.safetensors, or <dir>/model.safetensors.index.json and
  // its shards. Throws md::Error naming the file and the problem.
  static WeightStore open(const std::string& model_dir);

  bool has(const std::string& name) const;
  // Throws md::Error if missing ("missing tensor 'text.wte' in <dir>") or if
  // the shape differs ("<file>: tensor 'text.wte' has shape [..], expected [..]").
  const TensorView& get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }
  // Total bytes of all tensors as stored.
  size_t total_bytes() const;
  // Drops the resident pages of a mapped tensor that is no longer read (its
  // quantised copy replaces it): they leave this process's RSS and are read
  // again from the page cache / file only if touched again. No-op for tensors
  // not backed by the file mapping.
  static void release_pages(const TensorView& t);

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorView> tensors_;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> owned_;  // transposed legacy tensors
};

}  // namespace md
