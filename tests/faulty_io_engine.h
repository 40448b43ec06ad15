// FaultyIoEngine: a test seam for the store's and the flash tier's error
// paths. It wraps a real engine (store::MakeIoEngine) and passes every
// completion through `fault(offset, length, result)`, whose return value
// replaces the result (bytes read or -errno): an EIO, a short read or an
// interrupted read on demand, for exactly the requests a test names.
#ifndef SPARSE_MLP_TESTS_FAULTY_IO_ENGINE_H_
#define SPARSE_MLP_TESTS_FAULTY_IO_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "store/io_engine.h"

namespace sparse_mlp::test_util {

using FaultFn = std::function<int64_t(uint64_t offset, size_t length, int64_t result)>;

class FaultyIoEngine final : public store::IoEngine {
 public:
  FaultyIoEngine(std::unique_ptr<store::IoEngine> inner, FaultFn fault)
      : inner_(std::move(inner)), fault_(std::move(fault)) {}

  store::IoEngineKind kind() const override { return inner_->kind(); }
  size_t capacity() const override { return inner_->capacity(); }
  size_t in_flight() const override { return inner_->in_flight(); }
  absl::Status Submit(absl::Span<const store::IoRead> reads) override {
    for (const store::IoRead& r : reads) reads_[r.tag] = {r.offset, r.length};
    return inner_->Submit(reads);
  }
  size_t Reap(absl::Span<store::IoCompletion> out, bool wait) override {
    const size_t n = inner_->Reap(out, wait);
    for (size_t k = 0; k < n; ++k) {
      const auto& [offset, length] = reads_[out[k].tag];
      out[k].result = fault_(offset, length, out[k].result);
    }
    return n;
  }

 private:
  std::unique_ptr<store::IoEngine> inner_;
  FaultFn fault_;
  std::unordered_map<uint64_t, std::pair<uint64_t, size_t>> reads_;  // tag -> read
};

// An IoEngineMaker whose engines fail as `fault` says (FaultyIoEngine).
inline store::IoEngineMaker FaultyEngines(FaultFn fault) {
  return [fault](store::IoEngineKind kind, int fd, int queue_depth,
                 int io_threads) -> absl::StatusOr<std::unique_ptr<store::IoEngine>> {
    absl::StatusOr<std::unique_ptr<store::IoEngine>> inner =
        store::MakeIoEngine(kind, fd, queue_depth, io_threads);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<store::IoEngine>(new FaultyIoEngine(*std::move(inner), fault));
  };
}

}  // namespace sparse_mlp::test_util

#endif  // SPARSE_MLP_TESTS_FAULTY_IO_ENGINE_H_
