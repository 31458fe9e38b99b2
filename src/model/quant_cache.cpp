#include "model/quant_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tensor/file_map.h"

namespace md {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr char kMagic[8] = {'M', 'D', 'Q', 'C', 'A', 'C', 'H', 'E'};
// Bump whenever quant.h's packed Q8/Q4 layout or scale format changes.
constexpr uint32_t kLayoutVersion = 4;  // 3: each entry names its format; 4: Q4 in 16-row panels
constexpr size_t kAlign = 64;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool writable_dir(const fs::path& dir) { return ::access(dir.c_str(), W_OK) == 0; }

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// FNV-1a: names the per-user cache file of a model directory.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

std::string QuantCacheKey::source_of(const std::string& model_dir) {
  std::vector<std::string> parts;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() < 12 || name.compare(name.size() - 12, 12, ".safetensors") != 0) continue;
    struct stat st {};
    // stat follows symlinks: the hub cache's snapshot links name their blobs.
    if (::stat(e.path().c_str(), &st) != 0) continue;
    parts.push_back(name + ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
                    std::to_string(st.st_mtim.tv_nsec));
  }
  std::sort(parts.begin(), parts.end());
  std::string out;
  for (const auto& p : parts) out += p + ";";
  return out;
}

std::string QuantCache::path_for(const std::string& model_dir, WeightFormat format) {
  if (const char* off = std::getenv("MOONDREAM_QUANT_CACHE"); off && std::string(off) == "0") return "";
  const std::string file = std::string("model.") + weight_format_name(format) + ".mdq";
  if (writable_dir(model_dir)) return (fs::path(model_dir) / file).string();
  fs::path base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    base = x;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    base = fs::path(home) / ".cache";
  } else {
    return "";
  }
  std::error_code ec;
  const std::string canon = fs::weakly_canonical(model_dir, ec).string();
  return (base / "moondream" / (hex64(fnv1a(canon)) + "." + file)).string();
}

QuantCache::~QuantCache() { unmap_file(map_, size_); }

std::unique_ptr<QuantCache> QuantCache::open(const std::string& path, const QuantCacheKey& key) {
  if (path.empty()) return nullptr;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size < 16) {
    ::close(fd);
    return nullptr;
  }
  const size_t size = size_t(st.st_size);
  const void* m = map_file_readonly(fd, size);
  ::close(fd);
  if (!m) return nullptr;
  std::unique_ptr<QuantCache> c(new QuantCache());
  c->map_ = m;
  c->size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(m);
  uint32_t version = 0, header_len = 0;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&header_len, bytes + 12, 4);
  if (std::memcmp(bytes, kMagic, 8) != 0 || version != kLayoutVersion || size_t(header_len) > size - 16) return nullptr;
  json h = json::parse(bytes + 16, bytes + 16 + header_len, nullptr, false);
  if (!h.is_object()) return nullptr;
  try {
    if (h.at("format") != weight_format_name(key.format) || h.at("policy") != key.policy ||
        h.at("source") != key.source || h.at("file_bytes") != size)
      return nullptr;
    for (const auto& e : h.at("entries")) {
      const size_t data_off = e.at("data_off"), data_len = e.at("data_len");
      const size_t aux_off = e.at("aux_off"), aux_len = e.at("aux_len");
      // Entries are Q8 or Q4 each (q4 mode keeps the vision tower in Q8).
      WeightMatrix w;
      const std::string format = e.at("format");
      if (format == weight_format_name(WeightFormat::Q8))
        w.format = WeightFormat::Q8;
      else if (format == weight_format_name(WeightFormat::Q4))
        w.format = WeightFormat::Q4;
      else
        return nullptr;
      w.rows = e.at("rows");
      w.cols = e.at("cols");
      w.group = e.at("group");
      if (w.rows <= 0 || w.cols <= 0 || !quant_layout_ok(w.format, w.cols, w.group)) return nullptr;
      if (data_len != quant_data_bytes(w.format, w.rows, w.cols) ||
          aux_len != quant_aux_bytes(w.format, w.rows, w.cols, w.group))
        return nullptr;
      if (data_off > size || data_len > size - data_off || aux_off > size || aux_len > size - aux_off ||
          data_off % kAlign || aux_off % kAlign)
        return nullptr;
      w.data = bytes + data_off;
      w.aux = bytes + aux_off;
      c->index_[e.at("name").get<std::string>()] = w;
    }
  } catch (const json::exception&) {
    return nullptr;
  }
  // Weights are streamed whole by every decode step: read them in now.
  ::madvise(const_cast<void*>(m), size, MADV_WILLNEED);
  return c;
}

