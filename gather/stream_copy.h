// Row copies with non-temporal (streaming) stores (internal to //gather).
//
// Rows gathered into a packed cache are scattered over buffers far larger
// than the caches and are not read back by the copying thread. An ordinary
// store first reads every destination line (read-for-ownership), which for
// scattered rows runs at the speed of scattered reads; streaming stores skip
// that read. Measured on 1230 scattered 12 KiB rows, 2 threads, with the
// page touches of row_gather.cc: memcpy 26 GB/s, streaming 28-29 GB/s
// (4 KiB rows: 21 -> 23 GB/s).
//
// StreamCopy* write the 64-byte aligned body of [dst, dst + bytes) with
// streaming stores and the unaligned head and tail with memcpy; the result
// is identical to memcpy. The writing thread must call FinishStreamCopies
// (an sfence) before another thread reads the destination.
#ifndef SPARSE_MLP_GATHER_STREAM_COPY_H_
#define SPARSE_MLP_GATHER_STREAM_COPY_H_

#include <cstddef>
#include <cstdint>

#include "platform/simd_level.h"

namespace sparse_mlp::gather::internal {

using RowCopyFn = void (*)(uint8_t* dst, const uint8_t* src, size_t bytes);

// memcpy at kScalar; streaming copies at kAvx2 / kAvx512 (resolved).
RowCopyFn SelectRowCopy(SimdLevel level);

void StreamCopyAvx2(uint8_t* dst, const uint8_t* src, size_t bytes);
void StreamCopyAvx512(uint8_t* dst, const uint8_t* src, size_t bytes);
void FinishStreamCopies();

}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_GATHER_STREAM_COPY_H_
