// gather/: every kernel, SIMD level and thread count against plain loops, on
// random shapes with odd sizes (fixed seeds; failures print the case), and
// one test per bad-input class.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "gather/parallel_copy.h"
#include "gather/partition.h"
#include "gather/row_gather.h"
#include "gather/stream_copy.h"
#include "gather/transpose.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/aligned_buffer.h"
#include "platform/simd_level.h"
#include "platform/threads.h"

namespace sparse_mlp::gather {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> bytes(n);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

TEST(BytePartitionTest, CoversTheRangeInAlignedNearEqualParts) {
  std::mt19937_64 rng(10);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t total = trial < 100 ? trial : rng() % (1 << 24);
    const int parts = 1 + static_cast<int>(rng() % 9);
    const BytePartition p(total, parts);
    ASSERT_EQ(p.Begin(0), 0u);
    ASSERT_EQ(p.Begin(parts), total);
    for (int t = 0; t < parts; ++t) {
      ASSERT_LE(p.Begin(t), p.Begin(t + 1)) << total << " / " << parts;
      if (p.Begin(t + 1) != total) {
        ASSERT_EQ(p.Begin(t + 1) % 64, 0u);
      }
      ASSERT_LE(p.Begin(t + 1) - p.Begin(t), total / parts + 128)
          << "unbalanced: " << total << " bytes over " << parts;
    }
  }
}

TEST(ParallelCopyTest, MatchesMemcpyForAnySizeAndThreadCount) {
  std::mt19937_64 rng(11);
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{63}, size_t{65}, size_t{4097},
                       kParallelMinBytes - 1, kParallelMinBytes,
                       kParallelMinBytes * 3 + 17}) {
    const std::vector<uint8_t> src = RandomBytes(rng, bytes);
    for (int threads : {1, 2, 3, 8}) {
      std::vector<uint8_t> dst(bytes + 1, 0xCC);
      ASSERT_TRUE(ParallelCopy(dst.data(), src.data(), bytes, threads).ok());
      ASSERT_EQ(dst[bytes], 0xCC) << "wrote past the end";
      ASSERT_TRUE(std::equal(src.begin(), src.end(), dst.begin()))
          << bytes << " bytes, " << threads << " threads";
    }
  }
}

TEST(GatherRowsTest, MatchesReferenceForRandomCopies) {
  std::mt19937_64 rng(12);
  for (int trial = 0; trial < 600; ++trial) {
    // Every 20th case is large enough for the parallel path.
    const bool large = trial % 20 == 0;
    const size_t row_bytes = large ? 4096 + rng() % 9000 : rng() % 300;
    const size_t src_stride = row_bytes + rng() % 3 * 64 + rng() % 2;
    const size_t dst_stride = row_bytes + rng() % 2 * 64;
    const size_t src_rows = large ? 400 : rng() % 40;
    const size_t dst_rows = large ? 300 : rng() % 40;
    const std::vector<uint8_t> src = RandomBytes(rng, src_rows * src_stride);
    std::vector<uint8_t> dst = RandomBytes(rng, dst_rows * dst_stride);
    // Distinct destinations, random sources (repeats allowed).
    std::vector<uint32_t> dsts(dst_rows);
    for (size_t i = 0; i < dst_rows; ++i) dsts[i] = static_cast<uint32_t>(i);
    std::shuffle(dsts.begin(), dsts.end(), rng);
    std::vector<RowCopy> copies;
    if (src_rows > 0) {
      dsts.resize(rng() % (dst_rows + 1));
      for (uint32_t d : dsts) {
        copies.push_back({static_cast<uint32_t>(rng() % src_rows), d});
      }
    }
    std::vector<uint8_t> expected = dst;
    for (const RowCopy& c : copies) {
      if (row_bytes == 0) break;  // empty rows: nothing to copy (null data)
      std::memcpy(expected.data() + c.dst_row * dst_stride,
                  src.data() + c.src_row * src_stride, row_bytes);
    }
    for (SimdLevel level : SupportedSimdLevels()) {
      for (int threads : {1, 2, 3}) {
        std::vector<uint8_t> out = dst;
        const absl::Status s = GatherRows({src.data(), src_rows, src_stride},
                                          {out.data(), dst_rows, dst_stride}, row_bytes,
                                          copies, threads, level);
        ASSERT_TRUE(s.ok()) << s;
        ASSERT_EQ(out, expected) << absl::StrFormat(
            "trial %d: %d copies of %d-byte rows, strides %d/%d, %d threads, level %s",
            trial, copies.size(), row_bytes, src_stride, dst_stride, threads,
            SimdLevelName(level));
      }
    }
  }
}

