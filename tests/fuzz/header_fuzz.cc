// Fuzz target: the bundle file header parser (store/bundle_format.h) on
// arbitrary bytes and a claimed file size. It must never crash or read past
// the input, and whatever it accepts must be self-consistent: every layer's
// bundles and the checksum table inside the file, aligned, in order, and
// re-encoding the accepted layout must give back the same header bytes.
//
// Input: 8 bytes of claimed file size, then the header bytes. Seeds include
// valid headers (so mutations explore near-valid ones; the header checksum
// is recomputed on half the inputs so the field checks behind it are
// reached too).
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "store/bundle_format.h"
#include "tests/fuzz/fuzz_util.h"

namespace sparse_mlp::fuzz {
namespace {

void Check(const uint8_t* data, size_t size) {
  if (size < 9) return;
  uint64_t file_size = 0;
  std::memcpy(&file_size, data, 8);
  const bool fix_checksum = file_size & 1;
  std::vector<uint8_t> header(data + 8, data + size);
  if (fix_checksum && header.size() >= store::kFixedHeaderBytes) {
    absl::StatusOr<size_t> need = store::BundleLayout::EncodedHeaderSize(header, "fuzz");
    if (need.ok() && *need <= header.size()) {
      const uint64_t sum = XXH3_64bits(header.data(), *need - 8);
      for (int i = 0; i < 8; ++i) header[*need - 8 + i] = static_cast<uint8_t>(sum >> (8 * i));
    }
  }
  absl::StatusOr<store::BundleLayout> l =
      store::BundleLayout::DecodeHeader(header, file_size, "fuzz");
  if (!l.ok()) {
    FUZZ_CHECK(!l.status().message().empty(), "an error without a message");
    return;
  }
  const store::BundleShape& s = l->shape();
  FUZZ_CHECK(l->file_bytes() == file_size, "accepted a file size %llu != %llu",
             static_cast<unsigned long long>(file_size),
             static_cast<unsigned long long>(l->file_bytes()));
  FUZZ_CHECK(l->bundle_stride() >= l->bundle_bytes() && l->bundle_stride() % l->alignment() == 0,
             "bad stride");
  uint64_t end = l->header_bytes();
  for (size_t k = 0; k < s.layers; ++k) {
    FUZZ_CHECK(l->layer_offset(k) >= end && l->layer_offset(k) % l->alignment() == 0,
               "layer %zu overlaps or is misaligned", k);
    end = l->layer_offset(k) + uint64_t{s.intermediate} * l->bundle_stride();
  }
  FUZZ_CHECK(l->checksum_offset() >= end, "checksum table overlaps the bundles");
  FUZZ_CHECK(l->checksum_offset() + l->checksum_bytes() <= l->file_bytes(),
             "checksum table past the end");
  std::vector<uint8_t> again(l->header_bytes());
  FUZZ_CHECK(l->EncodeHeader(absl::MakeSpan(again)).ok(), "re-encoding failed");
  const size_t covered = store::kFixedHeaderBytes + 8 * s.layers + 8;
  FUZZ_CHECK(std::memcmp(again.data(), header.data(), covered) == 0,
             "re-encoded header differs");
}

}  // namespace
}  // namespace sparse_mlp::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sparse_mlp::fuzz::Check(data, size);
  return 0;
}
