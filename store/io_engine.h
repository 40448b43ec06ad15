// IoEngine: asynchronous positional reads from one file descriptor, behind
// one interface so the bundle reader runs the same over io_uring and over a
// pool of threads calling pread(2).
//
// Theory of operation: Submit hands reads to the engine (at most
// capacity() in flight); Reap returns finished ones, each with its tag and
// the bytes read or -errno. An engine never splits or merges reads and never
// retries: a short read is reported as such and the caller decides.
// Destinations are plain host memory written by the kernel (io_uring) or by
// pread; with O_DIRECT file descriptors the caller keeps buffers, offsets
// and lengths aligned.
//
// Thread-compatible: one thread drives an engine. The pread engine's workers
// are internal. Allocation: at creation only (the ring / the queues).
#ifndef SPARSE_MLP_STORE_IO_ENGINE_H_
#define SPARSE_MLP_STORE_IO_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "platform/enum_names.h"

namespace sparse_mlp::store {

enum class IoEngineKind {
  kIoUring,  // io_uring (liburing): one ring of queue_depth entries
  kPread,    // io_threads threads each calling blocking pread(2)
  kAuto,     // io_uring where the kernel allows it, else pread
};

inline constexpr EnumName<IoEngineKind> kIoEngineNames[] = {
    {IoEngineKind::kIoUring, "io_uring"},
    {IoEngineKind::kPread, "pread"},
    {IoEngineKind::kAuto, "auto"},
};
SPARSE_MLP_ENUM_NAME_FUNCTIONS(IoEngineKind, kIoEngineNames, IoEngineName, ParseIoEngine,
                               "I/O engine")

struct IoRead {
  uint64_t offset = 0;
  size_t length = 0;
  void* buffer = nullptr;
  uint64_t tag = 0;  // returned with the completion
};

struct IoCompletion {
  uint64_t tag = 0;
  int64_t result = 0;  // bytes read (may be short), or -errno
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual IoEngineKind kind() const = 0;
  // The most reads in flight at once.
  virtual size_t capacity() const = 0;
  virtual size_t in_flight() const = 0;
  // Starts `reads` (in_flight() + reads.size() <= capacity(), else
  // InvalidArgument and nothing started). Unavailable if the kernel refuses
  // the submission.
  virtual absl::Status Submit(absl::Span<const IoRead> reads) = 0;
  // Writes up to out.size() completions into out and returns how many. With
  // wait, blocks until at least one is available while any is in flight.
  virtual size_t Reap(absl::Span<IoCompletion> out, bool wait) = 0;
};

// An engine of `kind` reading `fd` (kAuto: io_uring, else pread) with
// queue_depth reads in flight (1..4096) and, for pread, io_threads threads
// (1..256). InvalidArgument for a bad depth or thread count; Unavailable
// (with the kernel's reason) when io_uring is asked for and cannot be set
// up.
absl::StatusOr<std::unique_ptr<IoEngine>> MakeIoEngine(IoEngineKind kind, int fd,
                                                       int queue_depth, int io_threads);

// How a reader builds its engine, with MakeIoEngine's arguments and
// contract. The reader uses MakeIoEngine unless given another maker: an
// engine of the caller's own (reads into memory the CPU does not own, or,
// in the tests, an engine that wraps a real one and fails on demand). The
// maker is called while the reader opens; the engine it returns must read
// `fd` and lives as long as the reader.
using IoEngineMaker = std::function<absl::StatusOr<std::unique_ptr<IoEngine>>(
    IoEngineKind kind, int fd, int queue_depth, int io_threads)>;

// Each concrete engine and whether this process can use it, with the reason
// when not (for diagnostics: python3 -m sparse_mlp).
struct IoEngineAvailability {
  IoEngineKind kind;
  bool available;
  std::string reason;
};
std::vector<IoEngineAvailability> AvailableIoEngines();

}  // namespace sparse_mlp::store

#endif  // SPARSE_MLP_STORE_IO_ENGINE_H_
