#include "tensor/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "tensor/error.h"
#include "tensor/file_map.h"
#include "tensor/json_text.h"

namespace md {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Headers of real checkpoints are a few hundred KB; the reference
// implementation refuses anything above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ",";
    r += std::to_string(s[i]);
  }
  return r + "]";
}

// Parses a JSON object, refusing duplicate keys at the top level (a silent
// "last one wins" would hide a tensor).
json parse_object_no_dup(const std::string_view text, const std::string& file, const char* what) {
  std::set<std::string> seen;
  std::string dup;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && dup.empty()) {
      std::string k = parsed.get<std::string>();
      if (!seen.insert(k).second) dup = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb);
  } catch (const std::exception& e) {
    throw Error(file + ": invalid JSON in " + what + ": " + json_text::error_text(e));
  }
  if (!j.is_object()) throw Error(file + ": " + what + " is not a JSON object");
  if (!dup.empty()) throw Error(file + ": " + what + " lists '" + dup + "' twice");
  return j;
}

// Reads a JSON integer into uint64 / int64; false if not an integer.
bool json_u64(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = uint64_t(v);
    return true;
  }
  return false;
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

size_t TensorView::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

// ------------------------------------------------------------ SafetensorsFile

SafetensorsFile::~SafetensorsFile() { unmap_file(map_, map_size_); }

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + errno_text());
  struct stat st;
  if (fstat(fd, &st) != 0) {
    std::string e = errno_text();
    ::close(fd);
    throw Error(path + ": cannot stat: " + e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(path + ": truncated: " + std::to_string(size) + " bytes, no header");
  }
  const void* m = map_file_readonly(fd, size);
  const int map_errno = errno;
  ::close(fd);
  if (!m) throw Error(path + ": cannot map: " + std::strerror(map_errno));
  f->map_ = m;
  f->map_size_ = size;
  const auto* base = static_cast<const uint8_t*>(m);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > size - 8)
    throw Error(path + ": header length " + std::to_string(n) + " exceeds file size " + std::to_string(size) +
                " (truncated or not a safetensors file)");
  if (n > kMaxHeaderBytes)
    throw Error(path + ": header length " + std::to_string(n) + " is implausibly large (limit " +
                std::to_string(kMaxHeaderBytes) + ")");

  const std::string_view text(reinterpret_cast<const char*>(base + 8), size_t(n));
  json header = parse_object_no_dup(text, path, "header");

  const uint8_t* data = base + 8 + n;
  const uint64_t data_size = size - 8 - n;

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  spans.reserve(header.size());

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (e.is_null()) continue;
      if (!e.is_object()) throw Error(path + ": __metadata__ is not a JSON object");
      for (auto m2 = e.begin(); m2 != e.end(); ++m2) {
        if (!m2->is_string()) throw Error(path + ": __metadata__ value for '" + m2.key() + "' is not a string");
        f->metadata_[m2.key()] = m2->get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!e.is_object()) throw Error(where + ": entry is not a JSON object");
    auto dt = e.find("dtype");
    auto sh = e.find("shape");
    auto off = e.find("data_offsets");
    if (dt == e.end()) throw Error(where + ": missing \"dtype\"");
    if (sh == e.end()) throw Error(where + ": missing \"shape\"");
    if (off == e.end()) throw Error(where + ": missing \"data_offsets\"");
    if (!dt->is_string()) throw Error(where + ": \"dtype\" is not a string");
    if (!sh->is_array()) throw Error(where + ": \"shape\" is not an array");
    if (!off->is_array() || off->size() != 2) throw Error(where + ": \"data_offsets\" is not an array [begin, end]");

    TensorView v;
    v.name = name;
    v.file = path;
    const std::string dts = dt->get<std::string>();
    if (!parse_dtype(dts, &v.dtype))
      throw Error(where + " has unsupported dtype '" + dts + "' (supported: F32, F16, BF16)");

    uint64_t numel = 1;
    for (const json& d : *sh) {
      if (!d.is_number_integer())
        throw Error(where + ": shape " + json_text::brief(*sh) + " has a non-integer dimension");
      if (d.is_number_unsigned()) {
        uint64_t u = d.get<uint64_t>();
        if (u > uint64_t(INT64_MAX)) throw Error(where + ": shape " + json_text::brief(*sh) + " is too large");
        v.shape.push_back(int64_t(u));
      } else {
        int64_t s = d.get<int64_t>();
        if (s < 0) throw Error(where + ": shape " + json_text::brief(*sh) + " has a negative dimension");
        v.shape.push_back(s);
      }
      if (__builtin_mul_overflow(numel, uint64_t(v.shape.back()), &numel))
        throw Error(where + ": shape " + json_text::brief(*sh) + " is too large");
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(v.dtype)), &nbytes))
      throw Error(where + ": shape " + json_text::brief(*sh) + " is too large");

    uint64_t begin, end;
    if (!json_u64((*off)[0], &begin) || !json_u64((*off)[1], &end))
      throw Error(where + ": data_offsets " + json_text::brief(*off) + " are not non-negative integers");
    const std::string offs = "[" + std::to_string(begin) + "," + std::to_string(end) + "]";
    if (begin > end) throw Error(where + ": data_offsets " + offs + " have begin > end");
    if (end > data_size)
      throw Error(where + ": data_offsets " + offs + " out of range (data section is " + std::to_string(data_size) +
                  " bytes)");
    if (end - begin != nbytes)
      throw Error(where + ": shape " + shape_str(v.shape) + " x " + std::string(dtype_name(v.dtype)) + " is " +
                  std::to_string(nbytes) + " bytes but data_offsets " + offs + " span " + std::to_string(end - begin) +
                  " bytes");
    v.data = data + begin;
    v.nbytes = size_t(nbytes);
    auto ins = f->tensors_.emplace(name, std::move(v));
    spans.push_back({begin, end, &ins.first->first});
  }

  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  // Overlap check; empty tensors occupy no bytes and cannot overlap.
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin == s.end) continue;
    if (prev && s.begin < prev->end)
      throw Error(path + ": tensors '" + *prev->name + "' [" + std::to_string(prev->begin) + "," +
                  std::to_string(prev->end) + ") and '" + *s.name + "' [" + std::to_string(s.begin) + "," +
                  std::to_string(s.end) + ") overlap");
    if (!prev || s.end > prev->end) prev = &s;
  }

  if (data_size > 0) madvise(const_cast<uint8_t*>(base), size, MADV_WILLNEED);
  return f;
}

