#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/aligned_buffer.h"
#include "memory/arena.h"
#include "memory/size_math.h"

namespace sparse_mlp::memory {
namespace {

using ::testing::HasSubstr;

bool IsAligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

TEST(SizeMathTest, MulAddRoundUp) {
  EXPECT_EQ(*CheckedMul(3, 7), 21u);
  EXPECT_EQ(*CheckedAdd(3, 7), 10u);
  EXPECT_EQ(*CheckedRoundUp(0, 64), 0u);
  EXPECT_EQ(*CheckedRoundUp(1, 64), 64u);
  EXPECT_EQ(*CheckedRoundUp(64, 64), 64u);
  EXPECT_EQ(*CheckedRoundUp(65, 64), 128u);
}

TEST(SizeMathTest, OverflowIsAnErrorNamingTheOperands) {
  const size_t big = std::numeric_limits<size_t>::max() / 2 + 1;
  absl::StatusOr<size_t> product = CheckedMul(big, 2);
  ASSERT_EQ(product.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(product.status().message(), HasSubstr("* 2"));
  EXPECT_EQ(CheckedAdd(std::numeric_limits<size_t>::max(), 1).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CheckedRoundUp(std::numeric_limits<size_t>::max() - 3, 64)
                .status()
                .code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CheckedRoundUp(100, 48).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AlignedBufferTest, EveryAlignmentIsHonoured) {
  for (size_t alignment : {8, 16, 32, 64, 128, 4096}) {
    for (size_t size : {1, 3, 63, 64, 65, 1000, 1 << 20}) {
      absl::StatusOr<AlignedBuffer> buffer = AlignedBuffer::Allocate(size, alignment);
      ASSERT_TRUE(buffer.ok()) << buffer.status();
      EXPECT_TRUE(IsAligned(buffer->data(), alignment))
          << "size " << size << " alignment " << alignment;
      EXPECT_EQ(buffer->size(), size);
      EXPECT_EQ(buffer->alignment(), alignment);
      std::memset(buffer->data(), 0xAB, size);  // ASan checks the extent.
    }
  }
}

TEST(AlignedBufferTest, ZeroSizeIsEmptyAndDoesNotAllocate) {
  absl::StatusOr<AlignedBuffer> buffer = AlignedBuffer::Allocate(0);
  ASSERT_TRUE(buffer.ok());
  EXPECT_TRUE(buffer->empty());
  EXPECT_EQ(buffer->data(), nullptr);
}

TEST(AlignedBufferTest, BadAlignmentIsAnError) {
  for (size_t alignment : {0, 3, 48, 4}) {
    absl::StatusOr<AlignedBuffer> buffer = AlignedBuffer::Allocate(64, alignment);
    ASSERT_EQ(buffer.status().code(), absl::StatusCode::kInvalidArgument)
        << alignment;
    EXPECT_THAT(buffer.status().message(),
                HasSubstr(std::to_string(alignment)));
  }
}

TEST(AlignedBufferTest, OverflowingSizeIsAnError) {
  absl::StatusOr<AlignedBuffer> buffer =
      AlignedBuffer::Allocate(std::numeric_limits<size_t>::max() - 10);
  EXPECT_EQ(buffer.status().code(), absl::StatusCode::kOutOfRange);
}

TEST(AlignedBufferTest, AllocationFailureIsAnError) {
  // More than the address space can back: posix_memalign refuses it.
  absl::StatusOr<AlignedBuffer> buffer =
      AlignedBuffer::Allocate(size_t{1} << 62);
  ASSERT_EQ(buffer.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(buffer.status().message(), HasSubstr("cannot allocate"));
}

TEST(AlignedBufferTest, MovesTransferOwnership) {
  AlignedBuffer a = *AlignedBuffer::Allocate(256);
  std::memset(a.data(), 7, 256);
  uint8_t* data = a.data();
  AlignedBuffer b(std::move(a));
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(b.size(), 256u);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a.size(), 0u);       // NOLINT(bugprone-use-after-move)
  AlignedBuffer c = *AlignedBuffer::Allocate(16);
  c = std::move(b);  // frees c's old block (ASan/LSan would flag a leak)
  EXPECT_EQ(c.data(), data);
  EXPECT_EQ(c.data()[255], 7);
  c = std::move(c);
  EXPECT_EQ(c.data(), data);
}

TEST(AlignedBufferTest, HugePageAdviceKeepsRequestedAlignmentAndSize) {
  const size_t size = (size_t{4} << 20) + 100;
  absl::StatusOr<AlignedBuffer> buffer =
      AlignedBuffer::Allocate(size, 64, HugePageAdvice::kHugePages);
  ASSERT_TRUE(buffer.ok());
  EXPECT_TRUE(IsAligned(buffer->data(), size_t{2} << 20));
  EXPECT_EQ(buffer->size(), size);
  buffer->data()[size - 1] = 1;
}

TEST(ArenaTest, RegionsAreAlignedAndDisjoint) {
  std::unique_ptr<Arena> arena = *Arena::Create(1 << 16);
  std::vector<AlignedBuffer> regions;
  for (size_t size : {1, 64, 65, 100, 1000, 7}) {
    absl::StatusOr<AlignedBuffer> region = arena->Allocate(size);
    ASSERT_TRUE(region.ok()) << region.status();
    EXPECT_TRUE(IsAligned(region->data(), 64));
    EXPECT_EQ(region->arena(), arena.get());
    std::memset(region->data(), static_cast<int>(regions.size()), size);
    regions.push_back(*std::move(region));
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    for (size_t b = 0; b < regions[i].size(); ++b) {
      ASSERT_EQ(regions[i].data()[b], i) << "region " << i << " byte " << b;
    }
  }
  EXPECT_EQ(arena->live_regions(), regions.size());
}

TEST(ArenaTest, ReleasedRegionsAreReusedAndCoalesced) {
  std::unique_ptr<Arena> arena = *Arena::Create(4096);
  AlignedBuffer a = *arena->Allocate(1024);
  AlignedBuffer b = *arena->Allocate(1024);
  AlignedBuffer c = *arena->Allocate(2048);
  EXPECT_EQ(arena->bytes_in_use(), 4096u);
  EXPECT_FALSE(arena->Allocate(1).ok());
  uint8_t* a_data = a.data();
  a.Reset();
  b.Reset();
  // a and b merged into one 2 KiB extent at a's address.
  EXPECT_EQ(arena->largest_free_extent(), 2048u);
  AlignedBuffer d = *arena->Allocate(2048);
  EXPECT_EQ(d.data(), a_data);
  d.Reset();
  c.Reset();
  EXPECT_EQ(arena->largest_free_extent(), 4096u);
  EXPECT_EQ(arena->bytes_in_use(), 0u);
  EXPECT_EQ(arena->live_regions(), 0u);
}

TEST(ArenaTest, ExhaustionIsAnErrorAndLeavesTheArenaUnchanged) {
  std::unique_ptr<Arena> arena = *Arena::Create(1000);  // rounded to 1024
  AlignedBuffer a = *arena->Allocate(512);
  absl::StatusOr<AlignedBuffer> too_big = arena->Allocate(600);
  ASSERT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_big.status().message(), HasSubstr("600"));
  EXPECT_THAT(too_big.status().message(), HasSubstr("largest free extent 512"));
  EXPECT_EQ(arena->bytes_in_use(), 512u);
  EXPECT_EQ(arena->live_regions(), 1u);
  EXPECT_TRUE(arena->Allocate(512).ok());
}

TEST(ArenaTest, OverflowingRequestIsAnError) {
  std::unique_ptr<Arena> arena = *Arena::Create(1024);
  EXPECT_EQ(arena->Allocate(std::numeric_limits<size_t>::max()).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(arena->bytes_in_use(), 0u);
}

TEST(ArenaTest, ZeroSizeConsumesNothing) {
  std::unique_ptr<Arena> arena = *Arena::Create(0);
  absl::StatusOr<AlignedBuffer> empty = arena->Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(arena->live_regions(), 0u);
  EXPECT_FALSE(arena->Allocate(1).ok());
}

TEST(ArenaTest, MovedRegionReturnsToItsArenaOnce) {
  std::unique_ptr<Arena> arena = *Arena::Create(1024);
  AlignedBuffer a = *arena->Allocate(100);
  AlignedBuffer b = std::move(a);
  a.Reset();  // NOLINT(bugprone-use-after-move): empty, releases nothing
  EXPECT_EQ(arena->live_regions(), 1u);
  b.Reset();
  EXPECT_EQ(arena->live_regions(), 0u);
  EXPECT_EQ(arena->largest_free_extent(), 1024u);
}

// Many small and a few large regions, freed in random order, with a byte
// pattern check that catches any overlap. Fixed seed; the failing step is
// printed.
TEST(ArenaTest, RandomizedAllocateReleaseNeverOverlaps) {
  constexpr size_t kCapacity = 1 << 22;
  std::unique_ptr<Arena> arena = *Arena::Create(kCapacity);
  std::mt19937_64 rng(20261126);
  struct Live {
    AlignedBuffer buffer;
    uint8_t tag;
  };
  std::vector<Live> live;
  for (int step = 0; step < 5000; ++step) {
    const bool allocate = live.empty() || rng() % 3 != 0;
    if (allocate) {
      const size_t size = rng() % 16 == 0 ? 1 + rng() % (kCapacity / 8)
                                          : 1 + rng() % 4096;
      absl::StatusOr<AlignedBuffer> region = arena->Allocate(size);
      if (!region.ok()) {
        ASSERT_EQ(region.status().code(), absl::StatusCode::kResourceExhausted)
            << "step " << step;
        continue;
      }
      ASSERT_TRUE(IsAligned(region->data(), 64)) << "step " << step;
      const uint8_t tag = static_cast<uint8_t>(step);
      std::memset(region->data(), tag, region->size());
      live.push_back({*std::move(region), tag});
    } else {
      const size_t victim = rng() % live.size();
      const Live& l = live[victim];
      for (size_t b = 0; b < l.buffer.size(); b += 61) {
        ASSERT_EQ(l.buffer.data()[b], l.tag)
            << "step " << step << ": region of " << l.buffer.size()
            << " bytes overwritten at byte " << b;
      }
      std::swap(live[victim], live.back());
      live.pop_back();
    }
  }
  live.clear();
  EXPECT_EQ(arena->bytes_in_use(), 0u);
  EXPECT_EQ(arena->largest_free_extent(), kCapacity);
}

TEST(ArenaTest, GrowingArenaAddsBlocksOnlyWhenNothingFits) {
  std::unique_ptr<Arena> arena =
      *Arena::Create(1024, 64, HugePageAdvice::kNone, /*growth_bytes=*/4096);
  EXPECT_EQ(arena->num_blocks(), 1u);
  AlignedBuffer a = *arena->Allocate(1024);
  EXPECT_EQ(arena->num_blocks(), 1u);
  // Nothing free: one block of growth_bytes.
  AlignedBuffer b = *arena->Allocate(100);
  EXPECT_EQ(arena->num_blocks(), 2u);
  EXPECT_EQ(arena->capacity(), 1024u + 4096u);
  // Fits the second block's rest: no third block.
  AlignedBuffer c = *arena->Allocate(2000);
  EXPECT_EQ(arena->num_blocks(), 2u);
  // Larger than growth_bytes: a block of the request's size.
  AlignedBuffer d = *arena->Allocate(10000);
  EXPECT_EQ(arena->num_blocks(), 3u);
  EXPECT_EQ(arena->capacity(), 1024u + 4096u + 10048u);
  std::memset(a.data(), 1, a.size());
  std::memset(b.data(), 2, b.size());
  std::memset(c.data(), 3, c.size());
  std::memset(d.data(), 4, d.size());
  EXPECT_EQ(a.data()[1023], 1);
  EXPECT_EQ(b.data()[99], 2);
  EXPECT_EQ(c.data()[1999], 3);
  a.Reset();
  b.Reset();
  c.Reset();
  d.Reset();
  // Freed extents merge within their block, never across blocks.
  EXPECT_EQ(arena->largest_free_extent(), 10048u);
  EXPECT_EQ(arena->bytes_in_use(), 0u);
  AlignedBuffer e = *arena->Allocate(4096);
  EXPECT_EQ(arena->num_blocks(), 3u);
}

TEST(ArenaTest, FixedArenaDoesNotGrow) {
  std::unique_ptr<Arena> arena = *Arena::Create(1024);
  EXPECT_EQ(arena->growth_bytes(), 0u);
  AlignedBuffer a = *arena->Allocate(1024);
  EXPECT_EQ(arena->Allocate(64).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(arena->num_blocks(), 1u);
  EXPECT_EQ(arena->capacity(), 1024u);
}

TEST(ArenaTest, GrowingFromZeroCapacity) {
  std::unique_ptr<Arena> arena = *Arena::Create(0, 64, HugePageAdvice::kNone, 256);
  EXPECT_EQ(arena->num_blocks(), 0u);
  AlignedBuffer a = *arena->Allocate(10);
  EXPECT_EQ(arena->num_blocks(), 1u);
  EXPECT_EQ(arena->capacity(), 256u);
}

TEST(ArenaTest, BadAlignmentIsRefusedAtCreate) {
  EXPECT_EQ(Arena::Create(0, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Arena::Create(1024, 48).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ArenaDeathTest, DestroyingWithLiveRegionsAborts) {
  EXPECT_DEATH(
      {
        std::unique_ptr<Arena> arena = *Arena::Create(1024);
        AlignedBuffer leaked = *arena->Allocate(64);
        arena.reset();
      },
      "live regions");
}

}  // namespace
}  // namespace sparse_mlp::memory
