"""examples/tensor_parallel.py launched as users launch it (torch's
launcher, 2 processes, loopback), small sizes, with a timeout."""

import os
import socket
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorParallelExampleTest(unittest.TestCase):

    def test_two_ranks_via_the_launcher(self):
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--redirects", "1", "--tee", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), os.path.join(HERE, "tensor_parallel.py"),
               "--layers", "2", "--hidden", "64", "--intermediate", "256", "--tokens", "4",
               "--timeout", "30"]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        lines = [l for l in run.stdout.splitlines() if l.startswith("[default0]:")]
        self.assertTrue(any("2 ranks (gloo, loopback)" in l for l in lines), run.stdout)
        rows = [l.split(":", 1)[1].split() for l in lines]
        rows = [r for r in rows if len(r) == 7 and r[0].isdigit()]  # the per-rank table
        self.assertEqual([r[:2] for r in rows], [["0", "128"], ["1", "128"]])


if __name__ == "__main__":
    unittest.main()
