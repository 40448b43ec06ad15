// The device's random-read curve, measured in the benchmark's own run: random
// reads of one request size at one queue depth through io_uring with
// O_DIRECT, at 4 KiB-aligned offsets of a file on the device. What a bundle
// read is compared against (//bench:store, //bench:flash).
#ifndef SPARSE_MLP_BENCH_DEVICE_CURVE_H_
#define SPARSE_MLP_BENCH_DEVICE_CURVE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace sparse_mlp::bench {

struct CurvePoint {
  size_t request_bytes = 0;
  int depth = 0;
  double gbps = 0;      // bytes read / wall time
  double requests_per_s = 0;
};

// Random reads of `request_bytes` from the first `span_bytes` of `path`
// (opened O_DIRECT) at `depth` in flight, for about `seconds` (at least
// 4 x depth reads). Errors: the file cannot be opened with O_DIRECT, or a
// read fails.
absl::StatusOr<CurvePoint> MeasureRandomReads(const std::string& path, uint64_t span_bytes,
                                              size_t request_bytes, int depth, double seconds,
                                              uint64_t seed);

// A curve's GB/s (by request size) at `bytes`: linear in log(size) between
// the two measured sizes around it, the end values outside them.
// Precondition: gbps_by_size is not empty.
double InterpolateLogSize(const std::map<size_t, double>& gbps_by_size, double bytes);

// The file system type of `dir` is tmpfs / ramfs (a benchmark of the
// device must not run there).
bool IsMemoryFileSystem(const std::string& dir);

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_DEVICE_CURVE_H_
