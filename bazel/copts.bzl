"""Compiler flags for every sparse_mlp target, kept in one place.

Warnings are errors for our own code (the Debian system headers stay quiet at
these levels). ISA flags are NOT here: SIMD kernels select their instruction
set per function with __attribute__((target(...))) and are only called after a
runtime CPU check, so no target is built for a CPU it may not run on.
"""

SPARSE_MLP_DEFAULT_COPTS = [
    "-Wall",
    "-Wextra",
    "-Wshadow",
    "-Wnon-virtual-dtor",
    "-Werror",
]

# Tests use gtest macros that trip -Wshadow and compare signed/unsigned freely.
SPARSE_MLP_TEST_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-sign-compare",
]

# Added to targets whose sources contain OpenMP pragmas; such a target must
# also depend on //third_party:openmp for the link flag.
SPARSE_MLP_OPENMP_COPTS = ["-fopenmp"]
