#include "gather/row_gather.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "gather/partition.h"
#include "gather/stream_copy.h"
#include "memory/size_math.h"
#include "platform/store_fence.h"
#include "platform/threads.h"

namespace sparse_mlp::gather {
namespace {

// Shared by GatherRows and CopyRows: a row must fit both matrices' strides.
absl::Status CheckRowFitsStrides(ConstRowsView src, RowsView dst, size_t row_bytes) {
  if (row_bytes > src.stride_bytes || row_bytes > dst.stride_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "row of %u bytes does not fit the strides (source %u, destination %u)",
        row_bytes, src.stride_bytes, dst.stride_bytes));
  }
  return absl::OkStatus();
}

absl::Status Validate(ConstRowsView src, RowsView dst, size_t row_bytes,
                      absl::Span<const RowCopy> copies) {
  if (copies.empty() || row_bytes == 0) return absl::OkStatus();
  if (absl::Status s = CheckRowFitsStrides(src, dst, row_bytes); !s.ok()) return s;
  if (absl::StatusOr<size_t> total = memory::CheckedMul(copies.size(), row_bytes);
      !total.ok()) {
    return total.status();
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

// How far the source prefetch of streaming gathers runs ahead of the copy
// (internal::ReadAhead, stream_copy.h): one line per line copied, across row
// boundaries, so a new row's first lines are already on their way when the
// copy reaches them. 4-8 KiB did about equally well; 2 KiB gained half as
// much, 16 KiB lost (lines arrive too early for the 32 KiB L1);
// docs/performance.md has the figures.
constexpr size_t kReadAheadBytes = 6144;

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
// same bytes: 25-31 GB/s). Prefetching every line of the next row at once
// instead floods the miss queues and was 10-20% slower than nothing; the
// paced read-ahead below issues the same prefetches one line at a time.
template <bool kStreaming>
inline void TouchRowPages(const uint8_t* src_row, uint8_t* dst_row,
                          size_t row_bytes) {
  for (size_t b = 0; b < row_bytes; b += kPageBytes) {
    __builtin_prefetch(src_row + b, 0, 3);
    __builtin_prefetch(dst_row + b, kStreaming ? 0 : 1, 3);
  }
}

// The order in which a batch is copied: its jobs in turn, each copy by
// copy, and within a copy the job's parts in order (so the parts of one
// fused source row are read as one run). Jobs that move nothing are left
// out.
struct BatchLayout {
  struct Group {
    absl::Span<const RowPart> parts;
    absl::Span<const RowCopy> copies;
    size_t copy_bytes;  // the parts' row bytes summed
    size_t begin;       // byte offset of the group in the batch
  };
  Group groups[kMaxBatchJobs];
  size_t num_groups = 0;
  size_t total = 0;
};

// A piece of one row: bytes [offset, offset + bytes) of one part's row of
// one copy.
struct Piece {
  const uint8_t* src;
  uint8_t* dst;
  size_t bytes;
  size_t row_bytes;  // of the whole row the piece belongs to
};

// Walks bytes [begin, end) of a batch in BatchLayout order, one row piece at
// a time.
class BatchWalker {
 public:
  BatchWalker(const BatchLayout& layout, size_t begin, size_t end)
      : layout_(layout), remaining_(end - begin) {
    while (group_ < layout_.num_groups) {
      const BatchLayout::Group& g = layout_.groups[group_];
      const size_t group_end = g.begin + g.copies.size() * g.copy_bytes;
      if (begin < group_end) {
        const size_t into = begin - g.begin;
        copy_ = into / g.copy_bytes;
        size_t in_copy = into % g.copy_bytes;
        while (in_copy >= g.parts[part_].row_bytes) in_copy -= g.parts[part_++].row_bytes;
        offset_ = in_copy;
        break;
      }
      ++group_;
    }
  }

  bool Next(Piece* piece) {
    if (remaining_ == 0 || group_ >= layout_.num_groups) return false;
    const BatchLayout::Group& g = layout_.groups[group_];
    const RowPart& part = g.parts[part_];
    const RowCopy& c = g.copies[copy_];
    const size_t left_in_row = part.row_bytes - offset_;
    piece->bytes = left_in_row < remaining_ ? left_in_row : remaining_;
    piece->row_bytes = part.row_bytes;
    piece->src = static_cast<const uint8_t*>(part.src.data) +
                 c.src_row * part.src.stride_bytes + offset_;
    piece->dst =
        static_cast<uint8_t*>(part.dst.data) + c.dst_row * part.dst.stride_bytes + offset_;
    remaining_ -= piece->bytes;
    offset_ = 0;
    // The next part with bytes, or the next copy, or the next group.
    do {
      if (++part_ == g.parts.size()) {
        part_ = 0;
        if (++copy_ == g.copies.size()) {
          copy_ = 0;
          ++group_;
          break;
        }
      }
    } while (g.parts[part_].row_bytes == 0);
    return true;
  }

 private:
  const BatchLayout& layout_;
  size_t remaining_;
  size_t group_ = 0;
  size_t copy_ = 0;
  size_t part_ = 0;
  size_t offset_ = 0;
};

// ReadAhead's view of a BatchWalker: the source of each piece in turn.
bool NextSourcePiece(void* walker, const uint8_t** src, size_t* bytes) {
  Piece piece;
  if (!static_cast<BatchWalker*>(walker)->Next(&piece)) return false;
  *src = piece.src;
  *bytes = piece.bytes;
  return true;
}

// Copies bytes [begin, end) of the batch, touching the pages of the piece
// kPageTouchAhead pieces ahead of each one it copies and, with streaming
// stores, prefetching the source kReadAheadBytes ahead of the copy.
template <bool kStreaming>
void CopyRange(internal::RowCopyFn copy, const BatchLayout& layout, size_t begin,
               size_t end) {
  BatchWalker rows(layout, begin, end);
  BatchWalker ahead(layout, begin, end);
  Piece piece, next;
  for (size_t k = 0; k < kPageTouchAhead; ++k) (void)ahead.Next(&next);
  // The read-ahead only pays where rows stream past the caches; memcpy
  // (the non-streaming copy) ignores it, and at distance 0 it walks nothing.
  BatchWalker read_ahead_rows(layout, begin, end);
  internal::ReadAhead read_ahead(&NextSourcePiece, &read_ahead_rows,
                                 kStreaming ? kReadAheadBytes : 0);
  while (rows.Next(&piece)) {
    if (ahead.Next(&next)) TouchRowPages<kStreaming>(next.src, next.dst, next.bytes);
    copy(piece.dst, piece.src, piece.bytes, &read_ahead);
  }
}

// The row copy for a copy of `total` bytes at `level`: streaming stores
// (*streaming set) for copies larger than the caches at the SIMD levels,
// memcpy otherwise.
internal::RowCopyFn RowCopyFor(size_t total, SimdLevel level, bool* streaming) {
  *streaming = total >= kStreamingGatherMinBytes && Resolve(level) != SimdLevel::kScalar;
  return internal::SelectRowCopy(*streaming ? level : SimdLevel::kScalar);
}

// Runs copy_range(begin, end) over bytes [0, total) of a copy: on the
// calling thread below kParallelMinBytes or with one thread, else one
// cache-line aligned share per OpenMP thread (gather/partition.h).
// The split is over the team OpenMP actually started: under
// OMP_THREAD_LIMIT or OMP_DYNAMIC it may be smaller than num_threads, and a
// split for the requested count would leave the missing threads' shares
// uncopied.
template <typename CopyRangeFn>
void SplitOverThreads(size_t total, int num_threads, const CopyRangeFn& copy_range) {
  if (num_threads <= 1 || total < kParallelMinBytes) {
    copy_range(size_t{0}, total);
    return;
  }
#pragma omp parallel num_threads(num_threads)
  {
    const BytePartition partition(total, omp_get_num_threads());
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    copy_range(partition.Begin(t), partition.Begin(t + 1));
  }
}

}  // namespace

absl::Status GatherRowsBatch(absl::Span<const RowGatherJob> jobs,
                             int num_threads, SimdLevel level) {
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  if (jobs.size() > kMaxBatchJobs) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a batch holds at most %u jobs, got %u", kMaxBatchJobs, jobs.size()));
  }
  BatchLayout layout;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const RowGatherJob& job = jobs[j];
    size_t copy_bytes = 0;
    for (size_t p = 0; p < job.parts.size(); ++p) {
      const RowPart& part = job.parts[p];
      if (absl::Status s = Validate(part.src, part.dst, part.row_bytes, job.copies);
          !s.ok()) {
        return absl::Status(s.code(),
                            absl::StrFormat("gather %u, part %u: %s", j, p, s.message()));
      }
      copy_bytes += part.row_bytes;  // each part's copies x row_bytes fit
    }
    if (job.copies.empty() || copy_bytes == 0) continue;  // moves nothing
    // The walk starts each copy at the first part; leading empty parts are
    // skipped here so that it never stands on one.
    size_t first = 0;
    while (job.parts[first].row_bytes == 0) ++first;
    layout.groups[layout.num_groups++] = {job.parts.subspan(first), job.copies, copy_bytes,
                                          0};
  }
  for (size_t g = 0; g < layout.num_groups; ++g) {
    BatchLayout::Group& group = layout.groups[g];
    group.begin = layout.total;
    // Each part's copies x row_bytes was validated; their sum may still wrap.
    const absl::StatusOr<size_t> bytes =
        memory::CheckedMul(group.copies.size(), group.copy_bytes);
    if (!bytes.ok()) return bytes.status();
    const absl::StatusOr<size_t> total = memory::CheckedAdd(layout.total, *bytes);
    if (!total.ok()) return total.status();
    layout.total = *total;
  }
  const size_t total = layout.total;
  if (total == 0) return absl::OkStatus();

  bool streaming;
  const internal::RowCopyFn copy = RowCopyFor(total, level, &streaming);
  auto copy_range = [&](size_t begin, size_t end) {
    if (streaming) {
      CopyRange<true>(copy, layout, begin, end);
      FinishStreamingStores();
    } else {
      CopyRange<false>(copy, layout, begin, end);
    }
  };
  SplitOverThreads(total, num_threads, copy_range);
  return absl::OkStatus();
}

