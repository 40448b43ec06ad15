// store/: the bundle file format, the writer and the reader, against a plain
// reference (each bundle assembled from the source rows by element loops).
// Random shapes and request sets use fixed seeds; failures name the case.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/aligned_buffer.h"
#include "store/bundle_format.h"
#include "store/bundle_reader.h"
#include "store/bundle_writer.h"
#include "store/io_engine.h"
#include "tests/faulty_io_engine.h"

namespace sparse_mlp::store {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t != nullptr ? t : "/tmp";
}

// A model's MLP weights, random bytes (bit patterns, not values: the store
// moves bytes).
struct Model {
  BundleShape shape;  // whole model: neuron_begin 0
  std::vector<std::vector<uint8_t>> gate, up, down;  // per layer; down [H, I]
};

Model MakeModel(DType dtype, size_t h, size_t i, size_t layers, bool gated, uint64_t seed) {
  Model m;
  m.shape = {dtype, h, i, layers, gated, 0, 0, std::nullopt};
  std::mt19937_64 rng(seed);
  const size_t bytes = h * i * DTypeSize(dtype);
  auto fill = [&](std::vector<uint8_t>& v) {
    v.resize(bytes);
    for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  };
  m.gate.resize(layers), m.up.resize(layers), m.down.resize(layers);
  for (size_t l = 0; l < layers; ++l) {
    if (gated) fill(m.gate[l]);
    fill(m.up[l]);
    fill(m.down[l]);
  }
  return m;
}

// The reference bundle of model neuron n of layer l: gate row, up row,
// down column, element by element.
std::vector<uint8_t> ReferenceBundle(const Model& m, size_t l, size_t n) {
  const size_t e = DTypeSize(m.shape.dtype), h = m.shape.hidden, i = m.shape.intermediate;
  std::vector<uint8_t> b;
  auto row = [&](const std::vector<uint8_t>& w) {
    b.insert(b.end(), w.begin() + n * h * e, w.begin() + (n + 1) * h * e);
  };
  if (m.shape.gated) row(m.gate[l]);
  row(m.up[l]);
  for (size_t r = 0; r < h; ++r) {
    for (size_t k = 0; k < e; ++k) b.push_back(m.down[l][(r * i + n) * e + k]);
  }
  return b;
}

std::vector<uint8_t> NeuronMajor(const Model& m, size_t l) {
  const size_t e = DTypeSize(m.shape.dtype), h = m.shape.hidden, i = m.shape.intermediate;
  std::vector<uint8_t> out(h * i * e);
  for (size_t r = 0; r < h; ++r) {
    for (size_t n = 0; n < i; ++n) std::memcpy(&out[(n * h + r) * e], &m.down[l][(r * i + n) * e], e);
  }
  return out;
}

// Writes neurons [begin, begin + count) of every layer to `path`.
void Write(const Model& m, const std::string& path, size_t alignment, bool neuron_major,
           size_t begin = 0, size_t count = 0, size_t block_bytes = size_t{1} << 16) {
  BundleShape s = m.shape;
  s.neuron_begin = begin;
  s.intermediate = count == 0 ? m.shape.intermediate : count;
  s.model_intermediate = m.shape.intermediate;
  WriterOptions o;
  o.alignment = alignment;
  o.block_bytes = block_bytes;  // several blocks per layer
  absl::StatusOr<std::unique_ptr<BundleWriter>> w = BundleWriter::Create(path, s, o);
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t l = 0; l < s.layers; ++l) {
    std::vector<uint8_t> nm;
    if (neuron_major) nm = NeuronMajor(m, l);
    LayerWeights lw{s.gated ? m.gate[l].data() : nullptr, m.up[l].data(),
                    neuron_major ? nm.data() : m.down[l].data(), neuron_major};
    ASSERT_TRUE((*w)->AppendLayer(lw).ok());
  }
  ASSERT_TRUE((*w)->Finish().ok());
}

