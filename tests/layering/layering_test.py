"""The house's rules (tests/layering/check_layers.py) on the sources Bazel
hands this test, and the forward's closure: //mlp:mlp_forward builds without
cache/, store/, flash/, step/ or bindings/."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_layers  # noqa: E402


def runfiles_root():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(os.path.dirname(here))  # .../sparse_mlp (the workspace)


class LayeringTest(unittest.TestCase):
    def test_rooms_include_only_downward(self):
        self.assertTrue(os.path.isfile(os.path.join(runfiles_root(), "mlp", "mlp_forward.h")))
        errors = []
        check_layers.check_cpp(runfiles_root(), errors)
        self.assertEqual(errors, [], "\n".join(errors))

    def test_python_package_imports_only_downward(self):
        package = os.path.join(runfiles_root(), "bindings", "sparse_mlp")
        self.assertTrue(os.path.isfile(os.path.join(package, "_convert.py")))
        errors = []
        check_layers.check_python(os.path.join(runfiles_root(), "bindings", "sparse_mlp"), errors)
        self.assertEqual(errors, [], "\n".join(errors))

    def test_the_forward_builds_alone(self):
        path = os.path.join(runfiles_root(), "tests", "layering", "forward_deps")
        labels = [l.strip() for l in open(path) if l.strip()]
        self.assertIn("//mlp:mlp_forward", labels)
        above = [l for l in labels
                 if l.startswith(("//cache", "//store", "//flash", "//step", "//bindings"))]
        self.assertEqual(above, [], f"//mlp:mlp_forward depends on {above}")


if __name__ == "__main__":
    unittest.main()
