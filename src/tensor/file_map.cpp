#include "tensor/file_map.h"

#include <sys/mman.h>

#if !defined(MAP_NORESERVE)
#define MAP_NORESERVE 0  // (an address-space reservation only: nothing to reserve where it is absent)
#endif

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace md {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

}  // namespace

const void* map_file_readonly(int fd, size_t size) {
  if (size == 0) {
    errno = EINVAL;
    return nullptr;
  }
  // A PMD entry needs the virtual address and the file offset to agree
  // modulo 2 MiB: reserve room, then map the file at the aligned address
  // inside it and give back the slack.
  void* room = ::mmap(nullptr, size + kHugePage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (room == MAP_FAILED) return nullptr;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(room);
  const uintptr_t at = (lo + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  void* m = ::mmap(reinterpret_cast<void*>(at), size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
  if (m == MAP_FAILED) {
    const int e = errno;
    ::munmap(room, size + kHugePage);
    errno = e;
    return nullptr;
  }
  if (at > lo) ::munmap(room, at - lo);
  const uintptr_t end = at + size, room_end = lo + size + kHugePage;
  if (room_end > end) ::munmap(reinterpret_cast<void*>(end), room_end - end);
#if defined(MADV_HUGEPAGE)
  // Advisory: EINVAL on kernels without transparent huge pages.
  ::madvise(m, size, MADV_HUGEPAGE);
#endif
  return m;
}

void unmap_file(const void* p, size_t size) {
  if (p) ::munmap(const_cast<void*>(p), size);
}

bool mapping_has_hugepage_advice(const void* p) {
  std::ifstream f("/proc/self/smaps");
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(f, line)) {
    unsigned long long b = 0, e = 0;
    // A mapping's header line: "start-end perms offset dev inode path".
    if (std::sscanf(line.c_str(), "%llx-%llx ", &b, &e) == 2 && line.find(' ') > line.find('-')) {
      inside = a >= b && a < e;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line.find(" hg") != std::string::npos;
  }
  return false;
}

long long file_pmd_mapped_bytes() {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "FilePmdMapped: %lld kB", &kb) == 1) return kb * 1024;
  }
  return -1;
}

}  // namespace md
