#include "bench/process_stats.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <vector>

namespace sparse_mlp::bench {

size_t ResidentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    size_t kb;
    if (std::sscanf(line.c_str(), "VmRSS: %zu kB", &kb) == 1) return kb * 1024;
  }
  return 0;
}

uint64_t DeviceReadBytes() {
  std::ifstream io("/proc/self/io");
  std::string line;
  while (std::getline(io, line)) {
    unsigned long long v;
    if (std::sscanf(line.c_str(), "read_bytes: %llu", &v) == 1) return v;
  }
  return 0;
}

uint64_t PageCacheBytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st;
  uint64_t cached = 0;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    void* map = ::mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map != MAP_FAILED) {
      const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
      std::vector<unsigned char> in((st.st_size + page - 1) / page);
      if (::mincore(map, st.st_size, in.data()) == 0) {
        for (unsigned char v : in) cached += (v & 1) ? page : 0;
      }
      ::munmap(map, st.st_size);
    }
  }
  ::close(fd);
  return cached;
}

std::string CpuName() {
  std::FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return "unknown";
  char line[512];
  std::string name = "unknown";
  while (std::fgets(line, sizeof line, f) != nullptr) {
    const std::string l(line);
    if (l.rfind("model name", 0) == 0 && l.find(':') != std::string::npos) {
      name = l.substr(l.find(':') + 2);
      if (!name.empty() && name.back() == '\n') name.pop_back();
      break;
    }
  }
  std::fclose(f);
  return name;
}

}  // namespace sparse_mlp::bench
