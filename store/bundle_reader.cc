#include "store/bundle_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "store/io_error.h"

namespace sparse_mlp::store {
namespace {

constexpr size_t kProbeBytes = 4096;

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// pread of exactly `bytes` (fewer only at the end of the file); -errno on
// failure.
int64_t ReadFully(int fd, void* buffer, size_t bytes, uint64_t offset) {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, static_cast<uint8_t*>(buffer) + done, bytes - done,
                              static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(done);
}

}  // namespace

absl::StatusOr<std::unique_ptr<BundleReader>> BundleReader::Open(const std::string& path,
                                                                const ReaderOptions& options) {
  return Open(path, options, MakeIoEngine);
}

absl::StatusOr<std::unique_ptr<BundleReader>> BundleReader::Open(const std::string& path,
                                                                 const ReaderOptions& options,
                                                                 const IoEngineMaker& make_engine) {
  if (options.max_request_bytes == 0) {
    return absl::InvalidArgumentError("max_request_bytes must be positive, got 0");
  }
  // O_DIRECT first (unless refused by the options); a file system without
  // it refuses the open (EINVAL) or the first aligned read.
  bool direct = options.direct_io != DirectIo::kNever;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd < 0 && direct && errno == EINVAL && options.direct_io == DirectIo::kAuto) {
    direct = false;
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) return ErrnoStatus(errno, absl::StrFormat("cannot open %s", path));
  auto close_fd = [&] { ::close(fd); };
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    close_fd();
    return ErrnoStatus(err, absl::StrFormat("cannot stat %s", path));
  }
  absl::StatusOr<memory::AlignedBuffer> probe =
      memory::AlignedBuffer::Allocate(2 * kProbeBytes, kProbeBytes);
  if (!probe.ok()) {
    close_fd();
    return probe.status();
  }
  int64_t got = ReadFully(fd, probe->data(), kProbeBytes, 0);
  if (got == -EINVAL && direct) {
    if (options.direct_io == DirectIo::kRequire) {
      close_fd();
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: the file system refuses O_DIRECT reads", path));
    }
    close_fd();
    direct = false;
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, absl::StrFormat("cannot open %s", path));
    got = ReadFully(fd, probe->data(), kProbeBytes, 0);
  }
  if (got < 0) {
    close_fd();
    return ErrnoStatus(static_cast<int>(-got), absl::StrFormat("%s: reading the header", path));
  }
  // Destinations of direct reads: 512-byte alignment where the device takes
  // it (a read into the probe buffer's second half, 512 off a page), else a
  // page.
  size_t memory_alignment = 1;
  if (direct) {
    memory_alignment = ReadFully(fd, probe->data() + kProbeBytes + kMinAlignment, kMinAlignment,
                                 0) == -EINVAL
                           ? kProbeBytes
                           : kMinAlignment;
  }
  const absl::Span<const uint8_t> head(probe->data(), static_cast<size_t>(got));
  absl::StatusOr<size_t> need = BundleLayout::EncodedHeaderSize(head, path);
  if (!need.ok()) {
    close_fd();
    return need.status();
  }
  absl::StatusOr<BundleLayout> layout;
  if (*need <= head.size()) {
    layout = BundleLayout::DecodeHeader(head, static_cast<uint64_t>(st.st_size), path);
  } else {
    const size_t bytes = RoundUp(*need, kProbeBytes);
    absl::StatusOr<memory::AlignedBuffer> header =
        memory::AlignedBuffer::Allocate(bytes, kProbeBytes);
    if (!header.ok()) {
      close_fd();
      return header.status();
    }
    got = ReadFully(fd, header->data(), bytes, 0);
    if (got < 0) {
      close_fd();
      return ErrnoStatus(static_cast<int>(-got), absl::StrFormat("%s: reading the header", path));
    }
    layout = BundleLayout::DecodeHeader(absl::MakeConstSpan(header->data(), got),
                                        static_cast<uint64_t>(st.st_size), path);
  }
  if (!layout.ok()) {
    close_fd();
    return layout.status();
  }
  absl::StatusOr<std::unique_ptr<IoEngine>> engine =
      make_engine(options.engine, fd, options.queue_depth, options.io_threads);
  if (!engine.ok()) {
    close_fd();
    return engine.status();
  }
  std::unique_ptr<BundleReader> r(
      new BundleReader(path, *std::move(layout), options, fd, direct, memory_alignment));
  r->engine_ = *std::move(engine);
  const BundleLayout& l = r->layout_;
  if (options.verify_checksums) {
    // The table is aligned and padded to the alignment (bundle_format.h).
    const size_t bytes = l.file_bytes() - l.checksum_offset();
    absl::StatusOr<memory::AlignedBuffer> table = memory::AlignedBuffer::Allocate(bytes, kProbeBytes);
    if (!table.ok()) return table.status();
    got = ReadFully(fd, table->data(), bytes, l.checksum_offset());
    if (got < 0) {
      return ErrnoStatus(static_cast<int>(-got),
                         absl::StrFormat("%s: reading the checksum table", path));
    }
    if (static_cast<size_t>(got) != bytes) {
      return absl::DataLossError(absl::StrFormat(
          "%s: checksum table cut short (%d of %d bytes)", path, got, bytes));
    }
    r->checksums_.resize(l.shape().layers * l.shape().intermediate);
    for (size_t k = 0; k < r->checksums_.size(); ++k) {
      uint64_t v = 0;
      for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(table->data()[8 * k + i]) << (8 * i);
      r->checksums_[k] = v;
    }
  }
  // Staging: two slots per request in flight (a landed run is checked and
  // copied out while the next reads are already in flight), each one
  // merged run.
  r->slot_bytes_ = RoundUp(std::max(options.max_request_bytes, l.bundle_stride()), l.alignment());
  absl::StatusOr<memory::AlignedBuffer> staging = memory::AlignedBuffer::Allocate(
      r->slot_bytes_ * 2 * static_cast<size_t>(options.queue_depth), kProbeBytes);
  if (!staging.ok()) return staging.status();
  r->staging_ = *std::move(staging);
  r->free_slots_.resize(2 * static_cast<size_t>(options.queue_depth));
  std::iota(r->free_slots_.begin(), r->free_slots_.end(), 0);
  r->submit_.resize(static_cast<size_t>(options.queue_depth));
  r->reaped_.resize(static_cast<size_t>(options.queue_depth));
  return r;
}