absl::Status GatherRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                        absl::Span<const RowCopy> copies, int num_threads,
                        SimdLevel level) {
  const RowPart part{src, dst, row_bytes};
  const RowGatherJob job{absl::MakeConstSpan(&part, 1), copies};
  return GatherRowsBatch(absl::MakeConstSpan(&job, 1), num_threads, level);
}

absl::Status CopyRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                      size_t num_rows, int num_threads, SimdLevel level) {
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  if (num_rows == 0 || row_bytes == 0) return absl::OkStatus();
  if (absl::Status s = CheckRowFitsStrides(src, dst, row_bytes); !s.ok()) return s;
  if (num_rows > src.num_rows || num_rows > dst.num_rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "copy of %u rows between matrices of %u (source) and %u (destination) rows",
        num_rows, src.num_rows, dst.num_rows));
  }
  if (src.data == nullptr || dst.data == nullptr) {
    return absl::InvalidArgumentError("row copy on a null matrix");
  }
  const absl::StatusOr<size_t> checked_total = memory::CheckedMul(num_rows, row_bytes);
  if (!checked_total.ok()) return checked_total.status();
  const size_t total = *checked_total;
  const auto* in = static_cast<const uint8_t*>(src.data);
  auto* out = static_cast<uint8_t*>(dst.data);
  bool streaming;
  const internal::RowCopyFn copy = RowCopyFor(total, level, &streaming);
  // Bytes [begin, end) of the rows laid end to end. Rows in order need no
  // software read-ahead (the hardware prefetchers follow them): none given.
  auto copy_range = [&](size_t begin, size_t end) {
    size_t row = begin / row_bytes;
    size_t offset = begin % row_bytes;
    while (begin < end) {
      const size_t n = std::min(row_bytes - offset, end - begin);
      copy(out + row * dst.stride_bytes + offset, in + row * src.stride_bytes + offset, n,
           /*ahead=*/nullptr);
      begin += n;
      ++row;
      offset = 0;
    }
    if (streaming) FinishStreamingStores();
  };
  SplitOverThreads(total, num_threads, copy_range);
  return absl::OkStatus();
}

}  // namespace sparse_mlp::gather