TEST(CopyRowsTest, MatchesReferenceForRandomStridesAndThreadCounts) {
  std::mt19937_64 rng(17);
  for (int trial = 0; trial < 400; ++trial) {
    // Every 10th case is large enough for the parallel path.
    const bool large = trial % 10 == 0;
    const size_t row_bytes = large ? 3000 + rng() % 9000 : rng() % 300;
    const size_t src_stride = row_bytes + rng() % 3 * 64 + rng() % 5;
    const size_t dst_stride = row_bytes + rng() % 2 * 64 + rng() % 3;
    const size_t src_rows = large ? 400 + rng() % 50 : rng() % 40;
    const size_t dst_rows = large ? 400 + rng() % 50 : rng() % 40;
    // All rows both matrices hold, or up to two fewer.
    const size_t fit = std::min(src_rows, dst_rows);
    const size_t num_rows = fit - std::min<size_t>(fit, rng() % 3);
    const std::vector<uint8_t> src = RandomBytes(rng, src_rows * src_stride);
    const std::vector<uint8_t> dst = RandomBytes(rng, dst_rows * dst_stride);
    std::vector<uint8_t> expected = dst;
    for (size_t r = 0; r < num_rows && row_bytes > 0; ++r) {
      std::memcpy(expected.data() + r * dst_stride, src.data() + r * src_stride, row_bytes);
    }
    for (int threads : {1, 2, 3}) {
      std::vector<uint8_t> out = dst;
      const absl::Status s = CopyRows({src.data(), src_rows, src_stride},
                                      {out.data(), dst_rows, dst_stride}, row_bytes,
                                      num_rows, threads);
      ASSERT_TRUE(s.ok()) << s;
      ASSERT_EQ(out, expected) << absl::StrFormat(
          "trial %d: %d rows of %d bytes, strides %d/%d, %d threads", trial, num_rows,
          row_bytes, src_stride, dst_stride, threads);
    }
  }
}

// A batch equals its jobs run one after another, whatever the split of
// bytes over threads.
TEST(GatherRowsBatchTest, MatchesSequentialJobs) {
  std::mt19937_64 rng(15);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t num_jobs = rng() % 6;
    const bool large = trial % 10 == 0;
    std::vector<std::vector<uint8_t>> srcs, dsts, expected;
    std::vector<std::vector<RowCopy>> copy_lists;
    std::vector<size_t> row_bytes;
    for (size_t j = 0; j < num_jobs; ++j) {
      const size_t rb = large ? 3000 + rng() % 5000 : 1 + rng() % 200;
      const size_t rows = large ? 200 : 1 + rng() % 30;
      srcs.push_back(RandomBytes(rng, rows * rb));
      dsts.push_back(RandomBytes(rng, rows * rb));
      std::vector<uint32_t> order(rows);
      for (size_t i = 0; i < rows; ++i) order[i] = static_cast<uint32_t>(i);
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<RowCopy> copies;
      for (size_t i = 0; i < rng() % (rows + 1); ++i) {
        copies.push_back({static_cast<uint32_t>(rng() % rows), order[i]});
      }
      std::vector<uint8_t> e = dsts.back();
      for (const RowCopy& c : copies) {
        std::memcpy(e.data() + c.dst_row * rb, srcs.back().data() + c.src_row * rb, rb);
      }
      expected.push_back(std::move(e));
      copy_lists.push_back(std::move(copies));
      row_bytes.push_back(rb);
    }
    for (int threads : {1, 2, 3}) {
      const SimdLevel level = SupportedSimdLevels()[trial % SupportedSimdLevels().size()];
      std::vector<std::vector<uint8_t>> out = dsts;
      std::vector<RowPart> parts;
      for (size_t j = 0; j < num_jobs; ++j) {
        const size_t rows = srcs[j].size() / row_bytes[j];
        parts.push_back({{srcs[j].data(), rows, row_bytes[j]},
                         {out[j].data(), rows, row_bytes[j]},
                         row_bytes[j]});
      }
      std::vector<RowGatherJob> jobs;
      for (size_t j = 0; j < num_jobs; ++j) jobs.push_back({{&parts[j], 1}, copy_lists[j]});
      ASSERT_TRUE(GatherRowsBatch(jobs, threads, level).ok());
      ASSERT_EQ(out, expected) << "trial " << trial << ", " << threads << " threads, level "
                               << SimdLevelName(level);
    }
  }
}

