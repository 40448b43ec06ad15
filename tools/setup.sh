#!/usr/bin/env bash
# Installs every Debian package that building, testing and benchmarking
# sparse_mlp needs. Idempotent: when everything is present it only checks
# (a dpkg query, well under a second) and touches nothing.
set -euo pipefail

packages=(
  bazel-bootstrap      # Bazel 4.2.3 (/usr/bin/bazel)
  bazel-rules-java     # required by Bazel's toolchain resolution, even for C++
  bazel-skylib
  g++
  clang                # the fuzz targets (--config=fuzz): clang 14,
  libclang-rt-14-dev   # libFuzzer and clang's sanitizer runtimes,
  libomp-dev           # and LLVM's OpenMP runtime for clang builds
  g++-aarch64-linux-gnu  # CI compiles the library for aarch64 (portable paths)
  libabsl-dev
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  libdlpack-dev        # DLPack header for the zero-copy Python bindings
  nlohmann-json3-dev   # the benchmarks' JSON output
  libopenblas-openmp-dev  # //bench:mlp baselines only (the OpenMP build: the
  libdnnl-dev             # pthread one fights OpenMP threads); oneDNN 2.6
  pybind11-dev
  python3-dev
  python3-numpy
  python3-torch
  python3-pip          # `python3 -m pip install .` (PEP 517, offline:
  python3-setuptools   # --no-build-isolation with Debian's setuptools
  python3-wheel        # and wheel)
  python3-venv
  python3-tqdm         # progress bars of the store converter
  python3-matplotlib   # benchmark plots (--plot)
  liburing-dev         # store/: the io_uring read engine
  libxxhash-dev        # store/: per-bundle checksums (XXH3)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing packages: ${missing[*]}" >&2
  echo "setup: installing them needs root; re-run as root (e.g. sudo tools/setup.sh)" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
