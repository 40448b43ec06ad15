// The store's reader against the device it reads from, in one run:
//
//   bazel run //bench:store                      # ~1-2 minutes (+ writing files once)
//   bazel run //bench:store -- --dir=/data/tmp   # where the bundle files live
//
// 1. The device's random-read curve (io_uring, O_DIRECT): request sizes
//    4 KiB - 1 MiB and each preset's bundle size, queue depths 1 - 64.
// 2. Per preset (llama-3.2-3b, llama-3-8b) and dtype (float32, bfloat16): a
//    bundle file of about --file_gb (written once into --dir, reused while
//    its header matches), then batches of random bundle sets (each batch
//    --batch_fraction of one random layer's neurons: the entering neurons of
//    a token at a = 0.5 and churn 0.2 by default) read with the io_uring
//    engine and the pread engine, interleaved, medians over --rounds: GB/s,
//    requests per second, mean request size, CPU seconds per GB read, and
//    the ratio to the device curve at the bundle size and the same depth.
// Goal: io_uring batch reads >= 85% of the device at the same request size
// and depth.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bundle_file.h"
#include "bench/device_curve.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/timing.h"
#include "memory/aligned_buffer.h"
#include "nlohmann/json.hpp"
#include "store/bundle_reader.h"

ABSL_FLAG(std::string, dir, "/var/tmp/sparse_mlp",
          "directory for the bundle files (on the device to measure; never tmpfs)");
ABSL_FLAG(std::string, presets, "llama-3.2-3b,llama-3-8b", "model shapes (bench/model_presets.h)");
ABSL_FLAG(std::string, dtypes, "float32,bfloat16", "element types");
ABSL_FLAG(double, file_gb, 1.0, "approximate size of each bundle file (whole layers)");
ABSL_FLAG(std::string, sizes, "4K,16K,32K,64K,256K,1M", "curve request sizes (plus bundle sizes)");
ABSL_FLAG(std::string, depths, "1,4,16,32,64", "curve queue depths");
ABSL_FLAG(int, queue_depth, 32, "the reader's queue depth");
ABSL_FLAG(int, io_threads, 4, "the pread engine's threads");
ABSL_FLAG(double, batch_fraction, 0.1, "neurons of one layer per batch");
ABSL_FLAG(double, seconds, 0.4, "time per curve point and per engine round");
ABSL_FLAG(int, rounds, 3, "interleaved rounds per engine (medians)");
ABSL_FLAG(size_t, alignment, 4096, "bundle alignment of the files written");
ABSL_FLAG(bool, verify, true, "verify each bundle's checksum on arrival");
ABSL_FLAG(std::string, json, "", "also write the results here");