struct ReadCase {
  IoEngineKind engine;
  DirectIo direct;
  bool shm;  // the file on /dev/shm (tmpfs: O_DIRECT refused)
};

std::string CaseName(const ReadCase& c) {
  return absl::StrFormat("%s/%s/%s", IoEngineName(c.engine),
                         c.direct == DirectIo::kNever ? "buffered" : "auto",
                         c.shm ? "shm" : "disk");
}

std::string PathFor(const ReadCase& c, const std::string& name) {
  if (c.shm) return absl::StrFormat("/dev/shm/sparse_mlp_store_test_%d_%s", getpid(), name);
  return TempDir() + "/" + name;
}

class StoreRoundTrip : public ::testing::TestWithParam<ReadCase> {};

// Every writer input form, dtype, gated and gate-less, H not a multiple of
// the alignment, slices: each bundle read back bit-equal, whatever the
// request set (runs, duplicates, aligned contiguous or scattered
// destinations), through both engines and the buffered fallback.
TEST_P(StoreRoundTrip, EveryBundleBitEqual) {
  const ReadCase c = GetParam();
  std::mt19937_64 rng(7);
  int file = 0;
  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    for (bool gated : {true, false}) {
      for (bool neuron_major : {false, true}) {
        const size_t h = 37 + rng() % 300, i = 20 + rng() % 200, layers = 1 + rng() % 3;
        const size_t alignment = (rng() % 2) ? 512 : 4096;
        const Model m = MakeModel(dtype, h, i, layers, gated, rng());
        const bool slice = rng() % 2;
        const size_t begin = slice ? rng() % (i / 2) : 0, count = slice ? 1 + rng() % (i / 2) : i;
        const std::string path = PathFor(c, absl::StrFormat("rt%d.spmlb", file++));
        Write(m, path, alignment, neuron_major, begin, count);
        const std::string where = absl::StrFormat(
            "%s: %s H=%d I=%d L=%d gated=%d neuron_major=%d alignment=%d slice [%d, +%d)",
            CaseName(c), DTypeName(dtype), h, i, layers, gated, neuron_major, alignment, begin,
            count);
        ReaderOptions o;
        o.engine = c.engine;
        o.direct_io = c.direct;
        o.queue_depth = 1 + rng() % 8;
        o.max_request_bytes = 1 + rng() % 40000;
        absl::StatusOr<std::unique_ptr<BundleReader>> r = BundleReader::Open(path, o);
        ASSERT_TRUE(r.ok()) << where << ": " << r.status();
        BundleReader& reader = **r;
        EXPECT_EQ(reader.engine(), c.engine) << where;
        // tmpfs takes O_DIRECT from Linux 6.6 on; the reader uses it
        // where the file system does.
        if (c.direct == DirectIo::kNever) {
          EXPECT_FALSE(reader.direct_io()) << where;
        }
        if (!c.shm && c.direct == DirectIo::kAuto) {
          EXPECT_TRUE(reader.direct_io()) << where;
        }
        const BundleLayout& layout = reader.layout();
        ASSERT_EQ(layout.shape().intermediate, count) << where;
        const size_t bundle = layout.bundle_bytes();
        for (int batch = 0; batch < 4; ++batch) {
          // Requests: random (layer, neuron), some runs of adjacent ones,
          // some repeated; destinations scattered (misaligned by 8) or one
          // aligned array laid out as the file (the unstaged path).
          std::vector<BundleRequest> q;
          const bool contiguous = batch % 2 == 1;
          const size_t n = 1 + rng() % (2 * count);
          memory::AlignedBuffer dst =
              *memory::AlignedBuffer::Allocate(n * layout.bundle_stride() + 64, 4096);
          std::memset(dst.data(), 0xA5, dst.size());
          size_t layer = rng() % layers, neuron = rng() % count;
          for (size_t k = 0; k < n; ++k) {
            if (rng() % 3 == 0 || neuron + 1 >= count) {
              layer = rng() % layers;
              neuron = rng() % count;
            } else {
              ++neuron;
            }
            uint8_t* d = contiguous ? dst.data() + k * layout.bundle_stride()
                                    : dst.data() + 8 + k * layout.bundle_stride();
            q.push_back({layer, neuron, d});
          }
          std::vector<int> reported(n, 0);
          const double busy_before = reader.stats().busy_seconds;
          const auto started = std::chrono::steady_clock::now();
          ASSERT_TRUE(reader.Start(q).ok()) << where;
          const absl::Status s = reader.Finish([&](size_t k, const absl::Status& st) {
            ++reported[k];
            EXPECT_TRUE(st.ok()) << where << ": request " << k << ": " << st;
          });
          ASSERT_TRUE(s.ok()) << where << ": " << s;
          // The batch's time in flight is counted, within its wall time.
          const double busy = reader.stats().busy_seconds - busy_before;
          EXPECT_GT(busy, 0.0) << where;
          EXPECT_LE(
              busy,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count())
              << where;
          for (size_t k = 0; k < n; ++k) {
            ASSERT_EQ(reported[k], 1) << where << ": request " << k;
            const std::vector<uint8_t> want = ReferenceBundle(m, q[k].layer, begin + q[k].neuron);
            ASSERT_EQ(want.size(), bundle);
            ASSERT_EQ(std::memcmp(q[k].destination, want.data(), bundle), 0)
                << where << ": batch " << batch << " request " << k << " (layer " << q[k].layer
                << " neuron " << q[k].neuron << ")";
          }
        }
        EXPECT_EQ(reader.stats().errors, 0u);
        ::unlink(path.c_str());
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Engines, StoreRoundTrip,
    ::testing::Values(ReadCase{IoEngineKind::kIoUring, DirectIo::kAuto, false},
                      ReadCase{IoEngineKind::kPread, DirectIo::kAuto, false},
                      ReadCase{IoEngineKind::kIoUring, DirectIo::kNever, false},
                      ReadCase{IoEngineKind::kIoUring, DirectIo::kAuto, true},
                      ReadCase{IoEngineKind::kPread, DirectIo::kAuto, true}),
    [](const ::testing::TestParamInfo<ReadCase>& info) {
      std::string n = CaseName(info.param);
      std::replace(n.begin(), n.end(), '/', '_');
      return n;
    });

// ---- the format ------------------------------------------------------------

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

absl::Status OpenStatus(const std::string& path) {
  return BundleReader::Open(path).status();
}

TEST(StoreFormat, HeaderRoundTripAndEveryByteChecked) {
  BundleShape s{DType::kBFloat16, 3072, 100, 5, true, 0, 0, std::nullopt};
  absl::StatusOr<BundleLayout> l = BundleLayout::Create(s, 512);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->bundle_bytes(), 3u * 3072 * 2);
  EXPECT_EQ(l->bundle_stride(), l->bundle_bytes());  // 18 KiB: a multiple of 512
  std::vector<uint8_t> h(l->header_bytes());
  ASSERT_TRUE(l->EncodeHeader(absl::MakeSpan(h)).ok());
  absl::StatusOr<BundleLayout> d = BundleLayout::DecodeHeader(h, l->file_bytes(), "f");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->checksum_offset(), l->checksum_offset());
  EXPECT_EQ(d->layer_offset(4), l->layer_offset(4));
  // Any flipped bit of the header's covered bytes is caught.
  const size_t covered = kFixedHeaderBytes + 8 * 5 + 8;
  for (size_t k = 0; k < covered; ++k) {
    std::vector<uint8_t> bad = h;
    bad[k] ^= 0x10;
    EXPECT_FALSE(BundleLayout::DecodeHeader(bad, l->file_bytes(), "f").ok()) << "byte " << k;
  }
  EXPECT_EQ(BundleLayout::DecodeHeader(h, l->file_bytes() - 1, "f").status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(StoreFormat, BadShapesNamed) {
  EXPECT_THAT(
      std::string(BundleLayout::Create({DType::kFloat32, 0, 4, 1, true, 0, 0, std::nullopt}, 512)
                      .status()
                      .message()),
      HasSubstr("hidden"));
  EXPECT_THAT(
      std::string(BundleLayout::Create({DType::kFloat32, 4, 4, 1, true, 0, 0, std::nullopt}, 1000)
                      .status()
                      .message()),
      HasSubstr("alignment"));
  EXPECT_THAT(
      std::string(BundleLayout::Create({DType::kFloat32, 4, 4, 1, true, 3, 5, std::nullopt}, 512)
                      .status()
                      .message()),
      HasSubstr("outside the model"));
}

class StoreBadFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeModel(DType::kBFloat16, 64, 48, 2, true, 11);
    path_ = TempDir() + "/bad.spmlb";
    Write(model_, path_, 512, false);
    good_ = ReadFile(path_);
    layout_ = BundleReader::Open(path_).value()->layout();
  }
  void TearDown() override { ::unlink(path_.c_str()); }
  Model model_;
  std::string path_;
  std::vector<uint8_t> good_;
  BundleLayout layout_;
};

