// Python bindings of store/: the bundle file writer and reader
// (sparse_mlp.store's native classes) and the I/O engines available here.
#ifndef SPARSE_MLP_BINDINGS_STORE_MODULE_H_
#define SPARSE_MLP_BINDINGS_STORE_MODULE_H_

#include <pybind11/pybind11.h>

#include <string>

#include "absl/status/status.h"
#include "store/bundle_reader.h"

namespace sparse_mlp::bindings {

// A file's problems are OSErrors in Python (missing, unreadable, truncated,
// corrupted, a newer format, a failed read); other errors as ThrowIfError.
void ThrowIfFileError(const absl::Status& status);

// The reader's options from Python arguments (range-checked, names parsed;
// ValueError naming the bad one).
store::ReaderOptions ReaderOptionsArg(const std::string& engine, const pybind11::object& queue_depth,
                                      const pybind11::object& io_threads, bool verify,
                                      const std::string& direct_io);

// Registers BundleWriter, BundleReader and io_engines on the module.
void RegisterStore(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_STORE_MODULE_H_