namespace sparse_mlp::bench {
namespace {

void Die(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  std::exit(1);
}

std::vector<std::string> Split(const std::string& s) {
  return absl::StrSplit(s, ',', absl::SkipEmpty());
}

size_t ParseSize(const std::string& s) {
  size_t mult = 1;
  std::string n = s;
  if (!n.empty() && (n.back() == 'K' || n.back() == 'M')) {
    mult = n.back() == 'K' ? 1024 : 1024 * 1024;
    n.pop_back();
  }
  size_t v = 0;
  if (!absl::SimpleAtoi(n, &v) || v == 0) Die(absl::InvalidArgumentError("bad size " + s));
  return v * mult;
}

std::string SizeName(size_t bytes) {
  if (bytes % (1024 * 1024) == 0) return absl::StrFormat("%dM", bytes >> 20);
  if (bytes % 1024 == 0) return absl::StrFormat("%dK", bytes >> 10);
  return absl::StrFormat("%.1fK", bytes / 1024.0);
}

double CpuSeconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// The bench's file for a shape: about file_gb of whole layers.
std::string EnsureFile(const std::string& dir, const ModelPreset& p, DType dtype,
                       size_t alignment, double file_gb) {
  const size_t layer_bytes = 3 * p.hidden * p.intermediate * DTypeSize(dtype);
  const size_t layers = std::max<size_t>(1, static_cast<size_t>(file_gb * 1e9 / layer_bytes));
  const std::string path = absl::StrFormat("%s/bench_%s_%s_L%d_a%d.spmlb", dir, p.name,
                                           DTypeName(dtype), layers, alignment);
  if (absl::Status s = EnsureBundleFile(
          path, {dtype, p.hidden, p.intermediate, layers, true, 0, 0, std::nullopt}, alignment);
      !s.ok()) {
    Die(s);
  }
  return path;
}

// The curve at `depth` for a request of `bytes` (InterpolateLogSize).
double CurveAt(const std::map<std::pair<size_t, int>, CurvePoint>& curve,
               const std::vector<size_t>& sizes, double bytes, int depth) {
  std::map<size_t, double> at_depth;
  for (size_t size : sizes) at_depth[size] = curve.at({size, depth}).gbps;
  return InterpolateLogSize(at_depth, bytes);
}

struct BatchFigures {
  double gbps = 0;         // bundle payload read per second
  double read_gbps = 0;    // bytes the device returned per second (incl. padding)
  double requests_per_s = 0, mean_request = 0, cpu_s_per_gb = 0;
};

// Reads random batches for about `seconds`: each batch `fraction` of one
// random layer's neurons into one packed destination array.
BatchFigures ReadBatches(store::BundleReader& reader, double fraction, double seconds,
                         std::mt19937_64& rng, memory::AlignedBuffer& dst) {
  const store::BundleLayout& l = reader.layout();
  const size_t per_layer = l.shape().intermediate;
  const size_t k = std::max<size_t>(1, static_cast<size_t>(fraction * per_layer));
  std::vector<uint32_t> neurons(per_layer);
  std::vector<store::BundleRequest> q(k);
  const store::ReaderStats before = reader.stats();
  const double cpu0 = CpuSeconds();
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  uint64_t bytes = 0;
  while (elapsed < seconds) {
    const size_t layer = rng() % l.shape().layers;
    std::iota(neurons.begin(), neurons.end(), 0u);
    for (size_t j = 0; j < k; ++j) std::swap(neurons[j], neurons[j + rng() % (per_layer - j)]);
    std::sort(neurons.begin(), neurons.begin() + k);
    for (size_t j = 0; j < k; ++j) {
      q[j] = {layer, neurons[j], dst.data() + j * l.bundle_bytes()};
    }
    if (absl::Status s = reader.Read(q); !s.ok()) Die(s);
    bytes += k * l.bundle_bytes();
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const double cpu = CpuSeconds() - cpu0;
  const store::ReaderStats& after = reader.stats();
  const double requests = static_cast<double>(after.requests - before.requests);
  BatchFigures f;
  f.gbps = bytes / elapsed / 1e9;
  f.read_gbps = (after.bytes_read - before.bytes_read) / elapsed / 1e9;
  f.requests_per_s = requests / elapsed;
  f.mean_request = (after.bytes_read - before.bytes_read) / std::max(1.0, requests);
  f.cpu_s_per_gb = cpu / (bytes / 1e9);
  return f;
}

int Main() {
  RequireOptimizedBuild();
  const std::string dir = absl::GetFlag(FLAGS_dir);
  ::mkdir(dir.c_str(), 0755);
  if (IsMemoryFileSystem(dir)) {
    Die(absl::InvalidArgumentError(dir + " is on tmpfs: --dir must be on the device to measure"));
  }
  const size_t alignment = absl::GetFlag(FLAGS_alignment);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int depth = absl::GetFlag(FLAGS_queue_depth);
  std::vector<std::pair<const ModelPreset*, DType>> cases;
  for (const std::string& name : Split(absl::GetFlag(FLAGS_presets))) {
    const ModelPreset* p = FindModelPreset(name);
    if (p == nullptr) Die(absl::InvalidArgumentError("unknown preset " + name));
    for (const std::string& d : Split(absl::GetFlag(FLAGS_dtypes))) {
      absl::StatusOr<DType> dtype = ParseDType(d);
      if (!dtype.ok()) Die(dtype.status());
      cases.push_back({p, *dtype});
    }
  }
  std::vector<std::string> files;
  for (const auto& [p, dtype] : cases) {
    files.push_back(EnsureFile(dir, *p, dtype, alignment, absl::GetFlag(FLAGS_file_gb)));
  }
  std::printf("store benchmark: files in %s, reader depth %d, pread threads %d, batches of %.0f%% "
              "of a layer, %d interleaved rounds of %.1f s\n\n",
              dir.c_str(), depth, absl::GetFlag(FLAGS_io_threads),
              100 * absl::GetFlag(FLAGS_batch_fraction), absl::GetFlag(FLAGS_rounds), seconds);

  // 1. The curve, over the largest file (spans the most of the device).
  size_t largest = 0;
  uint64_t largest_bytes = 0;
  for (size_t k = 0; k < files.size(); ++k) {
    struct stat st;
    if (::stat(files[k].c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) > largest_bytes) {
      largest_bytes = st.st_size;
      largest = k;
    }
  }
  std::vector<size_t> sizes;
  for (const std::string& s : Split(absl::GetFlag(FLAGS_sizes))) sizes.push_back(ParseSize(s));
  for (const auto& [p, dtype] : cases) sizes.push_back(3 * p->hidden * DTypeSize(dtype));
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  std::vector<int> depths;
  for (const std::string& s : Split(absl::GetFlag(FLAGS_depths))) depths.push_back(std::stoi(s));
  if (std::find(depths.begin(), depths.end(), depth) == depths.end()) depths.push_back(depth);
  std::sort(depths.begin(), depths.end());
  std::printf("device random reads (io_uring, O_DIRECT, %s): GB/s\n%-8s", files[largest].c_str(),
              "size");
  for (int d : depths) std::printf(" %7s", absl::StrFormat("qd%d", d).c_str());
  std::printf("\n");
  std::map<std::pair<size_t, int>, CurvePoint> curve;
  std::mt19937_64 rng(2026);
  for (size_t size : sizes) {
    std::printf("%-8s", SizeName(size).c_str());
    for (int d : depths) {
      absl::StatusOr<CurvePoint> pt =
          MeasureRandomReads(files[largest], largest_bytes, size, d, seconds, rng());
      if (!pt.ok()) Die(pt.status());
      curve[{size, d}] = *pt;
      std::printf(" %7.3f", pt->gbps);
      std::fflush(stdout);
    }
    std::printf("\n");
  }

  // 2. Batch reads per file, engines interleaved.
  nlohmann::json json;
  std::printf("\nbatch reads of random bundle sets (%d in flight):\n", depth);
  std::printf("GB/s: bundle payload; x_device: bytes read per second over the curve at the mean "
              "request size and the same depth\n");
  std::printf("%-13s %-9s %-8s %7s %9s %9s %9s %9s %9s\n", "preset", "dtype", "engine", "bundle",
              "GB/s", "req/s", "mean_req", "cpu_s/GB", "x_device");
  std::vector<std::string> goals, guide;
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& [p, dtype] = cases[c];
    std::vector<std::unique_ptr<store::BundleReader>> readers;
    for (store::IoEngineKind e : {store::IoEngineKind::kIoUring, store::IoEngineKind::kPread}) {
      store::ReaderOptions o;
      o.engine = e;
      o.queue_depth = depth;
      o.io_threads = absl::GetFlag(FLAGS_io_threads);
      o.verify_checksums = absl::GetFlag(FLAGS_verify);
      absl::StatusOr<std::unique_ptr<store::BundleReader>> r = store::BundleReader::Open(files[c], o);
      if (!r.ok()) Die(r.status());
      if (!(*r)->direct_io()) Die(absl::InternalError(files[c] + ": O_DIRECT refused"));
      readers.push_back(*std::move(r));
    }
    const store::BundleLayout& l = readers[0]->layout();
    const size_t k = std::max<size_t>(1, absl::GetFlag(FLAGS_batch_fraction) * l.shape().intermediate);
    memory::AlignedBuffer dst = *memory::AlignedBuffer::Allocate(k * l.bundle_bytes(), 4096);
    std::vector<std::vector<BatchFigures>> rounds(2);
    for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
      for (size_t e = 0; e < 2; ++e) {
        rounds[e].push_back(
            ReadBatches(*readers[e], absl::GetFlag(FLAGS_batch_fraction), seconds, rng, dst));
      }
    }
    double ratio[2], dev_gbps = 0;
    for (size_t e = 0; e < 2; ++e) {
      auto median = [&](double BatchFigures::*f) {
        std::vector<double> v;
        for (const BatchFigures& b : rounds[e]) v.push_back(b.*f);
        return Median(v);
      };
      BatchFigures m{median(&BatchFigures::gbps), median(&BatchFigures::read_gbps),
                     median(&BatchFigures::requests_per_s), median(&BatchFigures::mean_request),
                     median(&BatchFigures::cpu_s_per_gb)};
      // Against the device at the reader's own mean request size (merged
      // runs of adjacent bundles make some requests larger than a bundle).
      const double device = CurveAt(curve, sizes, m.mean_request, depth);
      ratio[e] = m.read_gbps / device;
      if (e == 0) dev_gbps = device;
      const char* engine = store::IoEngineName(readers[e]->engine());
      std::printf("%-13s %-9s %-8s %7s %9.3f %9.0f %9s %9.3f %9.2f\n", p->name, DTypeName(dtype),
                  engine, SizeName(l.bundle_bytes()).c_str(), m.gbps, m.requests_per_s,
                  SizeName(static_cast<size_t>(m.mean_request)).c_str(), m.cpu_s_per_gb, ratio[e]);
      json["batches"].push_back({{"preset", p->name}, {"dtype", DTypeName(dtype)},
                                 {"engine", engine}, {"bundle_bytes", l.bundle_bytes()},
                                 {"gbps", m.gbps}, {"requests_per_s", m.requests_per_s},
                                 {"mean_request_bytes", m.mean_request},
                                 {"cpu_s_per_gb", m.cpu_s_per_gb},
                                 {"read_gbps", m.read_gbps}, {"device_gbps", device}});
    }
    goals.push_back(absl::StrFormat(
        "  %s %s: io_uring %.2fx the device at its mean request size, depth %d (%.3f GB/s; "
        "pread engine %.2fx) %s",
        p->name, DTypeName(dtype), ratio[0], depth, dev_gbps,
        ratio[1], ratio[0] >= 0.85 ? "met" : "MISSED"));
  }
  std::printf("\ngoal: batch reads >= 0.85x the device at the same request size and depth\n");
  for (const std::string& g : goals) std::printf("%s\n", g.c_str());
  // What to pick, from the curve.
  auto at = [&](size_t size, int d) { return curve.count({size, d}) ? curve[{size, d}].gbps : 0; };
  const size_t bundle0 = 3 * cases[0].first->hidden * DTypeSize(cases[0].second);
  std::printf("\nwhat to pick (this device):\n");
  std::string per_depth;
  for (int d : depths) {
    per_depth += absl::StrFormat("%s%.2f at depth %d", per_depth.empty() ? "" : ", ",
                                 at(bundle0, d), d);
  }
  std::printf("  queue depth: a %s bundle reads at %s GB/s: keep many reads in flight (the "
              "reader's queue_depth), never one at a time\n",
              SizeName(bundle0).c_str(), per_depth.c_str());
  std::printf("  engine: io_uring; the pread pool (%d threads) is the fallback where io_uring is "
              "not allowed\n",
              absl::GetFlag(FLAGS_io_threads));
  if (!absl::GetFlag(FLAGS_json).empty()) {
    for (const auto& [key, pt] : curve) {
      json["curve"].push_back({{"request_bytes", key.first}, {"depth", key.second},
                               {"gbps", pt.gbps}, {"requests_per_s", pt.requests_per_s}});
    }
    std::ofstream(absl::GetFlag(FLAGS_json)) << json.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Bundle reads against the device's random-read curve");
  absl::ParseCommandLine(argc, argv);
  return sparse_mlp::bench::Main();
}
