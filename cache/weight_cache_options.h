// The vocabulary of a WeightCache (cache/weight_cache.h): its options, the
// weights it is built from, the views it hands out and what its updates
// report. Plain structs; no behaviour.
#ifndef SPARSE_MLP_CACHE_WEIGHT_CACHE_OPTIONS_H_
#define SPARSE_MLP_CACHE_WEIGHT_CACHE_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "cache/dtype.h"
#include "memory/arena.h"
#include "platform/enum_names.h"
#include "platform/simd_level.h"
#include "quant/format.h"

namespace sparse_mlp::cache {

enum class PackedLayout {
  kSplit,              // gate [A, H], up [A, H], down [A, H]: three buffers
  kInterleavedGateUp,  // gate_up [A, 2H] (gate row | up row), down [A, H]
  // One [A, 3H] array, [gate row | up row | down row] per slot ([A, 2H]
  // up | down without a gate): views are strided (row stride 3H), and a
  // loaded neuron is one contiguous write, as it is one contiguous read of
  // the cache's fused sources (one piece per neuron for the copy kernel,
  // gather/row_gather.h): the fastest updates (docs/performance.md).
  kFusedRows,
};

inline constexpr EnumName<PackedLayout> kPackedLayoutNames[] = {
    {PackedLayout::kSplit, "split"},
    {PackedLayout::kInterleavedGateUp, "interleaved"},
    {PackedLayout::kFusedRows, "fused"},
};

// PackedLayoutName: "split", "interleaved", "fused"; ParsePackedLayout: the
// inverse (InvalidArgument naming the choices for any other name).
SPARSE_MLP_ENUM_NAME_FUNCTIONS(PackedLayout, kPackedLayoutNames, PackedLayoutName,
                               ParsePackedLayout, "layout")

// Who holds the weights the cache loads rows from. kCopy (default): the
// cache copies gate, up and the neuron-major down into one fused [I, 3H]
// array of its own ([gate row | up row | down row] per neuron, so loading a
// neuron is one contiguous read; docs/design.md, "Fused sources") and the
// caller's arrays may be freed after Create. kBorrow: the cache reads gate,
// up (and down, when given neuron-major) in place; those arrays must stay
// alive and unchanged for the cache's whole lifetime.
enum class SourceOwnership { kCopy, kBorrow };

enum class DownLayout {
  // down is [H, I] (nn.Linear weight): turned neuron-major once, in Create
  // (parallel blocked transpose, gather/transpose.h)
  kHiddenMajor,
  kNeuronMajor,  // down is already [I, H]
};

struct WeightCacheOptions {
  // Repack when max(|added|, |removed|) >= repack_fraction x new A. A
  // repack writes all A rows where the differential plan writes max(|added|,
  // |removed|); its in-order copies are faster per byte but not enough to pay
  // for the extra rows (docs/design.md, "Repack threshold"), so by default
  // a repack happens only when every slot changes anyway.
  static constexpr double kDefaultRepackFraction = 1.0;