// The parts of one job are walked copy by copy (row k of each part, then
// row k + 1); the result must still equal the parts copied one after
// another. Here the parts read the pieces of one fused source row
// ([part 0 | part 1 | ...] per row, as the cache's owned sources), beside
// a job with a list of its own, over every split of bytes over threads;
// into a fused destination the adjacent parts are also passed as one part
// of the summed length, as the cache passes them.
TEST(GatherRowsBatchTest, PartsOfOneJobMatchSequentialCopies) {
  std::mt19937_64 rng(16);
  for (int trial = 0; trial < 300; ++trial) {
    const bool large = trial % 10 == 0;  // >= 1 MiB: parallel, streaming
    const size_t rows = large ? 300 : 1 + rng() % 40;
    const size_t parts = 1 + rng() % 3;
    std::vector<size_t> part_bytes(parts);
    size_t fused_bytes = 0;
    for (size_t& b : part_bytes) {
      b = large ? 1000 + rng() % 3000 : 1 + rng() % 100;
      fused_bytes += b;
    }
    const std::vector<uint8_t> fused = RandomBytes(rng, rows * fused_bytes);
    const std::vector<uint8_t> other_src = RandomBytes(rng, rows * part_bytes[0]);
    std::vector<uint32_t> order(rows);
    for (size_t i = 0; i < rows; ++i) order[i] = static_cast<uint32_t>(i);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<RowCopy> shared, own;
    for (size_t i = 0; i < rng() % (rows + 1); ++i) {
      shared.push_back({static_cast<uint32_t>(rng() % rows), order[i]});
    }
    for (size_t i = 0; i < rng() % (rows + 1); ++i) {
      own.push_back({static_cast<uint32_t>(rng() % rows), order[rows - 1 - i]});
    }
    // Destinations: one per part, or one fused [rows, fused_bytes] array
    // (in dsts[0]) whose rows take the parts side by side as the source's
    // do (the jobs then continue each other's rows and are merged); then
    // one for the job with its own list, placed first or last in the batch.
    const bool fused_dst = trial % 3 == 1;
    auto dst_stride = [&](size_t p) { return fused_dst ? fused_bytes : part_bytes[p]; };
    std::vector<std::vector<uint8_t>> dsts;
    for (size_t p = 0; p <= parts; ++p) {
      const size_t bytes = p == parts        ? part_bytes[0]
                           : !fused_dst      ? part_bytes[p]
                           : p == 0          ? fused_bytes
                                             : 0;
      dsts.push_back(RandomBytes(rng, rows * bytes));
    }
    auto dst_of = [&](std::vector<std::vector<uint8_t>>& d, size_t p, size_t offset) {
      return fused_dst ? d[0].data() + offset : d[p].data();
    };
    std::vector<std::vector<uint8_t>> expected = dsts;
    size_t part_offset = 0;
    for (size_t p = 0; p < parts; ++p) {
      for (const RowCopy& c : shared) {
        std::memcpy(dst_of(expected, p, part_offset) + c.dst_row * dst_stride(p),
                    fused.data() + c.src_row * fused_bytes + part_offset, part_bytes[p]);
      }
      part_offset += part_bytes[p];
    }
    for (const RowCopy& c : own) {
      std::memcpy(expected[parts].data() + c.dst_row * part_bytes[0],
                  other_src.data() + c.src_row * part_bytes[0], part_bytes[0]);
    }
    const bool own_first = rng() % 2 == 0;
    for (int threads : {1, 2, 3}) {
      const SimdLevel level = SupportedSimdLevels()[trial % SupportedSimdLevels().size()];
      std::vector<std::vector<uint8_t>> out = dsts;
      const RowPart own_part{{other_src.data(), rows, part_bytes[0]},
                             {out[parts].data(), rows, part_bytes[0]},
                             part_bytes[0]};
      std::vector<RowPart> shared_parts;
      if (fused_dst && threads == 2) {
        // Adjacent in both matrices: one part of the summed length.
        shared_parts.push_back({{fused.data(), rows, fused_bytes},
                                {out[0].data(), rows, fused_bytes},
                                fused_bytes});
      } else {
        part_offset = 0;
        for (size_t p = 0; p < parts; ++p) {
          shared_parts.push_back({{fused.data() + part_offset, rows, fused_bytes},
                                  {dst_of(out, p, part_offset), rows, dst_stride(p)},
                                  part_bytes[p]});
          part_offset += part_bytes[p];
        }
      }
      std::vector<RowGatherJob> jobs;
      const RowGatherJob own_job{{&own_part, 1}, own};
      if (own_first) jobs.push_back(own_job);
      jobs.push_back({shared_parts, shared});
      if (!own_first) jobs.push_back(own_job);
      ASSERT_TRUE(GatherRowsBatch(jobs, threads, level).ok());
      ASSERT_EQ(out, expected) << absl::StrFormat(
          "trial %d: %d parts, %s destination, %d shared and %d own copies, %d threads, "
          "level %s",
          trial, parts, fused_dst ? "fused" : "split", shared.size(), own.size(), threads,
          SimdLevelName(level));
    }
  }
}

