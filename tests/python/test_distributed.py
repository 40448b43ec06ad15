"""Tensor parallel over torch.distributed (gloo, loopback): two ranks, each
caching its neuron slice, sum to the single-process ModelCache on the same
masks for every layer over a random mask sequence (whole weights, pre-sliced
bfloat16 weights, per-rank bundle files); gate-first per rank; a failing
rank ends its peer with a clear error, not a hang. Ports are chosen free,
every process has a timeout."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch

import sparse_mlp
import sparse_mlp.distributed as tp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tp_worker  # noqa: E402


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(mode, out_dir, timeout=120):
    """Starts both ranks; returns [(returncode, stderr)] per rank."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "tp_worker.py"), str(r), "2",
                               str(port), mode, out_dir], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"mode {mode}: a rank did not finish within {timeout} s")
        results.append((p.returncode, err))
    return results


def single_process(dtype=torch.float32):
    layers = tp_worker.model(dtype)
    model = sparse_mlp.ModelCache(layers, active_fraction=0.5)
    return [model.step(l, masks[l], x.float()).numpy()
            for masks, x in tp_worker.masks_and_inputs() for l in range(tp_worker.LAYERS)]


class TensorParallelTest(unittest.TestCase):

    def check(self, mode, dtype=torch.float32):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as out:
            results = run_ranks(mode, out)
            for rank, (code, err) in enumerate(results):
                self.assertEqual(code, 0, f"mode {mode} rank {rank}:\n{err}")
            got = [np.load(os.path.join(out, f"rank{r}.npz")) for r in range(2)]
            self.assertEqual((int(got[0]["begin"]), int(got[0]["end"])), (0, 50))
            self.assertEqual((int(got[1]["begin"]), int(got[1]["end"])), (50, 101))
            want = single_process(dtype)
            for k, expected in enumerate(want):
                a, b = got[0][f"arr_{k}"], got[1][f"arr_{k}"]
                np.testing.assert_array_equal(a, b)  # every rank holds the sum
                scale = np.abs(expected).max() + 1e-30
                # float32 sums in another order (the module's stated bound).
                self.assertLess(np.abs(a - expected).max() / scale, 1e-5,
                                f"mode {mode} call {k} (step {k // 3}, layer {k % 3})")

    def test_whole_weights_sum_to_the_single_process_model(self):
        self.check("whole")

    def test_pre_sliced_bfloat16_weights(self):
        self.check("sliced", torch.bfloat16)

    def test_per_rank_bundle_files(self):
        self.check("file")

    def test_gate_first_per_rank(self):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as out:
            results = run_ranks("gate-first", out)
            for rank, (code, err) in enumerate(results):
                self.assertEqual(code, 0, f"rank {rank}:\n{err}")
            got = [np.load(os.path.join(out, f"rank{r}.npz")) for r in range(2)]
            # Reference: each rank's own top half of its slice by |silu(gate x)|.
            layers = tp_worker.model()
            k = 0
            for masks, x in tp_worker.masks_and_inputs():
                for l, (g, u, d) in enumerate(layers):
                    keep = torch.zeros(tp_worker.NEURONS, dtype=torch.bool)
                    for b, e in ((0, 50), (50, 101)):
                        m, _ = sparse_mlp.predictors.gate_first_mask(x, g[b:e],
                                                                     round(0.5 * (e - b)))
                        keep[b:e] = m.any(0)
                    h = torch.nn.functional.silu(x.double() @ g.double().t()) * (
                        x.double() @ u.double().t())
                    want = (h * keep.double()) @ d.double().t()
                    err = np.abs(got[0][f"arr_{k}"] - want.numpy()).max()
                    self.assertLess(err / float(want.abs().max()), 1e-5, f"call {k}")
                    k += 1

    def test_exact_gate_first_keeps_the_single_process_neurons(self):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as out:
            results = run_ranks("gate-first-exact", out)
            for rank, (code, err) in enumerate(results):
                self.assertEqual(code, 0, f"rank {rank}:\n{err}")
            got = [np.load(os.path.join(out, f"rank{r}.npz")) for r in range(2)]
        kept = np.concatenate([got[0]["kept"], got[1]["kept"]], axis=1)  # [calls, I]
        layers = tp_worker.model()
        modules = [sparse_mlp.LlamaSkipMLP.from_dense(g, u, d, 0.5) for g, u, d in layers]
        k = 0
        for masks, x in tp_worker.masks_and_inputs():
            for l, m in enumerate(modules):
                want = m(x)
                single = m._gate_first.mask().astype(bool)
                np.testing.assert_array_equal(kept[k], single, f"call {k}")
                err = np.abs(got[0][f"arr_{k}"] - want.numpy()).max()
                self.assertLess(err / float(want.abs().max()), 1e-5, f"call {k}")
                k += 1

    def test_a_failing_rank_ends_the_group_with_a_clear_error(self):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as out:
            start = time.monotonic()
            results = run_ranks("fail", out, timeout=90)
            elapsed = time.monotonic() - start
        (code0, err0), (code1, err1) = results
        self.assertNotEqual(code1, 0)
        self.assertIn("rank 1 fails on purpose", err1)
        self.assertNotEqual(code0, 0)
        self.assertIn("rank 0 of 2: the all-reduce of layer 1 failed", err0)
        self.assertLess(elapsed, 60)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, r"rank must be in \[0, 2\), got 2"):
            tp.neuron_range(10, 2, 2)
        with self.assertRaisesRegex(ValueError, "3 ranks need at least as many neurons"):
            tp.neuron_range(2, 0, 3)
        self.assertEqual([tp.neuron_range(101, r, 2) for r in range(2)], [(0, 50), (50, 101)])
        if not torch.distributed.is_initialized():
            with self.assertRaisesRegex(RuntimeError, "not initialized"):
                tp.TensorParallelModelCache(tp_worker.model())


if __name__ == "__main__":
    unittest.main()