TEST_F(StoreBadFiles, OpenErrorsNameFileAndField) {
  std::vector<uint8_t> b = good_;
  b[0] = 'X';
  WriteFile(path_, b);
  absl::Status s = OpenStatus(path_);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr(path_));
  EXPECT_THAT(std::string(s.message()), HasSubstr("magic"));

  b = good_;
  b[8] = 3;  // a version newer than this library's
  WriteFile(path_, b);
  s = OpenStatus(path_);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("version 3"));

  b = good_;
  b[24] ^= 1;  // hidden: the header checksum catches it
  WriteFile(path_, b);
  EXPECT_THAT(std::string(OpenStatus(path_).message()), HasSubstr("header checksum"));

  b = good_;
  b.resize(b.size() - 512);  // truncated
  WriteFile(path_, b);
  s = OpenStatus(path_);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(s.message()), HasSubstr("truncated"));

  b.assign(good_.begin(), good_.begin() + 100);
  WriteFile(path_, b);
  EXPECT_EQ(OpenStatus(path_).code(), absl::StatusCode::kDataLoss);

  EXPECT_EQ(OpenStatus(TempDir() + "/missing.spmlb").code(), absl::StatusCode::kNotFound);
}

// A flipped byte inside one bundle: that bundle fails its checksum (naming
// layer, neuron and offset), its staged destination is untouched, and every
// other bundle arrives.
TEST_F(StoreBadFiles, CorruptBundleReportedAlone) {
  const uint64_t offset = layout_.bundle_offset(1, 5) + 17;
  std::vector<uint8_t> b = good_;
  b[offset] ^= 0xFF;
  WriteFile(path_, b);
  for (IoEngineKind engine : {IoEngineKind::kIoUring, IoEngineKind::kPread}) {
    ReaderOptions o;
    o.engine = engine;
    std::unique_ptr<BundleReader> r = *BundleReader::Open(path_, o);
    const size_t bundle = layout_.bundle_bytes();
    std::vector<std::vector<uint8_t>> dst(8, std::vector<uint8_t>(bundle + 8, 0x5A));
    std::vector<BundleRequest> q;
    for (size_t n = 2; n < 10; ++n) q.push_back({1, n, dst[n - 2].data() + 1});  // staged
    std::vector<absl::Status> got(q.size());
    ASSERT_TRUE(r->Start(q).ok());
    const absl::Status s = r->Finish([&](size_t k, const absl::Status& st) { got[k] = st; });
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    for (size_t k = 0; k < q.size(); ++k) {
      if (q[k].neuron == 5) {
        EXPECT_EQ(got[k].code(), absl::StatusCode::kDataLoss);
        EXPECT_THAT(std::string(got[k].message()),
                    HasSubstr(absl::StrFormat("layer 1 neuron 5 (offset %d", offset - 17)));
        EXPECT_THAT(std::string(got[k].message()), HasSubstr("checksum"));
        EXPECT_TRUE(std::all_of(dst[k].begin(), dst[k].end(), [](uint8_t v) { return v == 0x5A; }))
            << "a failed bundle reached its destination";
      } else {
        EXPECT_TRUE(got[k].ok()) << got[k];
        EXPECT_EQ(std::memcmp(q[k].destination, ReferenceBundle(model_, 1, q[k].neuron).data(),
                              bundle),
                  0);
      }
    }
  }
}

