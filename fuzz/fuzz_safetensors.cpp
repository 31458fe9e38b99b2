// Fuzz target: a safetensors file (8-byte header length, JSON header, data)
// opened through SafetensorsFile::open, as the model loader does. The bytes
// go to an in-memory file (memfd) so the real mmap path runs.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "tensor/error.h"
#include "tensor/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) __builtin_trap();
  size_t off = 0;
  while (off < size) {
    const ssize_t n = write(fd, data + off, size - off);
    if (n <= 0) __builtin_trap();
    off += size_t(n);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    auto f = md::SafetensorsFile::open(path);
    // Every accepted tensor lies inside the file and its byte count matches.
    for (const auto& [name, t] : f->tensors()) {
      if (t.nbytes != t.numel() * md::dtype_size(t.dtype)) __builtin_trap();
      volatile uint8_t sink = 0;
      if (t.nbytes) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    }
  } catch (const md::Error&) {
  }
  close(fd);
  return 0;
}
