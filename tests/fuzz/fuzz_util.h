// Shared by the fuzz targets: FUZZ_CHECK, their assertion (a failed check
// prints what differed and aborts, which libFuzzer records as a crash with
// the input that caused it, and the corpus replay test as a failure), and
// FuzzInput, which reads the input as a stream of small integers (reading
// past the end yields zeros, so every input decodes to something).
#ifndef SPARSE_MLP_TESTS_FUZZ_FUZZ_UTIL_H_
#define SPARSE_MLP_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition, ...)                                              \
  do {                                                                          \
    if (!(condition)) {                                                         \
      std::fprintf(stderr, "%s:%d: check failed: %s\n  ", __FILE__, __LINE__,   \
                   #condition);                                                 \
      std::fprintf(stderr, __VA_ARGS__);                                        \
      std::fprintf(stderr, "\n");                                               \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

namespace sparse_mlp::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    const uint8_t lo = Byte();  // two statements: operand order is unspecified
    const uint8_t hi = Byte();
    return static_cast<uint16_t>(lo | hi << 8);
  }
  // A value in [0, bound) (bound > 0).
  size_t Below(size_t bound) { return U16() % bound; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace sparse_mlp::fuzz

// Defines the libFuzzer entry point of a target whose body is
// `void run(sparse_mlp::fuzz::FuzzInput&)`.
#define SPARSE_MLP_FUZZ_TARGET(run)                                       \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    sparse_mlp::fuzz::FuzzInput in(data, size);                           \
    run(in);                                                              \
    return 0;                                                             \
  }

#endif  // SPARSE_MLP_TESTS_FUZZ_FUZZ_UTIL_H_