// The read-ahead of streaming gathers never changes what is copied (only
// prefetches), so what can go wrong is its pacing: running out of step with
// the copy, asking for pieces past the end, or looping on empty pieces.
// Checks, after every Advance over random pieces (empty ones included),
// that the pieces it asked for reach `distance` bytes past the copy's
// progress (less than a line short) and that it asked for no piece before
// it needed one.
struct PieceSource {
  std::vector<std::vector<uint8_t>> pieces;
  size_t next = 0;
  size_t requested_bytes = 0;  // of the pieces handed out
  size_t last_bytes = 0;       // of the last piece handed out
  int calls_after_end = 0;

  static bool Next(void* context, const uint8_t** src, size_t* bytes) {
    auto* self = static_cast<PieceSource*>(context);
    if (self->next == self->pieces.size()) {
      ++self->calls_after_end;
      return false;
    }
    const std::vector<uint8_t>& piece = self->pieces[self->next++];
    *src = piece.data();
    *bytes = piece.size();
    self->requested_bytes += piece.size();
    self->last_bytes = piece.size();
    return true;
  }
};

TEST(ReadAheadTest, RunsItsDistanceAheadOfTheCopyAcrossPieces) {
  std::mt19937_64 rng(19);
  for (int trial = 0; trial < 500; ++trial) {
    PieceSource source;
    size_t total = 0;
    const size_t num_pieces = rng() % 40;
    for (size_t k = 0; k < num_pieces; ++k) {
      const size_t bytes = rng() % 5 == 0 ? 0 : rng() % 9000;
      source.pieces.emplace_back(bytes);
      total += bytes;
    }
    const size_t distance = std::vector<size_t>{0, 64, 1000, 6144}[rng() % 4];
    internal::ReadAhead ahead(&PieceSource::Next, &source, distance);
    size_t progress = 0;
    for (;;) {
      const std::string where = absl::StrFormat(
          "trial %d: %d pieces, %d bytes, distance %d, progress %d", trial,
          num_pieces, total, distance, progress);
      const size_t target = std::min(total, distance + progress);
      ASSERT_GE(source.requested_bytes + 63, target) << where;
      ASSERT_LT(source.requested_bytes - source.last_bytes,
                std::max<size_t>(distance + progress, 1))
          << where << ": asked for a piece before it needed one";
      ASSERT_LE(source.calls_after_end, 1) << where;
      if (progress >= total) break;
      const size_t step = std::min(total - progress, 1 + rng() % 700);
      ahead.Advance(step);
      progress += step;
    }
  }
}

