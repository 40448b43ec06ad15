// What a process really uses, from the kernel: resident memory, bytes read
// from devices (/proc/self/io), a file's page-cache pages (mincore); and
// the CPU it runs on, for the benchmarks' headers.
#ifndef SPARSE_MLP_BENCH_PROCESS_STATS_H_
#define SPARSE_MLP_BENCH_PROCESS_STATS_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace sparse_mlp::bench {

// VmRSS of this process, bytes (0 if unreadable).
size_t ResidentBytes();

// read_bytes of /proc/self/io: bytes this process caused to be read from
// storage (page-cache hits not counted), all threads.
uint64_t DeviceReadBytes();

// Bytes of `path` in the page cache now (mincore over a mapping that is
// never touched); 0 if the file cannot be mapped.
uint64_t PageCacheBytes(const std::string& path);

// The CPU's model name, from /proc/cpuinfo ("unknown" elsewhere).
std::string CpuName();

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_PROCESS_STATS_H_
