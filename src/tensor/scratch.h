#pragma once
// A growing per-thread buffer: reused across calls, never zero-filled again
// (fresh zeroed pages for every GEMM call cost page faults and memsets).
#include <cstddef>
#include <vector>

namespace md {

template <class T>
T* scratch(std::vector<T>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace md