TEST(GatherRowsErrorTest, BatchNamesTheFailingJobAndWritesNothing) {
  std::vector<uint8_t> src(4 * 8, 1), dst(4 * 8, 7);
  const std::vector<RowCopy> good = {{0, 0}}, bad = {{5, 1}};
  const RowPart parts[2] = {{{src.data(), 4, 8}, {dst.data(), 4, 8}, 8},
                            {{src.data(), 4, 8}, {dst.data(), 4, 8}, 4}};
  const std::vector<RowGatherJob> jobs = {{{parts, 1}, good}, {{parts, 2}, bad}};
  const absl::Status s = GatherRowsBatch(jobs, 2);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("gather 1, part 0: copy 0 reads source row 5"));
  EXPECT_EQ(dst, std::vector<uint8_t>(32, 7));
}

TEST(GatherRowsErrorTest, BatchOfTooManyJobsIsRefusedAndWritesNothing) {
  std::vector<uint8_t> src(4 * 8, 1), dst(4 * 8, 7);
  const std::vector<RowCopy> copies = {{0, 0}};
  const RowPart part{{src.data(), 4, 8}, {dst.data(), 4, 8}, 8};
  const std::vector<RowGatherJob> jobs(kMaxBatchJobs + 1, {{&part, 1}, copies});
  const absl::Status s = GatherRowsBatch(jobs, 2);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("at most 256 jobs, got 257"));
  EXPECT_EQ(dst, std::vector<uint8_t>(32, 7));
}

// kMaxBatchJobs jobs of different matrices (the updates of many caches):
// the same bytes as the jobs one by one, on any thread count.
TEST(GatherRowsBatchTest, ManyJobsMatchSequentialJobs) {
  std::mt19937_64 rng(2026120201);
  constexpr size_t kRows = 40, kRowBytes = 200;
  std::vector<std::vector<uint8_t>> src(kMaxBatchJobs), expected(kMaxBatchJobs),
      got(kMaxBatchJobs);
  std::vector<std::vector<RowCopy>> copies(kMaxBatchJobs);
  std::vector<RowPart> parts(kMaxBatchJobs);
  std::vector<RowGatherJob> jobs(kMaxBatchJobs);
  for (int threads : {1, 2, 5}) {
    for (size_t j = 0; j < kMaxBatchJobs; ++j) {
      src[j].resize(kRows * kRowBytes);
      for (uint8_t& b : src[j]) b = static_cast<uint8_t>(rng());
      expected[j].assign(kRows * kRowBytes, 0);
      got[j].assign(kRows * kRowBytes, 0);
      std::vector<uint32_t> order(kRows);
      for (size_t r = 0; r < kRows; ++r) order[r] = static_cast<uint32_t>(r);
      std::shuffle(order.begin(), order.end(), rng);
      copies[j].clear();
      for (size_t k = 0; k < rng() % kRows; ++k) copies[j].push_back({order[k], static_cast<uint32_t>(k)});
      ASSERT_TRUE(GatherRows({src[j].data(), kRows, kRowBytes}, {expected[j].data(), kRows, kRowBytes},
                             kRowBytes, copies[j], 1)
                      .ok());
      parts[j] = {{src[j].data(), kRows, kRowBytes}, {got[j].data(), kRows, kRowBytes}, kRowBytes};
      jobs[j] = {{&parts[j], 1}, copies[j]};
    }
    ASSERT_TRUE(GatherRowsBatch(jobs, threads).ok());
    for (size_t j = 0; j < kMaxBatchJobs; ++j) {
      ASSERT_EQ(got[j], expected[j]) << "threads " << threads << ", job " << j;
    }
  }
}

TEST(GatherRowsErrorTest, SourceRowOutOfRange) {
  std::vector<uint8_t> src(4 * 8), dst(4 * 8, 7);
  const std::vector<RowCopy> copies = {{0, 0}, {4, 1}};
  const absl::Status s = GatherRows({src.data(), 4, 8}, {dst.data(), 4, 8}, 8, copies, 1);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("copy 1 reads source row 4 of a 4-row"));
  EXPECT_EQ(dst, std::vector<uint8_t>(32, 7)) << "nothing may be written";
}

TEST(GatherRowsErrorTest, DestinationRowOutOfRange) {
  std::vector<uint8_t> src(4 * 8), dst(4 * 8, 7);
  const std::vector<RowCopy> copies = {{0, 9}};
  const absl::Status s = GatherRows({src.data(), 4, 8}, {dst.data(), 4, 8}, 8, copies, 1);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("destination row 9"));
}

