#include "gather/row_gather.h"

#include <omp.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "gather/partition.h"
#include "gather/stream_copy.h"

namespace sparse_mlp::gather {
namespace {

absl::Status Validate(ConstRowsView src, RowsView dst, size_t row_bytes,
                      absl::Span<const RowCopy> copies) {
  if (copies.empty() || row_bytes == 0) return absl::OkStatus();
  if (row_bytes > src.stride_bytes || row_bytes > dst.stride_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "row of %u bytes does not fit the strides (source %u, destination %u)",
        row_bytes, src.stride_bytes, dst.stride_bytes));
  }
  size_t total;
  if (__builtin_mul_overflow(copies.size(), row_bytes, &total)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%u copies of %u-byte rows overflow size_t", copies.size(), row_bytes));
  }
  if (src.data == nullptr || dst.data == nullptr) {
    return absl::InvalidArgumentError("row gather on a null matrix");
  }
  for (size_t k = 0; k < copies.size(); ++k) {
    if (copies[k].src_row >= src.num_rows) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "copy %u reads source row %u of a %u-row matrix", k, copies[k].src_row,
          src.num_rows));
    }
    if (copies[k].dst_row >= dst.num_rows) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "copy %u writes destination row %u of a %u-row matrix", k,
          copies[k].dst_row, dst.num_rows));
    }
  }
  return absl::OkStatus();
}

// Rows ahead of the one being copied whose pages are touched (see below).
constexpr size_t kPageTouchAhead = 2;
constexpr size_t kPageBytes = 4096;

// One prefetch per 4 KiB page of a row: a read prefetch of the source, and
// of the destination a write prefetch, or with streaming stores a read one
// (only its translation is wanted; a write prefetch would fetch the line for
// ownership, the very read streaming stores avoid). A randomly placed row
// otherwise begins every page with a TLB miss (a two-level walk in a VM) and
// a closed DRAM page, which the hardware prefetchers cannot hide because
// they stop at page boundaries.
// Touching each page of the row two ahead overlaps that latency with the
// current copy. Measured on 1230 scattered 12 KiB rows, 2 threads: plain
// memcpy 19 GB/s, with page touches 24-26 GB/s (a contiguous memcpy of the
// same bytes: 25-31 GB/s). Prefetching every line of the next row instead
// floods the miss queues and was 10-20% slower than nothing.
template <bool kStreaming>
inline void TouchRowPages(const uint8_t* src_row, uint8_t* dst_row,
                          size_t row_bytes) {
  for (size_t b = 0; b < row_bytes; b += kPageBytes) {
    __builtin_prefetch(src_row + b, 0, 3);
    __builtin_prefetch(dst_row + b, kStreaming ? 0 : 1, 3);
  }
}

// Copies bytes [begin, end) of the concatenation of all copied rows.
template <bool kStreaming>
void CopyByteRange(internal::RowCopyFn copy, const uint8_t* src,
                   size_t src_stride, uint8_t* dst, size_t dst_stride,
                   size_t row_bytes, absl::Span<const RowCopy> copies,
                   size_t begin, size_t end) {
  size_t k = begin / row_bytes;
  size_t offset = begin % row_bytes;
  size_t remaining = end - begin;
  while (remaining > 0) {
    const size_t n = row_bytes - offset < remaining ? row_bytes - offset : remaining;
    if (k + kPageTouchAhead < copies.size()) {
      const RowCopy& ahead = copies[k + kPageTouchAhead];
      TouchRowPages<kStreaming>(src + ahead.src_row * src_stride,
                                dst + ahead.dst_row * dst_stride, row_bytes);
    }
    copy(dst + copies[k].dst_row * dst_stride + offset,
         src + copies[k].src_row * src_stride + offset, n);
    remaining -= n;
    offset = 0;
    ++k;
  }
}

}  // namespace

absl::Status GatherRowsBatch(absl::Span<const RowGatherJob> jobs,
                             int num_threads, SimdLevel level) {
  // Byte offset of each job in the concatenation of all jobs' rows.
  constexpr size_t kMaxJobs = 16;
  if (jobs.size() > kMaxJobs) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a batch holds at most %u gathers, got %u", kMaxJobs, jobs.size()));
  }
  size_t job_begin[kMaxJobs + 1] = {0};
  for (size_t j = 0; j < jobs.size(); ++j) {
    const RowGatherJob& job = jobs[j];
    if (absl::Status s = Validate(job.src, job.dst, job.row_bytes, job.copies);
        !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrFormat("gather %u: %s", j, s.message()));
    }
    const size_t bytes = job.copies.size() * job.row_bytes;  // validated
    if (__builtin_add_overflow(job_begin[j], bytes, &job_begin[j + 1])) {
      return absl::InvalidArgumentError("gather batch size overflows size_t");
    }
  }
  const size_t total = job_begin[jobs.size()];
  if (total == 0) return absl::OkStatus();

  // Streaming stores only pay for gathers larger than the caches; below,
  // the rows would just have to be fetched back for the caller.
  const bool streaming =
      total >= kStreamingGatherMinBytes && Resolve(level) != SimdLevel::kScalar;
  const internal::RowCopyFn copy =
      internal::SelectRowCopy(streaming ? level : SimdLevel::kScalar);
  // Copies bytes [begin, end) of the concatenation.
  auto copy_range = [&](size_t begin, size_t end) {
    for (size_t j = 0; j < jobs.size() && begin < end; ++j) {
      if (job_begin[j + 1] <= begin) continue;
      const RowGatherJob& job = jobs[j];
      const size_t job_end = end < job_begin[j + 1] ? end : job_begin[j + 1];
      auto* dst = static_cast<uint8_t*>(job.dst.data);
      const auto* src = static_cast<const uint8_t*>(job.src.data);
      if (streaming) {
        CopyByteRange<true>(copy, src, job.src.stride_bytes, dst, job.dst.stride_bytes,
                            job.row_bytes, job.copies, begin - job_begin[j],
                            job_end - job_begin[j]);
      } else {
        CopyByteRange<false>(copy, src, job.src.stride_bytes, dst, job.dst.stride_bytes,
                             job.row_bytes, job.copies, begin - job_begin[j],
                             job_end - job_begin[j]);
      }
      begin = job_end;
    }
    if (streaming) internal::FinishStreamCopies();
  };
  if (num_threads <= 1 || total < kParallelGatherMinBytes) {
    copy_range(0, total);
    return absl::OkStatus();
  }
  const BytePartition partition(total, num_threads);
#pragma omp parallel num_threads(num_threads)
  {
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    copy_range(partition.Begin(t), partition.Begin(t + 1));
  }
  return absl::OkStatus();
}

absl::Status GatherRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                        absl::Span<const RowCopy> copies, int num_threads,
                        SimdLevel level) {
  const RowGatherJob job{src, dst, row_bytes, copies};
  return GatherRowsBatch(absl::MakeConstSpan(&job, 1), num_threads, level);
}

}  // namespace sparse_mlp::gather
