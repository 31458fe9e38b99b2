#pragma once
// Read-only mappings of weight files (safetensors, the quantised-weight
// cache) laid out for the decode step's streaming reads.
#include <cstddef>

namespace md {

// Maps `size` bytes of the open file `fd` read-only at a 2 MiB-aligned
// address and asks for transparent huge pages (MADV_HUGEPAGE). Where the
// kernel and file system keep the file's page cache in 2 MiB folios (Linux
// 6.x, ext4/xfs), the mapping then uses one TLB entry per 2 MiB instead of
// 512: the decode step streams every weight once per token, and with 4 KiB
// pages it ran 8–10 % slower (docs/BENCHMARKS.md, issue 15 sixth step).
// Elsewhere the advice is ignored and this is an ordinary mapping.
// Returns nullptr (errno set) if the file cannot be mapped.
const void* map_file_readonly(int fd, size_t size);
// Unmaps what map_file_readonly returned.
void unmap_file(const void* p, size_t size);

// True if the kernel marked the mapping containing p for huge pages (the
// "hg" flag of /proc/self/smaps); false where that file is unreadable.
bool mapping_has_hugepage_advice(const void* p);
// Bytes of this process's file mappings that the kernel maps with 2 MiB
// entries (FilePmdMapped of /proc/self/smaps_rollup), -1 where unknown.
long long file_pmd_mapped_bytes();

}  // namespace md