TEST(GatherRowsErrorTest, RowWiderThanStride) {
  std::vector<uint8_t> src(4 * 8), dst(4 * 8);
  const std::vector<RowCopy> copies = {{0, 0}};
  const absl::Status s = GatherRows({src.data(), 4, 8}, {dst.data(), 4, 8}, 9, copies, 1);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("row of 9 bytes"));
}

TEST(GatherRowsErrorTest, NullMatrix) {
  std::vector<uint8_t> dst(8);
  const std::vector<RowCopy> copies = {{0, 0}};
  const absl::Status s = GatherRows({nullptr, 1, 8}, {dst.data(), 1, 8}, 8, copies, 1);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("null"));
}

TEST(CopyRowsErrorTest, RowWiderThanStride) {
  std::vector<uint8_t> src(4 * 8), dst(4 * 16, 7);
  const absl::Status s = CopyRows({src.data(), 4, 8}, {dst.data(), 4, 16}, 9, 4, 2);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("row of 9 bytes"));
  EXPECT_EQ(dst, std::vector<uint8_t>(64, 7)) << "nothing may be written";
}

TEST(CopyRowsErrorTest, MoreRowsThanAMatrixHolds) {
  std::vector<uint8_t> src(5 * 8), dst(4 * 8, 7);
  const absl::Status s = CopyRows({src.data(), 5, 8}, {dst.data(), 4, 8}, 8, 5, 2);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("copy of 5 rows"));
  EXPECT_EQ(dst, std::vector<uint8_t>(32, 7)) << "nothing may be written";
}

// Sizes that overflow a size_t are OutOfRange (memory/size_math.h), found
// before anything is read or written.
TEST(GatherRowsErrorTest, SizeOverflow) {
  uint8_t byte = 7;
  const size_t huge_rows = size_t{1} << 40, row = size_t{1} << 30;
  const absl::Status copy = CopyRows({&byte, huge_rows, row}, {&byte, huge_rows, row}, row,
                                     huge_rows, 1);
  EXPECT_EQ(copy.code(), absl::StatusCode::kOutOfRange) << copy;
  const RowCopy one{0, 0};
  // A copy list whose length times the row overflows (never read).
  const absl::Span<const RowCopy> many(&one, size_t{1} << 40);
  const absl::Status gather = GatherRows({&byte, 1, row}, {&byte, 1, row}, row, many, 1);
  EXPECT_EQ(gather.code(), absl::StatusCode::kOutOfRange) << gather;
  EXPECT_EQ(byte, 7);
}

TEST(CopyRowsErrorTest, NullMatrix) {
  std::vector<uint8_t> dst(8);
  const absl::Status s = CopyRows({nullptr, 1, 8}, {dst.data(), 1, 8}, 8, 1, 1);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("null"));
}

// More threads than cores, and (in the OMP_THREAD_LIMIT / OMP_DYNAMIC
// variants of this suite, tests/BUILD.bazel) more than the runtime starts:
// every kernel must still cover all of its bytes, whatever team it gets.
TEST(ThreadTeamTest, EveryKernelCoversItsWorkWithAnyTeamSize) {
  std::mt19937_64 rng(19);
  const size_t rows = 600, row_bytes = 4096 + 64;  // ~2.4 MiB: parallel paths
  const std::vector<uint8_t> src = RandomBytes(rng, rows * row_bytes);
  std::vector<RowCopy> copies(rows);
  for (size_t r = 0; r < rows; ++r) copies[r] = {static_cast<uint32_t>(r),
                                                 static_cast<uint32_t>(rows - 1 - r)};
  std::vector<uint8_t> reversed(src.size());
  for (size_t r = 0; r < rows; ++r) {
    std::memcpy(&reversed[(rows - 1 - r) * row_bytes], &src[r * row_bytes], row_bytes);
  }
  for (int threads : {2, 3, 8, 64}) {
    SCOPED_TRACE(absl::StrFormat("%d threads", threads));
    std::vector<uint8_t> dst(src.size(), 0);
    ASSERT_TRUE(ParallelCopy(dst.data(), src.data(), src.size(), threads).ok());
    ASSERT_TRUE(dst == src) << "ParallelCopy";
    for (SimdLevel level : SupportedSimdLevels()) {
      std::fill(dst.begin(), dst.end(), 0);
      ASSERT_TRUE(GatherRows({src.data(), rows, row_bytes}, {dst.data(), rows, row_bytes},
                             row_bytes, copies, threads, level)
                      .ok());
      ASSERT_TRUE(dst == reversed) << "GatherRows at " << SimdLevelName(level);
    }
    std::fill(dst.begin(), dst.end(), 0);
    ASSERT_TRUE(CopyRows({src.data(), rows, row_bytes}, {dst.data(), rows, row_bytes},
                         row_bytes, rows, threads)
                    .ok());
    ASSERT_TRUE(dst == src) << "CopyRows";
    // [rows, row_bytes / 4] fp32 transposed.
    const size_t cols = row_bytes / 4;
    std::vector<uint8_t> t(src.size(), 0), expected(src.size(), 0);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        std::memcpy(&expected[(c * rows + r) * 4], &src[r * row_bytes + c * 4], 4);
      }
    }
    TransposeOptions options;
    options.num_threads = threads;
    ASSERT_TRUE(Transpose({src.data(), rows, row_bytes}, cols, 4, {t.data(), cols, rows * 4},
                          options)
                    .ok());
    ASSERT_TRUE(t == expected) << "Transpose";
  }
}

