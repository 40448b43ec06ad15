// Counts calls to operator new in the test binary that links this library
// (it replaces the global operator new/delete pair with malloc/free plus a
// counter), so that tests can assert a hot path does not allocate. Link it
// only into binaries built without ASan (which replaces operator new itself).
#ifndef SPARSE_MLP_TESTS_ALLOC_COUNTER_H_
#define SPARSE_MLP_TESTS_ALLOC_COUNTER_H_

#include <cstddef>

namespace sparse_mlp::testing {

// operator new calls so far (any thread).
size_t AllocationCount();

}  // namespace sparse_mlp::testing

#endif  // SPARSE_MLP_TESTS_ALLOC_COUNTER_H_
