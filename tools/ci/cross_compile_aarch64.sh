#!/usr/bin/env bash
# Compiles every library source of the repository (not tests, benchmarks or
# bindings) for aarch64 with Debian's cross compiler, compile-only: the
# portable paths must build where no x86 intrinsic exists. Abseil's,
# liburing's and xxHash's headers are architecture-independent and come from
# the host's -dev packages; the cross compiler brings its own libc and
# OpenMP headers.
# Prints one line per file and "N passed, N failed" last; exits 1 on any
# failure. Needs g++-aarch64-linux-gnu (tools/setup.sh installs it).
set -uo pipefail
cd "$(dirname "$0")/../.."

cxx=${CROSS_CXX:-aarch64-linux-gnu-g++}
if ! command -v "$cxx" >/dev/null; then
  echo "cross: $cxx not found (install g++-aarch64-linux-gnu)"
  echo "0 passed, 1 failed"
  exit 1
fi
# Only Abseil from the host's include directory, not its libc headers.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
ln -s /usr/include/absl "$stage/absl"
# store/: liburing's and xxHash's headers (architecture-independent C).
ln -s /usr/include/liburing.h "$stage/liburing.h"
ln -s /usr/include/liburing "$stage/liburing"
ln -s /usr/include/xxhash.h "$stage/xxhash.h"

passed=0
failed=0
for src in $(git ls-files 'platform/*.cc' 'memory/*.cc' 'diff/*.cc' 'gather/*.cc' 'quant/*.cc' \
                  'store/*.cc' 'mlp/*.cc' 'cache/*.cc' 'flash/*.cc' 'step/*.cc'); do
  if "$cxx" -std=c++17 -O2 -fopenmp -Wall -Wextra -Wshadow -Werror -I. -isystem "$stage" \
       -c "$src" -o "$stage/out.o" 2>"$stage/err"; then
    passed=$((passed + 1))
    echo "cross: ok   $src"
  else
    failed=$((failed + 1))
    echo "cross: FAIL $src"
    cat "$stage/err"
  fi
done
echo "${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