BundleReader::BundleReader(std::string path, BundleLayout layout, ReaderOptions options, int fd,
                           bool direct_io, size_t memory_alignment)
    : path_(std::move(path)),
      layout_(std::move(layout)),
      options_(std::move(options)),
      fd_(fd),
      direct_io_(direct_io),
      memory_alignment_(memory_alignment) {}

BundleReader::~BundleReader() {
  engine_.reset();  // waits for reads in flight
  if (fd_ >= 0) ::close(fd_);
}

IoEngineKind BundleReader::engine() const { return engine_->kind(); }

size_t BundleReader::BatchBytesPerBundle() {
  return sizeof(BundleRequest) + sizeof(uint32_t) + sizeof(Run);
}

size_t BundleReader::memory_bytes() const {
  return staging_.size() + checksums_.capacity() * sizeof(uint64_t) +
         requests_.capacity() * sizeof(BundleRequest) + order_.capacity() * sizeof(uint32_t) +
         runs_.capacity() * sizeof(Run) + submit_.capacity() * sizeof(IoRead) +
         reaped_.capacity() * sizeof(IoCompletion) + free_slots_.capacity() * sizeof(int);
}

absl::Status BundleReader::Reserve(size_t bundles) {
  if (bundles > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat("at most %d bundles per batch, got %d",
                                                      UINT32_MAX, bundles));
  }
  requests_.reserve(bundles);
  order_.reserve(bundles);
  runs_.reserve(bundles);
  return absl::OkStatus();
}

absl::Status BundleReader::BundleError(absl::StatusCode code, size_t request,
                                       const std::string& what) const {
  const BundleRequest& q = requests_[request];
  return absl::Status(code, absl::StrFormat("%s: layer %d neuron %d (offset %d, %d bytes): %s",
                                            path_, q.layer, q.neuron,
                                            layout_.bundle_offset(q.layer, q.neuron),
                                            layout_.bundle_bytes(), what));
}

