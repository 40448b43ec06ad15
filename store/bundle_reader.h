// BundleReader: asynchronous batch reads of neuron bundles from a bundle
// file (store/bundle_format.h) into destinations the caller gives.
//
// Theory of operation. Open validates the header against the file's size
// and loads the checksum table. A batch (Start) is a list of (layer,
// neuron, destination); the reader sorts it by file offset, merges runs of
// adjacent bundles into one request up to max_request_bytes, and keeps up to
// queue_depth requests in flight on the I/O engine (io_uring, or a pool of
// pread threads). A request lands either straight in the destinations (one
// bundle, or adjacent bundles whose destinations are adjacent too, suitably
// aligned for O_DIRECT) or in a staging slot from which each bundle is
// checked and then copied out. Poll reports each bundle once, as it lands,
// so a consumer can compute on a neuron while the others are still read.
//
// Files are opened with O_DIRECT (no page cache: what is read is what the
// consumer keeps); where the file system refuses it (tmpfs) the reader falls
// back to buffered reads (direct_io() says which). Checksums (XXH3-64 per
// bundle) are verified on arrival unless turned off.
//
// Destinations: any host memory the CPU can write, bundle_bytes() each
// (pageable, pinned for a GPU's DMA, or a cache's slots): the reader writes
// them only through read(2)-family calls and memcpy. A bundle reported with
// an error may have left arbitrary bytes in its destination (a direct read
// that failed its checksum); a staged one never touches it. Nothing else is
// written.
//
// Errors: per bundle, naming the file, layer, neuron and offset: Unavailable
// (the read failed, with errno's text), DataLoss (a short read: the file was
// truncated; or a checksum mismatch). Start refuses a bad request
// (InvalidArgument naming its index and value) before reading anything.
//
// Thread-compatible: one thread drives a reader (the pread engine's workers
// are internal). Allocation: at Open (staging: 2 x queue_depth slots of
// max_request_bytes; the checksum table: 8 bytes per bundle) and when a batch
// is larger than any before (Reserve avoids even that); none per batch
// otherwise. O(n log n) per batch of n bundles (the sort), plus the I/O.
#ifndef SPARSE_MLP_STORE_BUNDLE_READER_H_
#define SPARSE_MLP_STORE_BUNDLE_READER_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "memory/aligned_buffer.h"
#include "platform/enum_names.h"
#include "store/bundle_format.h"
#include "store/io_engine.h"

namespace sparse_mlp::store {

enum class DirectIo {
  kAuto,     // O_DIRECT where the file system allows it, else buffered
  kRequire,  // O_DIRECT or fail (InvalidArgument naming the path)
  kNever,    // buffered reads through the page cache
};

inline constexpr EnumName<DirectIo> kDirectIoNames[] = {
    {DirectIo::kAuto, "auto"},
    {DirectIo::kRequire, "require"},
    {DirectIo::kNever, "never"},
};
SPARSE_MLP_ENUM_NAME_FUNCTIONS(DirectIo, kDirectIoNames, DirectIoName, ParseDirectIo,
                               "direct_io")

struct ReaderOptions {
  IoEngineKind engine = IoEngineKind::kAuto;
  int queue_depth = 32;                      // requests in flight, [1, 4096]
  int io_threads = 4;                        // pread engine's threads, [1, 256]
  size_t max_request_bytes = size_t{128} << 10;  // merged runs of adjacent bundles
  bool verify_checksums = true;
  DirectIo direct_io = DirectIo::kAuto;
};

struct BundleRequest {
  size_t layer = 0;
  size_t neuron = 0;  // within this file (0 .. intermediate - 1)
  void* destination = nullptr;  // bundle_bytes() bytes
};

struct ReaderStats {
  uint64_t batches = 0;
  uint64_t bundles = 0;
  uint64_t requests = 0;      // reads issued (merged runs; resubmissions count)
  uint64_t bytes_read = 0;    // bytes the device returned
  uint64_t staged_bundles = 0;  // copied out of a staging slot
  uint64_t errors = 0;        // bundles reported with an error
  double busy_seconds = 0;    // wall time with bundles outstanding (the device busy for us)
};

class BundleReader {
 public:
  // Opens and validates `path`. Errors name the path and the field
  // (bundle_format.h's DecodeHeader); the I/O errors of open(2) / read(2);
  // InvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<BundleReader>> Open(const std::string& path,
                                                            const ReaderOptions& options = {});
  // The same, reading through the engine `make_engine` builds
  // (store/io_engine.h) instead of MakeIoEngine's.
  static absl::StatusOr<std::unique_ptr<BundleReader>> Open(const std::string& path,
                                                            const ReaderOptions& options,
                                                            const IoEngineMaker& make_engine);
  ~BundleReader();
  BundleReader(const BundleReader&) = delete;
  BundleReader& operator=(const BundleReader&) = delete;

