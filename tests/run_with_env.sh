#!/usr/bin/env bash
# Runs a test binary (first argument) with the environment the sh_test that
# wraps it sets (its `env` attribute), e.g. an OpenMP setting. Bazel's test
# variables (XML_OUTPUT_FILE, TEST_TMPDIR, sharding) pass through.
set -euo pipefail
exec "$@"
