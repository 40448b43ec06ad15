"""``python3 -m sparse_mlp``: what a bug report needs about this installation."""

import os
import platform
import sys

import sparse_mlp
from sparse_mlp import _sparse_mlp


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report():
    """The report's lines: (field, value) pairs."""
    rows = [
        ("sparse_mlp", sparse_mlp.__version__),
        ("extension", _sparse_mlp.__file__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("cpu", f"{_cpu_model()}, {os.cpu_count()} logical cpus"),
        ("simd level", _sparse_mlp.simd_level()),
        ("cpu features", ", ".join(k for k, v in _sparse_mlp.cpu_features().items() if v)
         or "none"),
        ("openmp threads", str(_sparse_mlp.openmp_max_threads())),
    ]
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_THREAD_LIMIT", "OMP_DYNAMIC"):
        if var in os.environ:
            rows.append((var, os.environ[var]))
    rows.append(("i/o engines", ", ".join(
        f"{name} ({'available' if ok else why})" for name, ok, why in _sparse_mlp.io_engines())))
    try:
        import numpy
        rows.append(("numpy", numpy.__version__))
    except ImportError:
        rows.append(("numpy", "not installed"))
    try:
        import torch
        rows.append(("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)"))
    except ImportError:
        rows.append(("torch", "not installed"))
    return rows


def main():
    rows = report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