absl::Status BundleReader::Validate(absl::Span<const BundleRequest> requests) const {
  const BundleShape& s = layout_.shape();
  if (requests.size() > UINT32_MAX - requests_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "at most %d bundles per batch, got %d", UINT32_MAX, requests.size() + requests_.size()));
  }
  for (size_t k = 0; k < requests.size(); ++k) {
    const BundleRequest& q = requests[k];
    if (q.layer >= s.layers) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "requests[%d]: layer %d out of range [0, %d) of %s", k, q.layer, s.layers, path_));
    }
    if (q.neuron >= s.intermediate) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "requests[%d]: neuron %d out of range [0, %d) of %s", k, q.neuron, s.intermediate,
          path_));
    }
    if (q.destination == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("requests[%d]: null destination", k));
    }
  }
  return absl::OkStatus();
}

void BundleReader::AddRuns(absl::Span<const BundleRequest> requests) {
  const size_t base = requests_.size();
  requests_.insert(requests_.end(), requests.begin(), requests.end());
  order_.resize(requests_.size());
  std::iota(order_.begin() + base, order_.end(), static_cast<uint32_t>(base));
  auto offset_of = [&](uint32_t k) {
    return layout_.bundle_offset(requests_[k].layer, requests_[k].neuron);
  };
  std::sort(order_.begin() + base, order_.end(), [&](uint32_t a, uint32_t b) {
    const uint64_t oa = offset_of(a), ob = offset_of(b);
    return oa != ob ? oa < ob : a < b;
  });
  // Runs of adjacent bundles, each at most max_request_bytes (at least one
  // bundle). A run lands straight in its destinations when they are laid
  // out as the file lays out the bundles (no padding between them) and
  // aligned as the reads need; otherwise in a staging slot.
  const size_t stride = layout_.bundle_stride(), bundle = layout_.bundle_bytes();
  const size_t max_run = std::max<size_t>(1, options_.max_request_bytes / stride);
  for (size_t p = base; p < order_.size();) {
    Run run;
    run.first = p;
    run.offset = offset_of(order_[p]);
    run.count = 1;
    while (p + run.count < order_.size() && run.count < max_run &&
           offset_of(order_[p + run.count]) == run.offset + run.count * stride &&
           requests_[order_[p + run.count]].layer == requests_[order_[p]].layer) {
      ++run.count;
    }
    run.length = run.count * stride;
    auto* dst0 = static_cast<uint8_t*>(requests_[order_[p]].destination);
    bool direct = stride == bundle && reinterpret_cast<uintptr_t>(dst0) % memory_alignment_ == 0;
    for (size_t k = 1; direct && k < run.count; ++k) {
      direct = requests_[order_[p + k]].destination == dst0 + k * stride;
    }
    run.buffer = direct ? dst0 : nullptr;
    runs_.push_back(run);
    p += run.count;
  }
  if (outstanding_ == 0 && !requests.empty()) busy_since_ = std::chrono::steady_clock::now();
  outstanding_ += requests.size();
  stats_.bundles += requests.size();
}

absl::Status BundleReader::Start(absl::Span<const BundleRequest> requests) {
  if (outstanding_ > 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: a batch is in flight (%d bundles outstanding); Finish it first", path_, outstanding_));
  }
  requests_.clear();
  if (absl::Status s = Validate(requests); !s.ok()) return s;
  order_.clear();
  runs_.clear();
  next_run_ = 0;
  first_error_ = absl::OkStatus();
  ++stats_.batches;
  AddRuns(requests);
  Pump();
  return absl::OkStatus();
}

absl::Status BundleReader::Append(absl::Span<const BundleRequest> requests) {
  if (outstanding_ == 0) return Start(requests);
  if (absl::Status s = Validate(requests); !s.ok()) return s;
  AddRuns(requests);
  Pump();
  return absl::OkStatus();
}

void BundleReader::Pump() {
  size_t n = 0;
  const size_t room = engine_->capacity() - engine_->in_flight();
  while (next_run_ < runs_.size() && n < room) {
    Run& run = runs_[next_run_];
    if (run.buffer == nullptr) {
      if (free_slots_.empty()) break;
      run.slot = free_slots_.back();
      free_slots_.pop_back();
      run.buffer = staging_.data() + static_cast<size_t>(run.slot) * slot_bytes_;
    }
    submit_[n++] = {run.offset, run.length, run.buffer, next_run_};
    ++next_run_;
  }
  if (n == 0) return;
  stats_.requests += n;
  if (absl::Status s = engine_->Submit(absl::MakeConstSpan(submit_.data(), n)); !s.ok()) {
    // The kernel refused them: the next Poll reports their bundles failed.
    for (size_t k = 0; k < n; ++k) refused_.push_back({submit_[k].tag, s});
  }
}

