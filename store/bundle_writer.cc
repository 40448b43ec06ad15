#include "store/bundle_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "gather/transpose.h"
#include "platform/threads.h"
#include "store/io_error.h"

namespace sparse_mlp::store {

absl::StatusOr<std::unique_ptr<BundleWriter>> BundleWriter::Create(const std::string& path,
                                                                  const BundleShape& shape,
                                                                  const WriterOptions& options) {
  absl::StatusOr<BundleLayout> layout = BundleLayout::Create(shape, options.alignment);
  if (!layout.ok()) return layout.status();
  if (absl::Status s = ValidateNumThreads(options.num_threads); !s.ok()) return s;
  if (options.block_bytes == 0) {
    return absl::InvalidArgumentError("block_bytes must be positive, got 0");
  }
  const std::string partial = path + ".partial";
  const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, absl::StrFormat("cannot create %s", partial));
  std::unique_ptr<BundleWriter> w(new BundleWriter(path, *std::move(layout), options, fd));
  const BundleLayout& l = w->layout_;
  w->block_neurons_ =
      std::clamp<size_t>(options.block_bytes / l.bundle_stride(), 1, l.shape().intermediate);
  absl::StatusOr<memory::AlignedBuffer> block =
      memory::AlignedBuffer::Allocate(w->block_neurons_ * l.bundle_stride(), l.alignment());
  if (!block.ok()) return block.status();
  absl::StatusOr<memory::AlignedBuffer> tmp =
      memory::AlignedBuffer::Allocate(w->block_neurons_ * l.row_bytes());
  if (!tmp.ok()) return tmp.status();
  w->block_ = *std::move(block);
  w->down_tmp_ = *std::move(tmp);
  std::memset(w->block_.data(), 0, w->block_.size());  // padding stays zero
  w->checksums_.assign(l.shape().layers * l.shape().intermediate, 0);
  return w;
}

BundleWriter::BundleWriter(std::string path, BundleLayout layout, WriterOptions options, int fd)
    : path_(std::move(path)),
      partial_path_(path_ + ".partial"),
      layout_(std::move(layout)),
      options_(options),
      fd_(fd) {}

BundleWriter::~BundleWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(partial_path_.c_str());
}

absl::Status BundleWriter::Fail(absl::Status status) {
  failed_ = true;
  return status;
}

absl::Status BundleWriter::WriteAt(const void* data, size_t bytes, uint64_t offset,
                                   const char* what) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(ErrnoStatus(errno, absl::StrFormat("%s: writing %s at offset %d",
                                                     partial_path_, what, offset)));
    }
    p += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status BundleWriter::AppendLayer(const LayerWeights& w) {
  const BundleShape& s = layout_.shape();
  if (failed_) return absl::FailedPreconditionError(path_ + ": an earlier write failed");
  if (layers_written_ == s.layers) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: all %d layers are already written", path_, s.layers));
  }
  if (w.up == nullptr || w.down == nullptr) {
    return absl::InvalidArgumentError("up and down must not be null");
  }
  if (s.gated != (w.gate != nullptr)) {
    return absl::InvalidArgumentError(s.gated ? "this file is gated: gate must not be null"
                                              : "this file is gate-less: gate must be null");
  }
  if (s.quant.has_value() && !w.down_neuron_major) {
    return absl::InvalidArgumentError(
        "a quantized file takes its down as neuron-major quantized rows (down_neuron_major: "
        "each neuron's column quantized along H)");
  }
  const size_t row = layout_.row_bytes(), elem = DTypeSize(s.dtype);
  const size_t model = s.model_intermediate, h = s.hidden;
  const auto* gate = static_cast<const uint8_t*>(w.gate);
  const auto* up = static_cast<const uint8_t*>(w.up);
  const auto* down = static_cast<const uint8_t*>(w.down);
  gather::TransposeOptions t;
  t.num_threads = options_.num_threads;
  for (size_t n0 = 0; n0 < s.intermediate; n0 += block_neurons_) {
    const size_t count = std::min(block_neurons_, s.intermediate - n0);
    const size_t first = s.neuron_begin + n0;  // model neuron
    if (!w.down_neuron_major) {
      // The block's down columns [H, count] of [H, model] as rows.
      if (absl::Status st = gather::Transpose({down + first * elem, h, model * elem}, count, elem,
                                              {down_tmp_.data(), count, row}, t);
          !st.ok()) {
        return Fail(st);
      }
    }
    for (size_t k = 0; k < count; ++k) {
      uint8_t* b = block_.data() + k * layout_.bundle_stride();
      const size_t n = first + k;
      if (s.gated) std::memcpy(b + layout_.gate_offset(), gate + n * row, row);
      std::memcpy(b + layout_.up_offset(), up + n * row, row);
      std::memcpy(b + layout_.down_offset(),
                  w.down_neuron_major ? down + n * row : down_tmp_.data() + k * row, row);
      checksums_[layers_written_ * s.intermediate + n0 + k] =
          BundleChecksum(b, layout_.bundle_bytes());
    }
    if (absl::Status st = WriteAt(block_.data(), count * layout_.bundle_stride(),
                                  layout_.bundle_offset(layers_written_, n0), "bundles");
        !st.ok()) {
      return st;
    }
  }
  ++layers_written_;
  return absl::OkStatus();
}

absl::Status BundleWriter::Finish() {
  const BundleShape& s = layout_.shape();
  if (failed_) return absl::FailedPreconditionError(path_ + ": an earlier write failed");
  if (finished_) return absl::FailedPreconditionError(path_ + ": already finished");
  if (layers_written_ != s.layers) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: %d of %d layers written; append the rest before Finish", path_, layers_written_,
        s.layers));
  }
  // Checksum table (little-endian u64), then the header, each padded.
  std::vector<uint8_t> table(layout_.file_bytes() - layout_.checksum_offset(), 0);
  for (size_t k = 0; k < checksums_.size(); ++k) {
    for (int i = 0; i < 8; ++i) table[8 * k + i] = static_cast<uint8_t>(checksums_[k] >> (8 * i));
  }
  if (absl::Status st = WriteAt(table.data(), table.size(), layout_.checksum_offset(), "checksums");
      !st.ok()) {
    return st;
  }
  std::vector<uint8_t> header(layout_.header_bytes());
  if (absl::Status st = layout_.EncodeHeader(absl::MakeSpan(header)); !st.ok()) return Fail(st);
  if (absl::Status st = WriteAt(header.data(), header.size(), 0, "the header"); !st.ok()) {
    return st;
  }
  // Layers end on alignment boundaries; the last padding is covered by the
  // checksum table's. The size must be exactly what the header states.
  if (::ftruncate(fd_, static_cast<off_t>(layout_.file_bytes())) != 0 || ::fsync(fd_) != 0) {
    return Fail(ErrnoStatus(errno, partial_path_ + ": finishing"));
  }
  ::close(fd_);
  fd_ = -1;
  if (::rename(partial_path_.c_str(), path_.c_str()) != 0) {
    return Fail(ErrnoStatus(errno, absl::StrFormat("renaming %s to %s", partial_path_, path_)));
  }
  finished_ = true;
  return absl::OkStatus();
}

}  // namespace sparse_mlp::store