// ---------------------------------------------------------------- WeightStore

namespace {

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> r;
  size_t p = 0;
  while (true) {
    size_t q = s.find('.', p);
    r.push_back(s.substr(p, q == std::string::npos ? std::string::npos : q - p));
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return r;
}

std::string join_dots(const std::vector<std::string>& v, size_t from) {
  std::string r;
  for (size_t i = from; i < v.size(); ++i) {
    if (i > from) r += ".";
    r += v[i];
  }
  return r;
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// How a stored tensor becomes a canonical one.
struct Mapped {
  std::string name;
  bool transpose = false;  // 2024 layout's [n,k] features -> [k,n]
};

// Maps a 2024-08-26 layout name (already stripped of "model." / "_orig_mod")
// to the 2025 name; returns the input unchanged when no rule applies.
Mapped canonical_name(const std::string& stored) {
  std::vector<std::string> segs = split_dots(stored);
  segs.erase(std::remove(segs.begin(), segs.end(), "_orig_mod"), segs.end());
  size_t from = (segs.size() > 1 && segs[0] == "model") ? 1 : 0;
  const std::string s = join_dots(segs, from);

  // Rewrites the prefix `old_p` to `new_p` if present.
  auto swap = [&](const std::string& old_p, const std::string& new_p, std::string* out) {
    if (s == old_p) {
      *out = new_p;
      return true;
    }
    if (starts_with(s, old_p + ".")) {
      *out = new_p + s.substr(old_p.size());
      return true;
    }
    return false;
  };

  std::string out;
  const std::string vis = "vision_encoder.encoder.model.visual";
  if (starts_with(s, vis + ".")) {
    const std::string rest = s.substr(vis.size() + 1);
    if (rest == "pos_embed") return {"vision.pos_emb"};
    if (starts_with(rest, "patch_embed.linear."))
      return {"vision.patch_emb." + rest.substr(std::string("patch_embed.linear.").size())};
    if (starts_with(rest, "norm.")) return {"vision.post_ln." + rest.substr(5)};
    if (starts_with(rest, "blocks.")) {
      std::vector<std::string> r = split_dots(rest);  // blocks i sub...
      if (r.size() >= 3) {
        if (r[2] == "norm1")
          r[2] = "ln1";
        else if (r[2] == "norm2")
          r[2] = "ln2";
        return {"vision." + join_dots(r, 0)};
      }
    }
    return {s};
  }
  if (swap("vision_encoder.projection.mlp", "vision.proj_mlp", &out)) return {out};
  if (s == "text_model.transformer.embd.wte.weight") return {"text.wte"};
  const std::string th = "text_model.transformer.h.";
  if (starts_with(s, th)) {
    std::vector<std::string> r = split_dots(s.substr(th.size()));  // i sub...
    if (r.size() >= 2) {
      if (r[1] == "mixer" && r.size() >= 3 && r[2] == "Wqkv") {
        r[1] = "attn";
        r[2] = "qkv";
      } else if (r[1] == "mixer" && r.size() >= 3 && r[2] == "out_proj") {
        r[1] = "attn";
        r[2] = "proj";
      }
      return {"text.blocks." + join_dots(r, 0)};
    }
    return {s};
  }
  if (swap("text_model.lm_head.ln", "text.post_ln", &out)) return {out};
  if (swap("text_model.lm_head.linear", "text.lm_head", &out)) return {out};
  if (s == "region_model.coordinate_features.weight") return {"region.coord_features", true};
  if (s == "region_model.size_features.weight") return {"region.size_features", true};
  if (swap("region_model.coordinate_encoder", "region.coord_encoder", &out)) return {out};
  if (swap("region_model.coordinate_decoder", "region.coord_decoder", &out)) return {out};
  if (swap("region_model.size_encoder", "region.size_encoder", &out)) return {out};
  if (swap("region_model.size_decoder", "region.size_decoder", &out)) return {out};
  return {s};
}

bool plain_file_name(const std::string& s) {
  if (s.empty() || s == "." || s == "..") return false;
  if (s.find('/') != std::string::npos || s.find('\\') != std::string::npos) return false;
  if (s.find("..") != std::string::npos) return false;
  if (s.find('\0') != std::string::npos) return false;
  return true;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return ss.str();
}

}  // namespace

WeightStore WeightStore::open(const std::string& model_dir) {
  WeightStore ws;
  ws.dir_ = model_dir;
  const fs::path dir(model_dir);
  const std::string index_path = (dir / "model.safetensors.index.json").string();
  const std::string single_path = (dir / "model.safetensors").string();
  std::error_code ec;

  // Stored name -> file that must contain it (sharded layout only).
  std::vector<std::pair<std::string, std::string>> indexed;  // tensor, shard
  std::vector<std::string> shard_files;

  if (fs::exists(index_path, ec)) {
    json index = parse_object_no_dup(read_text_file(index_path), index_path, "index");
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) throw Error(index_path + ": bad index: no \"weight_map\" object");
    if (wm->empty()) throw Error(index_path + ": bad index: \"weight_map\" is empty");
    std::set<std::string> shards;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string()) throw Error(index_path + ": bad index: shard of tensor '" + it.key() + "' is not a string");
      std::string shard = it->get<std::string>();
      if (!plain_file_name(shard))
        throw Error(index_path + ": bad index: shard name '" + shard + "' of tensor '" + it.key() +
                    "' is not a plain file name");
      indexed.emplace_back(it.key(), shard);
      if (shards.insert(shard).second) shard_files.push_back(shard);
    }
    for (const std::string& s : shard_files) {
      const fs::path p = dir / s;
      if (!fs::exists(p, ec)) throw Error(index_path + ": shard '" + s + "' is missing from " + model_dir);
    }
  } else if (fs::exists(single_path, ec)) {
    shard_files.push_back("model.safetensors");
  } else {
    throw Error("no model.safetensors or model.safetensors.index.json in " + model_dir);
  }

  std::map<std::string, std::shared_ptr<SafetensorsFile>> by_name;
  for (const std::string& s : shard_files) {
    std::shared_ptr<SafetensorsFile> f = SafetensorsFile::open((dir / s).string());
    by_name[s] = f;
    ws.files_.push_back(f);
  }
  for (const auto& [tensor, shard] : indexed) {
    const auto& f = by_name.at(shard);
    if (!f->tensors().count(tensor))
      throw Error(index_path + ": bad index: tensor '" + tensor + "' is listed in shard '" + shard + "' but " +
                  f->path() + " does not contain it");
  }

  for (const auto& f : ws.files_) {
    for (const auto& [stored, view] : f->tensors()) {
      Mapped m = canonical_name(stored);
      TensorView v = view;
      v.name = m.name;
      if (m.transpose) {
        if (v.shape.size() != 2)
          throw Error(f->path() + ": tensor '" + stored + "' has shape " + shape_str(v.shape) +
                      ", expected 2 dimensions");
        const size_t rows = size_t(v.shape[0]), cols = size_t(v.shape[1]);
        const size_t es = dtype_size(v.dtype);
        auto buf = std::make_shared<std::vector<uint8_t>>(v.nbytes);
        for (size_t r = 0; r < rows; ++r)
          for (size_t c = 0; c < cols; ++c)
            std::memcpy(buf->data() + (c * rows + r) * es, v.data + (r * cols + c) * es, es);
        v.shape = {int64_t(cols), int64_t(rows)};
        v.data = buf->data();
        v.mapped = false;
        ws.owned_.push_back(std::move(buf));
      }
      auto prev = ws.tensors_.find(m.name);
      if (prev != ws.tensors_.end())
        throw Error(f->path() + ": tensor '" + stored + "' duplicates '" + m.name + "' from " + prev->second.file);
      ws.tensors_.emplace(m.name, std::move(v));
    }
  }
  return ws;
}

bool WeightStore::has(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorView& WeightStore::get(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error("missing tensor '" + name + "' in " + dir_);
  const TensorView& v = it->second;
  if (v.shape != expected_shape)
    throw Error(v.file + ": tensor '" + name + "' has shape " + shape_str(v.shape) + ", expected " +
                shape_str(expected_shape));
  return v;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> r;
  r.reserve(tensors_.size());
  for (const auto& [k, v] : tensors_) r.push_back(k);
  return r;
}

void WeightStore::release_pages(const TensorView& t) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes) / page * page;
  // Whole pages inside the tensor only: neighbours may still be in use. On a
  // heap buffer (legacy transposed tensors) MADV_DONTNEED would zero live
  // data, so only file mappings are released.
  if (end > begin && t.mapped) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

size_t WeightStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [k, v] : tensors_) n += v.nbytes;
  return n;
}

}  // namespace md