  const BundleLayout& layout() const { return layout_; }
  const std::string& path() const { return path_; }
  IoEngineKind engine() const;
  bool direct_io() const { return direct_io_; }
  const ReaderStats& stats() const { return stats_; }
  // Bytes this reader holds: staging, the checksum table, batch arrays.
  size_t memory_bytes() const;
  // Bytes the batch arrays take per bundle of Reserve's capacity.
  static size_t BatchBytesPerBundle();
  // Alignment a destination needs for a read to land in it without
  // staging (1 for buffered reads).
  size_t destination_alignment() const { return memory_alignment_; }

  // Sizes the per-batch arrays for batches of up to `bundles` requests.
  absl::Status Reserve(size_t bundles);

  // Starts reading `requests` (copied; destinations must stay valid until
  // each is reported). FailedPrecondition while a batch is in flight;
  // InvalidArgument for a layer or neuron out of range or a null
  // destination, naming the request's index; nothing is read then.
  absl::Status Start(absl::Span<const BundleRequest> requests);
  // Adds `requests` to the batch in flight (Start when none is): their
  // indices follow the batch's, in order, and their reads enter the queue
  // as it frees, so a caller with a stream of batches keeps the device busy
  // between them (flash/flash_cache.h's I/O threads). Errors as Start's;
  // nothing added then.
  absl::Status Append(absl::Span<const BundleRequest> requests);
  // Reports landed bundles: done(request index, status) once per bundle, in
  // completion order. With wait, blocks until at least one lands while any
  // is outstanding. Returns how many are still outstanding.
  size_t Poll(absl::FunctionRef<void(size_t, const absl::Status&)> done, bool wait);
  // Polls until the batch is complete; returns OK or the first error
  // reported (every bundle is still reported to done).
  absl::Status Finish(absl::FunctionRef<void(size_t, const absl::Status&)> done);
  absl::Status Finish();
  // Start + Finish.
  absl::Status Read(absl::Span<const BundleRequest> requests);
  bool busy() const { return outstanding_ > 0; }

 private:
  struct Run {
    uint64_t offset = 0;
    size_t length = 0, done_bytes = 0;
    size_t first = 0, count = 0;  // positions in order_
    uint8_t* buffer = nullptr;
    int slot = -1;  // staging slot, or -1: straight into the destinations
  };
  BundleReader(std::string path, BundleLayout layout, ReaderOptions options, int fd,
               bool direct_io, size_t memory_alignment);
  // Start's and Append's checks of requests (nothing changed).
  absl::Status Validate(absl::Span<const BundleRequest> requests) const;
  // Appends `requests` to the batch and plans their runs.
  void AddRuns(absl::Span<const BundleRequest> requests);
  void Pump();
  absl::Status Resubmit(size_t run_index);
  // Finishes a request: its result (bytes or -errno), or `error` when the
  // kernel refused to start it; reports its bundles unless it resubmits.
  void Complete(size_t run_index, int64_t result, absl::Status error,
                absl::FunctionRef<void(size_t, const absl::Status&)> done);
  absl::Status BundleError(absl::StatusCode code, size_t request, const std::string& what) const;

  std::string path_;
  BundleLayout layout_;
  ReaderOptions options_;
  int fd_ = -1;
  bool direct_io_ = false;
  size_t memory_alignment_ = 1;
  std::unique_ptr<IoEngine> engine_;
  std::vector<uint64_t> checksums_;
  size_t slot_bytes_ = 0;
  memory::AlignedBuffer staging_;
  std::vector<int> free_slots_;
  // The batch in flight.
  std::vector<BundleRequest> requests_;
  std::vector<uint32_t> order_;
  std::vector<Run> runs_;
  size_t next_run_ = 0, outstanding_ = 0;
  std::chrono::steady_clock::time_point busy_since_;  // outstanding_ became > 0
  absl::Status first_error_;
  std::vector<IoRead> submit_;
  std::vector<IoCompletion> reaped_;
  std::vector<std::pair<size_t, absl::Status>> refused_;  // runs the kernel refused
  ReaderStats stats_;
};

}  // namespace sparse_mlp::store

#endif  // SPARSE_MLP_STORE_BUNDLE_READER_H_