TEST_F(StoreBadFiles, FileTruncatedOrRemovedAfterOpen) {
  std::unique_ptr<BundleReader> r = *BundleReader::Open(path_);
  const size_t bundle = layout_.bundle_bytes();
  std::vector<uint8_t> dst(bundle);
  // Removed: the open descriptor still reads the file's data.
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  ASSERT_TRUE(r->Read({{{1, 47, dst.data()}}}).ok());
  EXPECT_EQ(std::memcmp(dst.data(), ReferenceBundle(model_, 1, 47).data(), bundle), 0);
  // Truncated under the reader: a short read, named.
  WriteFile(path_, good_);
  std::unique_ptr<BundleReader> r2 = *BundleReader::Open(path_);
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(layout_.layer_offset(1))), 0);
  const absl::Status s = r2->Read({{{1, 3, dst.data()}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("short read"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("layer 1 neuron 3"));
}

// Injected failures: EIO on one request fails exactly its bundles (named);
// a short read is completed by asking for the rest; the next batch succeeds.
TEST_F(StoreBadFiles, InjectedFaults) {
  for (IoEngineKind engine : {IoEngineKind::kIoUring, IoEngineKind::kPread}) {
    // Requests of 8 bundles (stride 512): neurons [0, 8), [8, 16), [16, 20).
    ASSERT_EQ(layout_.bundle_stride(), 512u);
    const uint64_t failing = layout_.bundle_offset(0, 8), short_run = layout_.bundle_offset(0, 16);
    bool inject = true;
    ReaderOptions o;
    o.engine = engine;
    o.max_request_bytes = 8 * 512;
    const auto fault = [&](uint64_t offset, size_t length, int64_t result) -> int64_t {
      if (!inject) return result;
      if (offset == failing) return -EIO;
      // The first completion of the last run returns one block only.
      if (offset == short_run && result == static_cast<int64_t>(length)) return 512;
      return result;
    };
    std::unique_ptr<BundleReader> r =
        *BundleReader::Open(path_, o, test_util::FaultyEngines(fault));
    const size_t bundle = layout_.bundle_bytes();
    std::vector<uint8_t> dst(20 * bundle);
    std::vector<BundleRequest> q;
    for (size_t n = 0; n < 20; ++n) q.push_back({0, n, dst.data() + n * bundle});
    std::vector<absl::Status> got(q.size());
    ASSERT_TRUE(r->Start(q).ok());
    EXPECT_EQ(r->Start(q).code(), absl::StatusCode::kFailedPrecondition);  // busy
    const absl::Status s = r->Finish([&](size_t k, const absl::Status& st) { got[k] = st; });
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(s.message()), HasSubstr("Input/output error"));
    for (size_t n = 0; n < 20; ++n) {
      if (n >= 8 && n < 16) {
        EXPECT_EQ(got[n].code(), absl::StatusCode::kUnavailable) << n;
        EXPECT_THAT(std::string(got[n].message()),
                    HasSubstr(absl::StrFormat("layer 0 neuron %d (offset %d", n,
                                              layout_.bundle_offset(0, n))));
        continue;
      }
      EXPECT_TRUE(got[n].ok()) << n << ": " << got[n];
      EXPECT_EQ(std::memcmp(q[n].destination, ReferenceBundle(model_, 0, n).data(), bundle), 0) << n;
    }
    EXPECT_EQ(r->stats().errors, 8u);
    inject = false;
    ASSERT_TRUE(r->Read(q).ok());
    EXPECT_EQ(std::memcmp(q[9].destination, ReferenceBundle(model_, 0, 9).data(), bundle), 0);
  }
}

TEST_F(StoreBadFiles, BadRequestsRefusedBeforeReading) {
  std::unique_ptr<BundleReader> r = *BundleReader::Open(path_);
  std::vector<uint8_t> dst(layout_.bundle_bytes());
  absl::Status s = r->Start({{{0, 1, dst.data()}, {2, 0, dst.data()}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("requests[1]: layer 2"));
  s = r->Start({{{0, 48, dst.data()}}});
  EXPECT_THAT(std::string(s.message()), HasSubstr("neuron 48"));
  s = r->Start({{{0, 0, nullptr}}});
  EXPECT_THAT(std::string(s.message()), HasSubstr("null destination"));
  EXPECT_EQ(r->stats().batches, 0u);
  EXPECT_FALSE(r->busy());
}

// Append: a bad request refused, nothing added to the batch in flight; good
// ones join it, their indices after the batch's, every bundle reported once
// and equal to the file.
TEST_F(StoreBadFiles, AppendJoinsTheBatchOrChangesNothing) {
  std::unique_ptr<BundleReader> r = *BundleReader::Open(path_);
  const size_t b = layout_.bundle_bytes();
  std::vector<uint8_t> dst(6 * b);
  ASSERT_TRUE(r->Append({{{0, 3, dst.data()}, {0, 9, dst.data() + b}}}).ok());  // starts one
  absl::Status s = r->Append({{{1, 2, dst.data() + 2 * b}, {0, 48, dst.data() + 3 * b}}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("neuron 48"));
  ASSERT_TRUE(r->Append({{{1, 40, dst.data() + 4 * b}, {0, 3, dst.data() + 5 * b}}}).ok());
  std::vector<int> seen(4, 0);
  ASSERT_TRUE(r->Finish([&](size_t k, const absl::Status& st) {
                 ASSERT_LT(k, seen.size());
                 EXPECT_TRUE(st.ok()) << st;
                 ++seen[k];
               }).ok());
  EXPECT_EQ(seen, (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(r->stats().batches, 1u);
  EXPECT_EQ(r->stats().bundles, 4u);
  const std::pair<size_t, size_t> read[4] = {{0, 3}, {0, 9}, {1, 40}, {0, 3}};
  const size_t slot[4] = {0, 1, 4, 5};
  for (int k = 0; k < 4; ++k) {
    const uint64_t at = layout_.bundle_offset(read[k].first, read[k].second);
    EXPECT_EQ(std::memcmp(dst.data() + slot[k] * b, good_.data() + at, b), 0) << "request " << k;
  }
}

TEST(StoreWriter, ErrorsAndPartialFileRemoved) {
  const std::string path = TempDir() + "/w.spmlb";
  const Model m = MakeModel(DType::kFloat32, 16, 8, 2, true, 3);
  {
    std::unique_ptr<BundleWriter> w = *BundleWriter::Create(path, m.shape);
    EXPECT_EQ(w->AppendLayer({nullptr, m.up[0].data(), m.down[0].data(), false}).code(),
              absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE(w->AppendLayer({m.gate[0].data(), m.up[0].data(), m.down[0].data(), false}).ok());
    EXPECT_EQ(w->Finish().code(), absl::StatusCode::kFailedPrecondition);
    struct stat st;
    EXPECT_EQ(::stat((path + ".partial").c_str(), &st), 0);
  }
  struct stat st;
  EXPECT_NE(::stat((path + ".partial").c_str(), &st), 0) << "partial file left behind";
  EXPECT_NE(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(BundleWriter::Create("/nonexistent_dir/x", m.shape).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(StoreEngines, AvailabilityListed) {
  const std::vector<IoEngineAvailability> a = AvailableIoEngines();
  ASSERT_EQ(a.size(), 2u);
  EXPECT_TRUE(a[1].available);  // pread
  EXPECT_EQ(MakeIoEngine(IoEngineKind::kPread, 0, 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sparse_mlp::store
