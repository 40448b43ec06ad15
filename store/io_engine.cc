#include "store/io_engine.h"

#include <liburing.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "store/io_error.h"

namespace sparse_mlp::store {
namespace {

constexpr int kMaxQueueDepth = 4096;
constexpr int kMaxIoThreads = 256;

absl::Status CheckCapacity(size_t in_flight, size_t more, size_t capacity) {
  if (in_flight + more > capacity) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d reads submitted with %d in flight exceed the engine's depth %d", more, in_flight,
        capacity));
  }
  return absl::OkStatus();
}

class IoUringEngine final : public IoEngine {
 public:
  static absl::StatusOr<std::unique_ptr<IoEngine>> Create(int fd, int depth) {
    auto e = std::unique_ptr<IoUringEngine>(new IoUringEngine(fd, depth));
    const int rc = io_uring_queue_init(static_cast<unsigned>(depth), &e->ring_, 0);
    if (rc < 0) return ErrnoStatus(-rc, "io_uring_queue_init");
    e->initialized_ = true;
    return std::unique_ptr<IoEngine>(std::move(e));
  }
  ~IoUringEngine() override {
    if (!initialized_) return;
    // Reads still in flight write into their buffers: wait for them before
    // the ring (and the caller's buffers) go away.
    while (in_flight_ > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
      io_uring_cqe_seen(&ring_, cqe);
      --in_flight_;
    }
    io_uring_queue_exit(&ring_);
  }
  IoEngineKind kind() const override { return IoEngineKind::kIoUring; }
  size_t capacity() const override { return depth_; }
  size_t in_flight() const override { return in_flight_; }

  absl::Status Submit(absl::Span<const IoRead> reads) override {
    if (absl::Status s = CheckCapacity(in_flight_, reads.size(), depth_); !s.ok()) return s;
    for (const IoRead& r : reads) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) {  // the ring holds depth_ entries: cannot happen
        return absl::InternalError("io_uring submission queue full");
      }
      io_uring_prep_read(sqe, fd_, r.buffer, static_cast<unsigned>(r.length), r.offset);
      io_uring_sqe_set_data64(sqe, r.tag);
    }
    size_t left = reads.size();
    while (left > 0) {
      const int n = io_uring_submit(&ring_);
      if (n < 0) {
        if (n == -EINTR || n == -EAGAIN) continue;
        return ErrnoStatus(-n, "io_uring_submit");
      }
      left -= std::min<size_t>(left, static_cast<size_t>(n));
      in_flight_ += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  size_t Reap(absl::Span<IoCompletion> out, bool wait) override {
    size_t n = 0;
    while (n < out.size() && in_flight_ > 0) {
      io_uring_cqe* cqe = nullptr;
      int rc = (wait && n == 0) ? io_uring_wait_cqe(&ring_, &cqe) : io_uring_peek_cqe(&ring_, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0 || cqe == nullptr) break;
      out[n++] = {io_uring_cqe_get_data64(cqe), cqe->res};
      io_uring_cqe_seen(&ring_, cqe);
      --in_flight_;
    }
    return n;
  }

 private:
  IoUringEngine(int fd, int depth) : fd_(fd), depth_(static_cast<size_t>(depth)) {}
  int fd_;
  size_t depth_;
  size_t in_flight_ = 0;
  bool initialized_ = false;
  io_uring ring_{};
};

// A fixed-capacity FIFO (no allocation after construction).
template <typename T>
class Ring {
 public:
  explicit Ring(size_t capacity) : items_(capacity) {}
  bool empty() const { return count_ == 0; }
  void push_back(const T& v) {
    items_[(head_ + count_++) % items_.size()] = v;
  }
  T pop_front() {
    T v = items_[head_];
    head_ = (head_ + 1) % items_.size();
    --count_;
    return v;
  }

 private:
  std::vector<T> items_;
  size_t head_ = 0, count_ = 0;
};

// Threads pulling reads from a queue and pushing completions to another;
// both hold at most depth entries (reads in flight).
class PreadEngine final : public IoEngine {
 public:
  PreadEngine(int fd, int depth, int threads)
      : fd_(fd), depth_(static_cast<size_t>(depth)), queue_(depth_), done_(depth_) {
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { Work(); });
  }
  ~PreadEngine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;  // workers finish the queued reads first
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  IoEngineKind kind() const override { return IoEngineKind::kPread; }
  size_t capacity() const override { return depth_; }
  size_t in_flight() const override { return in_flight_; }

  absl::Status Submit(absl::Span<const IoRead> reads) override {
    if (absl::Status s = CheckCapacity(in_flight_, reads.size(), depth_); !s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const IoRead& r : reads) queue_.push_back(r);
    }
    in_flight_ += reads.size();
    if (reads.size() == 1) {
      work_cv_.notify_one();
    } else {
      work_cv_.notify_all();
    }
    return absl::OkStatus();
  }

  size_t Reap(absl::Span<IoCompletion> out, bool wait) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (wait && in_flight_ > 0) done_cv_.wait(lock, [&] { return !done_.empty(); });
    size_t n = 0;
    while (n < out.size() && !done_.empty()) out[n++] = done_.pop_front();
    in_flight_ -= n;
    return n;
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      const IoRead r = queue_.pop_front();
      lock.unlock();
      int64_t result;
      do {
        result = ::pread(fd_, r.buffer, r.length, static_cast<off_t>(r.offset));
      } while (result < 0 && errno == EINTR);
      if (result < 0) result = -errno;
      lock.lock();
      done_.push_back({r.tag, result});
      done_cv_.notify_one();
    }
  }

  int fd_;
  size_t depth_;
  size_t in_flight_ = 0;  // driver thread only
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  Ring<IoRead> queue_;
  Ring<IoCompletion> done_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<IoEngine>> MakeIoEngine(IoEngineKind kind, int fd,
                                                       int queue_depth, int io_threads) {
  if (queue_depth < 1 || queue_depth > kMaxQueueDepth) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "queue_depth must be in [1, %d], got %d", kMaxQueueDepth, queue_depth));
  }
  if (io_threads < 1 || io_threads > kMaxIoThreads) {
    return absl::InvalidArgumentError(
        absl::StrFormat("io_threads must be in [1, %d], got %d", kMaxIoThreads, io_threads));
  }
  if (kind != IoEngineKind::kPread) {
    absl::StatusOr<std::unique_ptr<IoEngine>> ring = IoUringEngine::Create(fd, queue_depth);
    if (ring.ok() || kind == IoEngineKind::kIoUring) return ring;
  }
  return std::unique_ptr<IoEngine>(new PreadEngine(fd, queue_depth, io_threads));
}

std::vector<IoEngineAvailability> AvailableIoEngines() {
  std::vector<IoEngineAvailability> out;
  io_uring ring{};
  const int rc = io_uring_queue_init(4, &ring, 0);
  if (rc == 0) io_uring_queue_exit(&ring);
  out.push_back({IoEngineKind::kIoUring, rc == 0,
                 rc == 0 ? "" : absl::StrFormat("io_uring_queue_init: %s", std::strerror(-rc))});
  out.push_back({IoEngineKind::kPread, true, ""});
  return out;
}

}  // namespace sparse_mlp::store