// Every entry point that takes a thread count refuses one outside
// [1, kMaxThreads] (libgomp crashes or aborts on huge ones) and writes
// nothing.
TEST(ThreadCountErrorTest, OutOfRangeCountsAreRefusedByEveryKernel) {
  std::vector<uint8_t> src(4 * 8, 1), dst(4 * 8, 7);
  const std::vector<RowCopy> copies = {{0, 0}};
  const RowPart part{{src.data(), 4, 8}, {dst.data(), 4, 8}, 8};
  const RowGatherJob job{{&part, 1}, copies};
  const std::vector<uint32_t> columns = {0, 1};
  for (int threads : {0, -1, kMaxThreads + 1, 1000000, 2147483647}) {
    SCOPED_TRACE(threads);
    TransposeOptions options;
    options.num_threads = threads;
    const absl::Status statuses[] = {
        ParallelCopy(dst.data(), src.data(), 32, threads),
        GatherRows({src.data(), 4, 8}, {dst.data(), 4, 8}, 8, copies, threads),
        GatherRowsBatch(absl::MakeConstSpan(&job, 1), threads),
        CopyRows({src.data(), 4, 8}, {dst.data(), 4, 8}, 8, 4, threads),
        Transpose({src.data(), 4, 8}, 2, 4, {dst.data(), 2, 16}, options),
        GatherColumns({src.data(), 4, 8}, 2, 4, columns, {dst.data(), 2, 16}, options),
    };
    for (const absl::Status& s : statuses) {
      ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_THAT(s.message(),
                  HasSubstr(absl::StrFormat("num_threads must be in [1, %d], got %d",
                                            kMaxThreads, threads)));
    }
    EXPECT_EQ(dst, std::vector<uint8_t>(32, 7)) << "nothing may be written";
  }
}

// Plain per-element reference: dst[c][r] = src[r][c].
void ReferenceTranspose(const uint8_t* src, size_t rows, size_t cols,
                        size_t src_stride, size_t elem, uint8_t* dst,
                        size_t dst_stride) {
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      std::memcpy(dst + c * dst_stride + r * elem, src + r * src_stride + c * elem, elem);
    }
  }
}