  size_t hidden_size = 0;        // H > 0
  size_t intermediate_size = 0;  // I > 0
  DType dtype = DType::kFloat32;
  bool has_gate = true;  // false: up and down only (OPT / ReLU-style MLPs)
  PackedLayout layout = PackedLayout::kSplit;
  SourceOwnership ownership = SourceOwnership::kCopy;
  DownLayout down_layout = DownLayout::kHiddenMajor;
  int num_threads = 1;  // [1, kMaxThreads] (platform/threads.h)
  // Instruction set of the diff, transpose and copy kernels (kBest: the
  // best this CPU runs; kScalar: the portable reference paths).
  SimdLevel simd = SimdLevel::kBest;
  // An update that changes fewer than `tolerance` neurons is skipped;
  // lag() then says by how many neurons the cache differs from the last
  // requested mask (always < tolerance), and the next applied update, or
  // CatchUp(), makes it exact again. 0 = every update exact; > I: only
  // CatchUp applies.
  size_t tolerance = 0;
  double repack_fraction = kDefaultRepackFraction;  // in (0, 1]; 1 = only full churn
  // Also keep the seed API's concatenated [gate; up] ([2A, H]: active gate
  // rows, then active up rows, in slot order) as a zero-copy view,
  // concatenated_gate_up(), maintained by every update: O(changed rows)
  // while A stays the same (a replaced neuron keeps its slot, so its gate
  // row s and up row A + s are rewritten in place), plus one O(A x H) move
  // of the up block when A changes. Costs 2 x capacity x H elements and the
  // gate and up rows written twice per load. Needs a gate.
  bool concat_gate_up = false;
  // Storage for rows and source copies: the heap (huge-page advised) when
  // null, else this arena, which must outlive the cache (not owned).
  memory::Arena* arena = nullptr;
  // Quantized rows (quant/format.h). Set, every gate row, up row and
  // neuron-major down row is one quantized row of quant::RowLayout(*quant,
  // H), the weights are [I, row_bytes] arrays of such rows (down quantized
  // per neuron along H: DownLayout::kNeuronMajor), and dtype is not used.
  // The cache moves rows as bytes, so a slot holds a neuron's quantized
  // rows and their scales, and an update is bit-identical to a rebuild.
  std::optional<quant::QuantFormat> quant;
  // Slots reserved by Create (capped at I) when at least the initial mask's
  // count; otherwise Create reserves that count plus a quarter.
  size_t initial_capacity = 0;
};

// Row-major weight arrays of options.dtype (or of quantized rows, with
// options.quant), contiguous. gate may be null when has_gate is false.
struct MlpWeights {
  const void* gate = nullptr;  // [I, H]
  const void* up = nullptr;    // [I, H]
  const void* down = nullptr;  // [H, I] or [I, H] per options.down_layout
};

// A strided matrix view: element (r, c) is at
// data + (r * row_stride + c * col_stride) * DTypeSize(dtype).
// A view of quantized rows (quant set) has `rows` quantized rows of `cols`
// weights each (quant::RowLayout(*quant, cols)), row r at
// data + r * row_stride, where row_stride counts bytes; col_stride is 0 and
// dtype is not used.
struct MatrixView {
  const void* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t row_stride = 0;  // in elements (in bytes for quantized rows)
  size_t col_stride = 1;  // in elements
  DType dtype = DType::kFloat32;
  std::optional<quant::QuantFormat> quant;
};

// Bytes of one gate, up or neuron-major down row of a cache with `options`:
// H elements of options.dtype, or one quantized row. InvalidArgument for a
// quantized format rows of H cannot have (naming it); OutOfRange when the
// size overflows.
absl::StatusOr<size_t> RowBytesFor(const WeightCacheOptions& options);

// What the last Update / CatchUp did.
struct UpdateStats {
  size_t changed_neurons = 0;  // |added| + |removed| against the applied mask
  size_t rows_loaded = 0;      // rows per matrix copied from the sources
  size_t rows_moved = 0;       // rows per matrix moved inside the cache
  size_t bytes_copied = 0;     // over all matrices
  bool repacked = false;
  bool skipped = false;  // below the tolerance
  bool grew = false;     // capacity was increased (allocation)
};

// What all updates since Create did (sums of UpdateStats; Create's first
// packing does not count; every update call does, skipped or not,
// including those of UpdateMany and of the layer step, which goes through
// UpdateWith).
struct UpdateTotals {
  uint64_t updates = 0;
  uint64_t skipped = 0;          // below the tolerance
  uint64_t changed_neurons = 0;  // sum of |added| + |removed|
  uint64_t rows_loaded = 0;      // per matrix
  uint64_t rows_moved = 0;       // per matrix
  uint64_t bytes_copied = 0;     // over all matrices
  uint64_t repacks = 0;
  uint64_t growths = 0;
};

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_WEIGHT_CACHE_OPTIONS_H_
