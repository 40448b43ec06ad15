// Row copies with non-temporal (streaming) stores and a software read-ahead
// (internal to //gather).
//
// Rows gathered into a packed cache are scattered over buffers far larger
// than the caches and are not read back by the copying thread. An ordinary
// store first reads every destination line (read-for-ownership), which for
// scattered rows runs at the speed of scattered reads; streaming stores skip
// that read (docs/performance.md has the figures).
//
// The sources are scattered too, and the hardware prefetchers restart at
// every row: each row would begin with demand misses, one memory latency
// lost per row. A ReadAhead issues one prefetch per source line a fixed
// distance ahead of the copy, across row boundaries, so the memory system
// sees one continuous read stream as in a contiguous memcpy (see
// kReadAheadBytes in row_gather.cc for the measurements).
//
// StreamCopy* write the 64-byte aligned body of [dst, dst + bytes) with
// streaming stores and the unaligned head and tail with memcpy; the result
// is identical to memcpy. The writing thread must call
// FinishStreamingStores (platform/store_fence.h) before another thread
// reads the destination.
#ifndef SPARSE_MLP_GATHER_STREAM_COPY_H_
#define SPARSE_MLP_GATHER_STREAM_COPY_H_

#include <cstddef>
#include <cstdint>

#include "platform/simd_level.h"

namespace sparse_mlp::gather::internal {

// Prefetches a sequence of source pieces (the rows a thread will copy, in
// order) a fixed number of bytes ahead of the copy. The copy reports its
// progress with Advance(n) after n more source bytes; the cursor then
// prefetches the n bytes `distance` further on, moving to the next piece
// through `next_piece` when one runs out. Prefetches never fault, so the
// cursor only reads addresses, never data. One thread; not copyable.
class ReadAhead {
 public:
  // Stores the next piece's source and byte count; false after the last.
  using NextPieceFn = bool (*)(void* context, const uint8_t** src, size_t* bytes);

  // Prefetches the first `distance` bytes of the sequence.
  ReadAhead(NextPieceFn next_piece, void* context, size_t distance)
      : next_piece_(next_piece), context_(context) {
    Advance(distance);
  }
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  // O(bytes / 64) prefetches, plus one next_piece call per piece entered.
  inline void Advance(size_t bytes) {
    owed_ += bytes;
    while (owed_ >= kLine) {
      if (left_ == 0 && !EnterNextPiece()) return;
      __builtin_prefetch(at_, /*rw=*/0, /*locality=*/3);
      const size_t step = left_ < kLine ? left_ : kLine;
      at_ += step;
      left_ -= step;
      owed_ -= step;
    }
  }

 private:
  static constexpr size_t kLine = 64;

  bool EnterNextPiece() {
    while (!done_ && left_ == 0) done_ = !next_piece_(context_, &at_, &left_);
    if (done_) owed_ = 0;
    return !done_;
  }

  NextPieceFn next_piece_;
  void* context_;
  const uint8_t* at_ = nullptr;  // next source byte to prefetch
  size_t left_ = 0;              // bytes of the current piece from at_
  size_t owed_ = 0;              // bytes the cursor must still move ahead
  bool done_ = false;
};

// Copies `bytes` from src to dst, telling `ahead` (may be null) how far it
// got so the read-ahead keeps its distance.
using RowCopyFn = void (*)(uint8_t* dst, const uint8_t* src, size_t bytes,
                           ReadAhead* ahead);

// memcpy at kScalar (which ignores `ahead`); streaming copies at kAvx2 /
// kAvx512 (resolved).
RowCopyFn SelectRowCopy(SimdLevel level);

void StreamCopyAvx2(uint8_t* dst, const uint8_t* src, size_t bytes, ReadAhead* ahead);
void StreamCopyAvx512(uint8_t* dst, const uint8_t* src, size_t bytes, ReadAhead* ahead);

}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_GATHER_STREAM_COPY_H_