TEST(TransposeTest, MatchesReferenceAtEveryLevelThreadCountAndShape) {
  std::mt19937_64 rng(13);
  static constexpr size_t kDims[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 257};
  for (int trial = 0; trial < 400; ++trial) {
    const size_t elem = size_t{1} << (rng() % 4);  // 1, 2, 4, 8
    const bool large = trial % 25 == 0;             // the parallel path
    const size_t rows = large ? 700 + rng() % 9 : kDims[rng() % 13];
    const size_t cols = large ? 600 + rng() % 9 : kDims[rng() % 13];
    // Padded and unpadded strides; 64-aligned destination lines sometimes
    // (the streaming-store path) and sometimes not.
    const size_t src_stride = cols * elem + (rng() % 2) * elem * (1 + rng() % 5);
    const size_t dst_stride = rng() % 2 == 0 ? (rows * elem + 63) / 64 * 64
                                             : rows * elem + elem * (rng() % 3);
    const std::vector<uint8_t> src = RandomBytes(rng, rows * src_stride);
    std::vector<uint8_t> expected(cols * dst_stride + 64, 0xAB);
    ReferenceTranspose(src.data(), rows, cols, src_stride, elem, expected.data(),
                       dst_stride);
    for (SimdLevel level : SupportedSimdLevels()) {
      for (int threads : {1, 2}) {
        memory::AlignedBuffer out = *memory::AlignedBuffer::Allocate(expected.size());
        std::memset(out.data(), 0xAB, out.size());
        const absl::Status s =
            Transpose({src.data(), rows, src_stride}, cols, elem,
                      {out.data(), cols, dst_stride}, {threads, level});
        ASSERT_TRUE(s.ok()) << s;
        ASSERT_EQ(0, std::memcmp(out.data(), expected.data(), expected.size()))
            << absl::StrFormat("trial %d: %dx%d of %d-byte elements, strides %d/%d, "
                               "level %s, %d threads",
                               trial, rows, cols, elem, src_stride, dst_stride,
                               SimdLevelName(level), threads);
      }
    }
  }
}

TEST(GatherColumnsTest, MatchesReference) {
  std::mt19937_64 rng(14);
  for (int trial = 0; trial < 400; ++trial) {
    const size_t elem = size_t{1} << (rng() % 4);
    const bool large = trial % 25 == 0;
    const size_t rows = large ? 900 : rng() % 70;
    const size_t cols = large ? 1000 : 1 + rng() % 90;
    const size_t src_stride = cols * elem + (rng() % 2) * elem;
    const size_t dst_stride = rows * elem + (rng() % 2) * 64;
    const std::vector<uint8_t> src = RandomBytes(rng, rows * src_stride);
    std::vector<uint32_t> columns(rng() % (cols + 1));
    for (auto& c : columns) c = static_cast<uint32_t>(rng() % cols);
    std::vector<uint8_t> expected(columns.size() * dst_stride, 0x5A);
    for (size_t k = 0; k < columns.size(); ++k) {
      for (size_t r = 0; r < rows; ++r) {
        std::memcpy(expected.data() + k * dst_stride + r * elem,
                    src.data() + r * src_stride + columns[k] * elem, elem);
      }
    }
    for (int threads : {1, 2}) {
      std::vector<uint8_t> out(expected.size(), 0x5A);
      const absl::Status s =
          GatherColumns({src.data(), rows, src_stride}, cols, elem, columns,
                        {out.data(), columns.size(), dst_stride}, {threads});
      ASSERT_TRUE(s.ok()) << s;
      ASSERT_EQ(out, expected) << absl::StrFormat(
          "trial %d: %d of %d columns, %d rows, %d-byte elements, %d threads",
          trial, columns.size(), cols, rows, elem, threads);
    }
  }
}

TEST(TransposeErrorTest, UnsupportedElementSize) {
  std::vector<uint8_t> src(12), dst(12);
  const absl::Status s = Transpose({src.data(), 2, 6}, 2, 3, {dst.data(), 2, 6});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("element size 3"));
}

TEST(TransposeErrorTest, ShapeMismatch) {
  std::vector<uint8_t> src(64), dst(64, 1);
  absl::Status s = Transpose({src.data(), 4, 16}, 4, 4, {dst.data(), 3, 16});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("needs 4 destination rows, got 3"));
  s = Transpose({src.data(), 4, 8}, 4, 4, {dst.data(), 4, 16});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stride of 8 bytes"));
  s = Transpose({src.data(), 4, 16}, 4, 4, {dst.data(), 4, 8});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dst, std::vector<uint8_t>(64, 1));
}

TEST(TransposeErrorTest, ColumnOutOfRange) {
  std::vector<uint8_t> src(64), dst(64);
  const std::vector<uint32_t> columns = {0, 4};
  const absl::Status s =
      GatherColumns({src.data(), 4, 16}, 4, 4, columns, {dst.data(), 2, 16});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("column index 4 at position 1"));
}

}  // namespace
}  // namespace sparse_mlp::gather
