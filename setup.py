"""Builds sparse_mlp's native extension with Bazel for pip (see pyproject.toml).

The extension is the Bazel target //bindings:sparse_mlp/_sparse_mlp.so,
compiled against the Python headers of Debian's python3-dev (WORKSPACE:
@python_headers); this copies it into the package as the setuptools
extension `sparse_mlp._sparse_mlp`, so the wheel carries a platform tag.
"""

import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
TARGET = "//bindings:sparse_mlp/_sparse_mlp.so"
# The headers the extension is compiled against (third_party/python_headers.BUILD).
HEADERS_VERSION = (3, 11)


class BazelBuildExt(build_ext):
    def build_extension(self, ext):
        if sys.version_info[:2] != HEADERS_VERSION:
            raise RuntimeError(
                f"sparse_mlp's extension is built against Python "
                f"{HEADERS_VERSION[0]}.{HEADERS_VERSION[1]} headers (Debian's python3-dev), but "
                f"pip runs under Python {sys.version.split()[0]} ({sys.executable}); use "
                f"Debian's /usr/bin/python3, e.g. in /usr/bin/python3 -m venv "
                f"--system-site-packages")
        bazel = shutil.which("bazel")
        if bazel is None:
            raise RuntimeError("bazel not found on PATH: run tools/setup.sh first")
        subprocess.run([bazel, "build", TARGET], cwd=ROOT, check=True)
        bin_dir = subprocess.run([bazel, "info", "bazel-bin"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
        built = os.path.join(bin_dir, "bindings", "sparse_mlp", "_sparse_mlp.so")
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(built, target)


setup(
    ext_modules=[Extension("sparse_mlp._sparse_mlp", sources=[])],
    cmdclass={"build_ext": BazelBuildExt},
)