absl::Status BundleReader::Resubmit(size_t run_index) {
  Run& run = runs_[run_index];
  ++stats_.requests;
  return engine_->Submit({{run.offset + run.done_bytes, run.length - run.done_bytes,
                           run.buffer + run.done_bytes, run_index}});
}

void BundleReader::Complete(size_t run_index, int64_t result, absl::Status error,
                            absl::FunctionRef<void(size_t, const absl::Status&)> done) {
  Run& run = runs_[run_index];
  if (error.ok()) {
    const bool partial = result > 0 && run.done_bytes + result < run.length;
    if (result > 0) {
      stats_.bytes_read += static_cast<uint64_t>(result);
      run.done_bytes += static_cast<size_t>(result);
    }
    if (result == -EINTR || result == -EAGAIN || partial) {
      // Interrupted, or a partial read: ask again for the rest.
      error = Resubmit(run_index);
      if (error.ok()) return;
    } else if (result < 0) {
      error = absl::UnavailableError(
          absl::StrCat("read failed: ", std::strerror(static_cast<int>(-result))));
    } else if (run.done_bytes < run.length) {
      error = absl::DataLossError(absl::StrFormat(
          "short read: %d of %d bytes of the request at offset %d (was the file truncated?)",
          run.done_bytes, run.length, run.offset));
    }
  }
  const size_t stride = layout_.bundle_stride(), bundle = layout_.bundle_bytes();
  const size_t per_layer = layout_.shape().intermediate;
  for (size_t k = 0; k < run.count; ++k) {
    const size_t index = order_[run.first + k];
    const BundleRequest& q = requests_[index];
    absl::Status status;
    if (!error.ok()) {
      status = BundleError(error.code(), index, std::string(error.message()));
    } else {
      const uint8_t* src = run.buffer + k * stride;
      if (options_.verify_checksums) {
        const uint64_t want = checksums_[q.layer * per_layer + q.neuron];
        const uint64_t got = BundleChecksum(src, bundle);
        if (got != want) {
          status = BundleError(absl::StatusCode::kDataLoss, index,
                               absl::StrFormat("checksum mismatch (stored %#x, computed %#x)",
                                               want, got));
        }
      }
      // Only checked bytes reach a destination from staging.
      if (status.ok() && run.slot >= 0) {
        std::memcpy(q.destination, src, bundle);
        ++stats_.staged_bundles;
      }
    }
    if (!status.ok()) {
      ++stats_.errors;
      if (first_error_.ok()) first_error_ = status;
    }
    if (--outstanding_ == 0) {
      stats_.busy_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - busy_since_).count();
    }
    done(index, status);
  }
  if (run.slot >= 0) free_slots_.push_back(run.slot);
}

size_t BundleReader::Poll(absl::FunctionRef<void(size_t, const absl::Status&)> done, bool wait) {
  while (outstanding_ > 0) {
    size_t n = 0;
    if (!refused_.empty()) {
      std::vector<std::pair<size_t, absl::Status>> refused;
      refused.swap(refused_);
      for (auto& [run, status] : refused) Complete(run, 0, status, done);
      n += refused.size();
    }
    const size_t reaped = engine_->Reap(absl::MakeSpan(reaped_), wait && n == 0);
    // Refill the queue before checking and copying what landed, so the
    // device is not left idle while this thread hashes (staging has a
    // second set of slots for this).
    Pump();
    for (size_t k = 0; k < reaped; ++k) {
      Complete(reaped_[k].tag, reaped_[k].result, absl::OkStatus(), done);
    }
    n += reaped;
    Pump();
    if (n > 0 || !wait) break;
  }
  return outstanding_;
}

absl::Status BundleReader::Finish(absl::FunctionRef<void(size_t, const absl::Status&)> done) {
  while (Poll(done, /*wait=*/true) > 0) {
  }
  return first_error_;
}

absl::Status BundleReader::Finish() {
  return Finish([](size_t, const absl::Status&) {});
}

absl::Status BundleReader::Read(absl::Span<const BundleRequest> requests) {
  if (absl::Status s = Start(requests); !s.ok()) return s;
  return Finish();
}

}  // namespace sparse_mlp::store
