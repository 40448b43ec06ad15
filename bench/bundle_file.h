// The benchmarks' bundle files: random weights of a shape, written once into
// a directory on the device and reused while the header matches.
#ifndef SPARSE_MLP_BENCH_BUNDLE_FILE_H_
#define SPARSE_MLP_BENCH_BUNDLE_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "store/bundle_format.h"

namespace sparse_mlp::bench {

// Leaves at `path` a bundle file of `shape` (gated, whole model) with
// `alignment`: kept when it opens and its header says the same, otherwise
// written from random values (one layer in memory, 2 threads). Prints a
// line when it writes. Errors: the writer's.
absl::Status EnsureBundleFile(const std::string& path, const store::BundleShape& shape,
                              size_t alignment);

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_BUNDLE_FILE_H_
