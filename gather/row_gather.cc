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
constexpr size_t kMaxJobs = 16;

// How far the source prefetch of streaming gathers runs ahead of the copy
// (internal::ReadAhead, stream_copy.h): one line per line copied, across row
// boundaries, so a new row's first lines are already on their way when the
// copy reaches them. Measured with 2 threads, each distance against none in
// the same process, alternating (x memcpy floor, lower is better): 2048
// scattered rows of 8 KiB 1.40 -> 1.07, 16 KiB 1.20 -> 0.93, 4 KiB
// 1.61 -> 1.42; cache updates (llama-3.2-3b, split layout, medians of three
// runs) at churn 0.10 float32 1.05 -> 0.89, bfloat16 1.26 -> 1.17. 4 and
// 8 KiB did about as well as 6 KiB; 16 KiB was 15-30% slower than none for bfloat16 updates (the lines
// arrive too early for the 32 KiB L1); 2 KiB gained half as much. Not a
// gain in every phase of this shared machine: in its slow minutes (floor
// ~22 GB/s) bfloat16 updates still gained 1-12% but float32 ones ran 0-20%
// slower with it, and one run of 4 KiB rows 7% slower.
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

// The order in which a batch is copied. Consecutive jobs that share one
// copy list (the same span) form a group, walked copy by copy: row k of
// each job of the group, then row k + 1. When those jobs read the parts of
// one fused source row ([gate | up | down] per neuron), each copy is one
// long contiguous read instead of several short ones far apart. Other jobs
// are groups of one, walked row by row.
struct BatchLayout {
  struct Group {
    size_t first_job, end_job;  // jobs [first_job, end_job)
    size_t num_copies;
    size_t copy_bytes;  // the group's row bytes summed over its jobs
    size_t begin;       // byte offset of the group in the batch
  };
  Group groups[kMaxJobs];
  size_t num_groups = 0;
  size_t total = 0;
};

bool SameCopies(const RowGatherJob& a, const RowGatherJob& b) {
  return a.copies.data() == b.copies.data() && a.copies.size() == b.copies.size();
}

// True when `next` copies the bytes right after `prev`'s in every row of
// both matrices (same copies, same strides, adjacent column ranges), as the
// gate, up and down parts of a fused [gate | up | down] source into fused
// packed rows do: the two are then copied as one job with longer rows.
bool ContinuesRows(const RowGatherJob& prev, const RowGatherJob& next) {
  return SameCopies(prev, next) && prev.src.stride_bytes == next.src.stride_bytes &&
         prev.dst.stride_bytes == next.dst.stride_bytes &&
         static_cast<const uint8_t*>(prev.src.data) + prev.row_bytes == next.src.data &&
         static_cast<uint8_t*>(prev.dst.data) + prev.row_bytes == next.dst.data;
}

