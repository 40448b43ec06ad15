#include "bench/bundle_file.h"

#include <cstdio>
#include <memory>

#include "bench/synthetic_weights.h"
#include "quant/format.h"
#include "store/bundle_reader.h"
#include "store/bundle_writer.h"

namespace sparse_mlp::bench {

absl::Status EnsureBundleFile(const std::string& path, const store::BundleShape& shape,
                              size_t alignment) {
  store::ReaderOptions check;
  check.verify_checksums = false;
  if (auto r = store::BundleReader::Open(path, check); r.ok()) {
    const store::BundleShape& s = (*r)->layout().shape();
    const bool same_rows =
        s.quant.has_value() == shape.quant.has_value() &&
        (!s.quant.has_value() ||
         (s.quant->type == shape.quant->type &&
          s.quant->group == quant::RowLayout::Create(*shape.quant, shape.hidden)->group()));
    if (same_rows && s.dtype == shape.dtype && s.hidden == shape.hidden &&
        s.intermediate == shape.intermediate && s.layers == shape.layers &&
        s.gated == shape.gated && (*r)->layout().alignment() == alignment) {
      return absl::OkStatus();
    }
  }
  const size_t n = shape.hidden * shape.intermediate;
  const double parts = shape.gated ? 3.0 : 2.0;
  const size_t row_bytes = shape.quant.has_value()
                               ? quant::RowLayout::Create(*shape.quant, shape.hidden)->row_bytes()
                               : shape.hidden * DTypeSize(shape.dtype);
  std::printf("writing %s (%.2f GB) ...\n", path.c_str(),
              parts * row_bytes * shape.intermediate * shape.layers / 1e9);
  std::fflush(stdout);
  store::WriterOptions o;
  o.alignment = alignment;
  o.num_threads = 2;
  absl::StatusOr<std::unique_ptr<store::BundleWriter>> w =
      store::BundleWriter::Create(path, shape, o);
  if (!w.ok()) return w.status();
  for (size_t l = 0; l < shape.layers && shape.quant.has_value(); ++l) {
    const quant::RowLayout ql = *quant::RowLayout::Create(*shape.quant, shape.hidden);
    memory::AlignedBuffer g;  // gate-less files: none
    if (shape.gated) g = RandomQuantRows(shape.intermediate, ql, 3 * l + 1, 2);
    memory::AlignedBuffer u = RandomQuantRows(shape.intermediate, ql, 3 * l + 2, 2);
    memory::AlignedBuffer d = RandomQuantRows(shape.intermediate, ql, 3 * l + 3, 2);
    if (absl::Status s = (*w)->AppendLayer({shape.gated ? g.data() : nullptr, u.data(),
                                            d.data(), true});
        !s.ok()) {
      return s;
    }
  }
  for (size_t l = 0; l < shape.layers && !shape.quant.has_value(); ++l) {
    memory::AlignedBuffer g;  // gate-less files: none
    if (shape.gated) g = RandomValues(n, shape.dtype, 0.03f, 3 * l + 1, 2);
    memory::AlignedBuffer u = RandomValues(n, shape.dtype, 0.03f, 3 * l + 2, 2);
    memory::AlignedBuffer d = RandomValues(n, shape.dtype, 0.03f, 3 * l + 3, 2);
    if (absl::Status s = (*w)->AppendLayer({shape.gated ? g.data() : nullptr, u.data(),
                                            d.data(), false});
        !s.ok()) {
      return s;
    }
  }
  return (*w)->Finish();
}

}  // namespace sparse_mlp::bench
