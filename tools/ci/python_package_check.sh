#!/usr/bin/env bash
# The README's Python section as a new user runs it: a fresh virtual
# environment (Debian's python3 with its site packages, so it sees torch),
# the README's install line, `python3 -m sparse_mlp`, the README's Python
# snippet, then the Python tests and the llama2c example against the
# installed package, all from a scratch directory outside the source tree
# (the tests check that sparse_mlp is imported from the environment, not the
# tree). Prints "N passed, N failed" last.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
venv="$scratch/venv"
passed=0
failed=0
step() {
  local name=$1; shift
  echo "=== python-package: ${name}"
  if "$@"; then
    passed=$((passed + 1)); echo "=== python-package: ${name}: passed"
  else
    failed=$((failed + 1)); echo "=== python-package: ${name}: FAILED"
  fi
}

# The README's fenced blocks under "## Python": the first ```sh block (the
# install lines) and the first ```python block (the snippet).
readme_block() {
  /usr/bin/python3 - "$root/README.md" "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
print(re.search(r"```%s\n(.*?)```" % sys.argv[2], section, re.S).group(1), end="")
PY
}

install() {
  local lines
  lines=$(readme_block sh | sed "s#~/.venvs/sparse_mlp#${venv}#g") || return 1
  echo "$lines"
  (cd "$root" && bash -euo pipefail -c "$lines")
}
step "README install lines" install

outside() { (cd "$scratch" && "$@"); }
installed_python="$venv/bin/python"
step "README snippet" outside bash -c "readme_snippet=\$(cat); \"$installed_python\" -c \"\$readme_snippet\"" \
  < <(readme_block python)
step "imported from the environment" outside "$installed_python" -c "
import sparse_mlp, sys
assert sparse_mlp.__file__.startswith('$venv/'), sparse_mlp.__file__
print(sparse_mlp.__file__)"

# The tests and the example, copied with the data they read beside them.
mkdir -p "$scratch/tests/python" "$scratch/tests/data" "$scratch/examples"
cp "$root"/tests/python/*.py "$scratch/tests/python/"
cp "$root"/tests/data/stories260K.bin "$scratch/tests/data/"
cp "$root"/examples/llama2c_sparse.py "$scratch/examples/"
step "python tests" outside "$installed_python" -m unittest discover -s tests/python -p 'test_*.py'
step "llama2c example" outside "$installed_python" examples/llama2c_sparse.py --tokens 8 --fractions 1.0,0.5
step "wheel" bash -c "cd '$root' && '$installed_python' -m pip wheel --no-build-isolation --no-deps -w '$scratch/wheel' . >/dev/null && ls '$scratch'/wheel/sparse_mlp-*.whl"

echo "${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
