// BundleWriter: writes a neuron-bundle file (store/bundle_format.h) layer by
// layer, streaming: it never holds more than a block of bundles (about
// block_bytes) of a layer in memory, so models larger than DRAM convert.
//
// The file is written under `path + ".partial"` and renamed to `path` by
// Finish (after an fsync), so a reader never sees a half-written file; a
// writer destroyed or failed before Finish removes the partial file.
//
// Ownership: the writer owns its file descriptor and buffers; it reads the
// caller's weights only during AppendLayer. Thread-compatible. Allocation:
// the block buffers at Create, nothing per layer. Errors: absl::Status
// naming the path and the value (InvalidArgument for bad arguments,
// FailedPrecondition for calls out of order, Unavailable / NotFound /
// PermissionDenied for I/O failures, with errno's text).
#ifndef SPARSE_MLP_STORE_BUNDLE_WRITER_H_
#define SPARSE_MLP_STORE_BUNDLE_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "memory/aligned_buffer.h"
#include "store/bundle_format.h"

namespace sparse_mlp::store {

// One layer's weights as an MLP keeps them: gate and up [I, H] row-major;
// down [H, I] (nn.Linear's layout) or, with down_neuron_major, [I, H].
// For a quantized file, [I] quantized rows of layout().row_bytes() each,
// down neuron-major (each neuron's column quantized along H).
// gate is null exactly when the file is gate-less. For a file holding a
// slice of the model's neurons, the arrays are the whole layer's (I = the
// model's) and the writer takes the slice's rows and columns.
struct LayerWeights {
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
  bool down_neuron_major = false;
};

struct WriterOptions {
  size_t alignment = kDefaultAlignment;  // see bundle_format.h
  size_t block_bytes = size_t{8} << 20;  // bundles assembled per write
  int num_threads = 1;                   // transposing down's columns
};

class BundleWriter {
 public:
  // Creates `path + ".partial"` for a file of `shape`. InvalidArgument for a
  // bad shape or options; the I/O errors of open(2).
  static absl::StatusOr<std::unique_ptr<BundleWriter>> Create(const std::string& path,
                                                              const BundleShape& shape,
                                                              const WriterOptions& options = {});
  ~BundleWriter();
  BundleWriter(const BundleWriter&) = delete;
  BundleWriter& operator=(const BundleWriter&) = delete;

  // Appends the next layer (layers are written in order). InvalidArgument
  // for null arrays (or a gate given to a gate-less file), FailedPrecondition
  // once all layers are written or after a failure; I/O errors. O(I x H).
  absl::Status AppendLayer(const LayerWeights& weights);

  // Writes the checksum table and header, fsyncs and renames the file to
  // its path. FailedPrecondition unless every layer was appended.
  absl::Status Finish();

  const BundleLayout& layout() const { return layout_; }
  size_t layers_written() const { return layers_written_; }

 private:
  BundleWriter(std::string path, BundleLayout layout, WriterOptions options, int fd);
  absl::Status WriteAt(const void* data, size_t bytes, uint64_t offset, const char* what);
  absl::Status Fail(absl::Status status);

  std::string path_, partial_path_;
  BundleLayout layout_;
  WriterOptions options_;
  int fd_ = -1;
  size_t layers_written_ = 0;
  bool failed_ = false, finished_ = false;
  size_t block_neurons_ = 0;
  memory::AlignedBuffer block_;     // block_neurons_ bundles, stride-spaced
  memory::AlignedBuffer down_tmp_;  // block_neurons_ down columns as rows
  std::vector<uint64_t> checksums_;
};

}  // namespace sparse_mlp::store

#endif  // SPARSE_MLP_STORE_BUNDLE_WRITER_H_
