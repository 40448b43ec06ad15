#include "bench/device_curve.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <iterator>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "memory/aligned_buffer.h"
#include "store/io_engine.h"

namespace sparse_mlp::bench {

double InterpolateLogSize(const std::map<size_t, double>& gbps_by_size, double bytes) {
  auto hi = gbps_by_size.lower_bound(static_cast<size_t>(std::ceil(bytes)));
  if (hi == gbps_by_size.begin()) return hi->second;
  if (hi == gbps_by_size.end()) return std::prev(hi)->second;
  const auto lo = std::prev(hi);
  const double t = std::log(bytes / lo->first) / std::log(double(hi->first) / lo->first);
  return (1 - t) * lo->second + t * hi->second;
}

bool IsMemoryFileSystem(const std::string& dir) {
  struct statfs fs;
  if (::statfs(dir.c_str(), &fs) != 0) return false;
  return fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
}

absl::StatusOr<CurvePoint> MeasureRandomReads(const std::string& path, uint64_t span_bytes,
                                              size_t request_bytes, int depth, double seconds,
                                              uint64_t seed) {
  constexpr size_t kPage = 4096;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return absl::UnavailableError(absl::StrFormat("cannot open %s with O_DIRECT", path));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const size_t slot = (request_bytes + kPage - 1) / kPage * kPage;
  absl::StatusOr<memory::AlignedBuffer> buffers =
      memory::AlignedBuffer::Allocate(slot * static_cast<size_t>(depth), kPage);
  if (!buffers.ok()) return buffers.status();
  absl::StatusOr<std::unique_ptr<store::IoEngine>> engine =
      store::MakeIoEngine(store::IoEngineKind::kIoUring, fd, depth, 1);
  if (!engine.ok()) return engine.status();
  std::mt19937_64 rng(seed);
  const uint64_t pages = (span_bytes - request_bytes) / kPage;
  auto read_for = [&](uint64_t tag) {
    return store::IoRead{(rng() % pages) * kPage, request_bytes, buffers->data() + tag * slot, tag};
  };
  std::vector<store::IoCompletion> done(static_cast<size_t>(depth));
  uint64_t reads = 0, bytes = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  for (int k = 0; k < depth; ++k) {
    if (absl::Status s = (*engine)->Submit({read_for(static_cast<uint64_t>(k))}); !s.ok()) return s;
  }
  const uint64_t min_reads = 4 * static_cast<uint64_t>(depth);
  bool stopping = false;
  while ((*engine)->in_flight() > 0) {
    const size_t n = (*engine)->Reap(absl::MakeSpan(done), true);
    for (size_t k = 0; k < n; ++k) {
      if (done[k].result < 0) {
        return absl::UnavailableError(absl::StrFormat("%s: read failed (errno %d)", path,
                                                      -done[k].result));
      }
      ++reads;
      bytes += static_cast<uint64_t>(done[k].result);
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      stopping = stopping || (elapsed >= seconds && reads >= min_reads);
      if (!stopping) {
        if (absl::Status s = (*engine)->Submit({read_for(done[k].tag)}); !s.ok()) return s;
      }
    }
  }
  CurvePoint p;
  p.request_bytes = request_bytes;
  p.depth = depth;
  p.gbps = bytes / elapsed / 1e9;
  p.requests_per_s = reads / elapsed;
  return p;
}

}  // namespace sparse_mlp::bench