bool QuantCache::find(const std::string& name, int rows, int cols, WeightMatrix* out) const {
  auto it = index_.find(name);
  if (it == index_.end() || it->second.rows != rows || it->second.cols != cols) return false;
  *out = it->second;
  return true;
}

std::string QuantCache::write(const std::string& path, const QuantCacheKey& key,
                              const std::vector<std::pair<std::string, const QuantizedWeights*>>& matrices) {
  if (path.empty()) return "caching is off";
  // Offsets are relative to the file start; the header's own length moves
  // them, so lay out the blobs after a generous fixed header area.
  json entries = json::array();
  size_t off = 0;
  for (const auto& [name, q] : matrices) {
    json e = {{"name", name},
              {"format", weight_format_name(q->format)},
              {"rows", q->rows},
              {"cols", q->cols},
              {"group", q->group}};
    e["data_off"] = off;
    e["data_len"] = q->data.size();
    off = align_up(off + q->data.size());
    e["aux_off"] = off;
    e["aux_len"] = q->aux.size();
    off = align_up(off + q->aux.size());
    entries.push_back(e);
  }
  // Header size with placeholder offsets bounds the real one (numbers only grow
  // by the base offset, at most 20 digits each).
  json h = {{"format", weight_format_name(key.format)},
            {"policy", key.policy},
            {"source", key.source},
            {"file_bytes", size_t(0)},
            {"entries", entries}};
  const size_t header_room = align_up(16 + h.dump().size() + 64 * (entries.size() * 2 + 1));
  const size_t total = header_room + off;
  for (auto& e : h["entries"]) {
    e["data_off"] = e["data_off"].get<size_t>() + header_room;
    e["aux_off"] = e["aux_off"].get<size_t>() + header_room;
  }
  h["file_bytes"] = total;
  const std::string header = h.dump();
  if (16 + header.size() > header_room) return "internal error: header does not fit";

  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return "cannot create " + tmp;
    const uint32_t version = kLayoutVersion, header_len = uint32_t(header.size());
    out.write(kMagic, 8);
    out.write(reinterpret_cast<const char*>(&version), 4);
    out.write(reinterpret_cast<const char*>(&header_len), 4);
    out.write(header.data(), std::streamsize(header.size()));
    std::string pad(header_room - 16 - header.size(), '\0');
    out.write(pad.data(), std::streamsize(pad.size()));
    for (const auto& [name, q] : matrices) {
      out.write(reinterpret_cast<const char*>(q->data.data()), std::streamsize(q->data.size()));
      pad.assign(align_up(q->data.size()) - q->data.size(), '\0');
      out.write(pad.data(), std::streamsize(pad.size()));
      out.write(reinterpret_cast<const char*>(q->aux.data()), std::streamsize(q->aux.size()));
      pad.assign(align_up(q->aux.size()) - q->aux.size(), '\0');
      out.write(pad.data(), std::streamsize(pad.size()));
    }
    out.flush();
    if (!out) {
      out.close();
      fs::remove(tmp, ec);
      return "cannot write " + tmp + " (disk full?)";
    }
  }
  // On disk, then out of the page cache: this process keeps its own copies,
  // and the next load reads the file back through a huge-page mapping
  // (map_file_readonly), where the kernel can then cache it in 2 MiB folios;
  // the pages this write left are 4 KiB ones, and decode streams slower
  // through them (docs/BENCHMARKS.md, issue 15 sixth step).
  if (const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
#if defined(__linux__)
    if (::fdatasync(fd) == 0) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
#else
    ::fsync(fd);  // (no page-cache advice outside Linux)
#endif
    ::close(fd);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    fs::remove(tmp, ec);
    return "cannot rename " + tmp + " to " + path;
  }
  return "";
}

}  // namespace md
