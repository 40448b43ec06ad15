#include "platform/threads.h"

#include "absl/strings/str_format.h"

namespace sparse_mlp {

absl::Status ValidateNumThreads(long long num_threads, const char* name) {
  if (num_threads >= 1 && num_threads <= kMaxThreads) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("%s must be in [1, %d], got %d", name, kMaxThreads, num_threads));
}

}  // namespace sparse_mlp