// A piece of one row: bytes [offset, offset + bytes) of copy `copy` of job
// `job`.
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
  BatchWalker(absl::Span<const RowGatherJob> jobs, const BatchLayout& layout,
              size_t begin, size_t end)
      : jobs_(jobs), layout_(layout), remaining_(end - begin) {
    while (group_ < layout_.num_groups) {
      const BatchLayout::Group& g = layout_.groups[group_];
      const size_t group_end = g.begin + g.num_copies * g.copy_bytes;
      if (begin < group_end) {
        const size_t into = begin - g.begin;
        copy_ = into / g.copy_bytes;
        size_t in_copy = into % g.copy_bytes;
        job_ = g.first_job;
        while (in_copy >= jobs_[job_].row_bytes) in_copy -= jobs_[job_++].row_bytes;
        offset_ = in_copy;
        break;
      }
      ++group_;
    }
  }

  bool Next(Piece* piece) {
    if (remaining_ == 0 || group_ >= layout_.num_groups) return false;
    const RowGatherJob& job = jobs_[job_];
    const RowCopy& c = job.copies[copy_];
    const size_t left_in_row = job.row_bytes - offset_;
    piece->bytes = left_in_row < remaining_ ? left_in_row : remaining_;
    piece->row_bytes = job.row_bytes;
    piece->src = static_cast<const uint8_t*>(job.src.data) +
                 c.src_row * job.src.stride_bytes + offset_;
    piece->dst =
        static_cast<uint8_t*>(job.dst.data) + c.dst_row * job.dst.stride_bytes + offset_;
    remaining_ -= piece->bytes;
    offset_ = 0;
    // Next job of the group, or the next copy, or the next group.
    const BatchLayout::Group& g = layout_.groups[group_];
    if (++job_ == g.end_job) {
      job_ = g.first_job;
      if (++copy_ == g.num_copies) {
        copy_ = 0;
        if (++group_ < layout_.num_groups) job_ = layout_.groups[group_].first_job;
      }
    }
    return true;
  }

 private:
  absl::Span<const RowGatherJob> jobs_;
  const BatchLayout& layout_;
  size_t remaining_;
  size_t group_ = 0;
  size_t copy_ = 0;
  size_t job_ = 0;
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
void CopyRange(internal::RowCopyFn copy, absl::Span<const RowGatherJob> jobs,
               const BatchLayout& layout, size_t begin, size_t end) {
  BatchWalker rows(jobs, layout, begin, end);
  BatchWalker ahead(jobs, layout, begin, end);
  Piece piece, next;
  for (size_t k = 0; k < kPageTouchAhead; ++k) (void)ahead.Next(&next);
  // The read-ahead only pays where rows stream past the caches; memcpy
  // (the non-streaming copy) ignores it, and at distance 0 it walks nothing.
  BatchWalker read_ahead_rows(jobs, layout, begin, end);
  internal::ReadAhead read_ahead(&NextSourcePiece, &read_ahead_rows,
                                 kStreaming ? kReadAheadBytes : 0);
  while (rows.Next(&piece)) {
    if (ahead.Next(&next)) TouchRowPages<kStreaming>(next.src, next.dst, next.bytes);
    copy(piece.dst, piece.src, piece.bytes, &read_ahead);
  }
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
  if (jobs.size() > kMaxJobs) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a batch holds at most %u gathers, got %u", kMaxJobs, jobs.size()));
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    const RowGatherJob& job = jobs[j];
    if (absl::Status s = Validate(job.src, job.dst, job.row_bytes, job.copies);
        !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrFormat("gather %u: %s", j, s.message()));
    }
  }
  // The jobs as walked: those that move nothing dropped, and each job that
  // continues the previous one's rows merged into it. Fewer, longer pieces
  // cost less per byte: 410 scattered 18 KiB rows copied as three 6 KiB
  // jobs ran 6-8% slower than as one job (2 threads, same process).
  RowGatherJob walked[kMaxJobs];
  size_t num_walked = 0;
  BatchLayout layout;
  for (const RowGatherJob& job : jobs) {
    if (job.copies.empty() || job.row_bytes == 0) continue;  // moves nothing
    BatchLayout::Group* last =
        layout.num_groups > 0 ? &layout.groups[layout.num_groups - 1] : nullptr;
    if (last != nullptr && ContinuesRows(walked[num_walked - 1], job)) {
      walked[num_walked - 1].row_bytes += job.row_bytes;
      last->copy_bytes += job.row_bytes;
      continue;
    }
    walked[num_walked++] = job;
    const size_t j = num_walked - 1;
    if (last != nullptr && SameCopies(walked[last->first_job], job)) {
      ++last->end_job;
      last->copy_bytes += job.row_bytes;
    } else {
      layout.groups[layout.num_groups++] = {j, j + 1, job.copies.size(), job.row_bytes, 0};
    }
  }
  const absl::Span<const RowGatherJob> walked_jobs(walked, num_walked);
  for (size_t g = 0; g < layout.num_groups; ++g) {
    BatchLayout::Group& group = layout.groups[g];
    group.begin = layout.total;
    // Each job's copies x row_bytes was validated; their sum may still wrap.
    const absl::StatusOr<size_t> bytes =
        memory::CheckedMul(group.num_copies, group.copy_bytes);
    if (!bytes.ok()) return bytes.status();
    const absl::StatusOr<size_t> total = memory::CheckedAdd(layout.total, *bytes);
    if (!total.ok()) return total.status();
    layout.total = *total;
  }
  const size_t total = layout.total;
  if (total == 0) return absl::OkStatus();

  // Streaming stores only pay for gathers larger than the caches; below,
  // the rows would just have to be fetched back for the caller.
  const bool streaming =
      total >= kStreamingGatherMinBytes && Resolve(level) != SimdLevel::kScalar;
  const internal::RowCopyFn copy =
      internal::SelectRowCopy(streaming ? level : SimdLevel::kScalar);
  auto copy_range = [&](size_t begin, size_t end) {
    if (streaming) {
      CopyRange<true>(copy, walked_jobs, layout, begin, end);
      FinishStreamingStores();
    } else {
      CopyRange<false>(copy, walked_jobs, layout, begin, end);
    }
  };
  SplitOverThreads(total, num_threads, copy_range);
  return absl::OkStatus();
}

absl::Status GatherRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                        absl::Span<const RowCopy> copies, int num_threads,
                        SimdLevel level) {
  const RowGatherJob job{src, dst, row_bytes, copies};
  return GatherRowsBatch(absl::MakeConstSpan(&job, 1), num_threads, level);
}

absl::Status CopyRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                      size_t num_rows, int num_threads) {
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
  // Bytes [begin, end) of the rows laid end to end.
  auto copy_range = [&](size_t begin, size_t end) {
    size_t row = begin / row_bytes;
    size_t offset = begin % row_bytes;
    while (begin < end) {
      const size_t n = std::min(row_bytes - offset, end - begin);
      std::memcpy(out + row * dst.stride_bytes + offset,
                  in + row * src.stride_bytes + offset, n);
      begin += n;
      ++row;
      offset = 0;
    }
  };
  SplitOverThreads(total, num_threads, copy_range);
  return absl::OkStatus();
}

}  // namespace sparse_mlp::gather
