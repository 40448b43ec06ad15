// errno -> absl::Status for the store's file operations (internal).
#ifndef SPARSE_MLP_STORE_IO_ERROR_H_
#define SPARSE_MLP_STORE_IO_ERROR_H_

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sparse_mlp::store {

// NotFound for ENOENT, PermissionDenied for EACCES / EPERM, Unavailable for
// every other errno; the message is `what` followed by strerror.
inline absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::UnavailableError(message);
  }
}

}  // namespace sparse_mlp::store

#endif  // SPARSE_MLP_STORE_IO_ERROR_H_
