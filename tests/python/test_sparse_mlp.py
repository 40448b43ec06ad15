"""sparse_mlp Python module: the seed API, views, LlamaSkipMLP, bad input.

Runs under `bazel test //tests/python:sparse_mlp_test` with Debian's torch.
Random sequences use fixed seeds; assertion messages name the step.
"""

import gc
import os
import struct
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import sparse_mlp
from sparse_mlp import LlamaSkipMLP, WeightCache, WeightCacheOptimized, mlp_forward

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Relative error (in norm) allowed between the sparse output and the masked
# dense output computed in the same dtype: they differ only in summation
# order and in the rounding of intermediate results.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def assert_close_in_norm(test, out, expected, tolerance, where):
    out, expected = out.float(), expected.float()
    scale = float(expected.norm())
    error = float((out - expected).norm())
    if scale == 0.0:
        test.assertEqual(error, 0.0, where)
    else:
        test.assertLessEqual(error / scale, tolerance, where)


def dense_masked(x, gate, up, down, mask):
    """The dense MLP with inactive neurons zeroed (the reference), in the
    weights' dtype; float16 in float32 (torch 1.13 has no CPU float16 GEMM)."""
    if gate.dtype == torch.float16:
        x, gate, up, down = x.float(), gate.float(), up.float(), down.float()
    hidden = F.silu(F.linear(x, gate)) * F.linear(x, up)
    return F.linear(hidden * mask.to(hidden.dtype), down)


def union(mask):
    return mask if mask.dim() == 1 else mask.any(dim=0)


def random_weights(gen, i, h, dtype):
    return (torch.randn(i, h, generator=gen).to(dtype),
            torch.randn(i, h, generator=gen).to(dtype),
            torch.randn(h, i, generator=gen).to(dtype))


def mask_sequence(gen, i, steps):
    """Growth, shrink, empty, full, repeats and 2-D batches, in random order."""
    mask = torch.rand(i, generator=gen) < 0.05
    for step in range(steps):
        kind = step % 7
        if kind == 0:
            mask = mask | (torch.rand(i, generator=gen) < 0.5)   # growth
        elif kind == 1:
            mask = mask & (torch.rand(i, generator=gen) < 0.3)   # shrink
        elif kind == 2:
            mask = torch.zeros(i, dtype=torch.bool)              # empty
        elif kind == 3:
            mask = torch.ones(i, dtype=torch.bool)               # full
        elif kind == 4:
            pass                                                 # repeat
        elif kind == 5:
            yield torch.rand(4, i, generator=gen) < 0.2          # [tokens, I]
            continue
        else:
            mask = torch.rand(i, generator=gen) < 0.4
        yield mask.clone()


class SeedApiTest(unittest.TestCase):

    def test_round_trip_all_dtypes(self):
        for dtype in DTYPES:
            gen = torch.Generator().manual_seed(1)
            i, h = 96, 40
            gate, up, down = random_weights(gen, i, h, dtype)
            first = torch.rand(i, generator=gen) < 0.1
            cache = WeightCacheOptimized(first, h, gate, up, down)
            mlp = LlamaSkipMLP.from_dense(gate, up, down)
            x = torch.randn(3, h, generator=gen).to(dtype)
            for step, mask in enumerate(mask_sequence(gen, i, 40)):
                where = f"{dtype}, step {step}, mask shape {tuple(mask.shape)}"
                cache.update_active_weights(mask)
                active = union(mask)
                self.assertEqual(cache.get_num_active(), int(active.sum()), where)
                idx = cache.active_indices()
                self.assertTrue(torch.equal(torch.sort(idx).values, active.nonzero().squeeze(1)), where)
                self.assertTrue(torch.equal(cache.get_concat_weight(),
                                            torch.cat([gate[idx], up[idx]])), where)
                self.assertTrue(torch.equal(cache.get_active_down_weight(), down[:, idx]), where)
                out = mlp(x, mask)
                assert_close_in_norm(self, out, dense_masked(x, gate, up, down, active),
                                     TOLERANCE[dtype], where)

    def test_concat_weight_is_zero_copy_while_the_count_stays(self):
        for dtype in DTYPES:
            gen = torch.Generator().manual_seed(3)
            i, h, k = 120, 24, 30
            gate, up, down = random_weights(gen, i, h, dtype)
            cache = WeightCacheOptimized(torch.rand(i, generator=gen) < 0.25, h, gate, up, down)
            cache.update_topk(torch.randn(i, generator=gen), k)
            first = cache.get_concat_weight()
            for step in range(12):  # top-k masks: A constant
                where = f"{dtype} step {step}"
                cache.update_topk(torch.randn(i, generator=gen), k)
                concat = cache.get_concat_weight()
                idx = cache.active_indices()
                self.assertEqual(concat.data_ptr(), first.data_ptr(), where)  # no copy
                self.assertTrue(torch.equal(concat, torch.cat([gate[idx], up[idx]])), where)
                # The view taken before shows the new rows too.
                self.assertTrue(torch.equal(first, concat), where)
            # A varying, growth beyond the first capacity, empty and full.
            for step, k2 in enumerate((10, 90, 0, i, 45)):
                cache.update_topk(torch.randn(i, generator=gen), k2)
                idx = cache.active_indices()
                self.assertTrue(torch.equal(cache.get_concat_weight(),
                                            torch.cat([gate[idx], up[idx]])), f"{dtype} k={k2}")
                cache.verify()
            plain = WeightCacheOptimized(torch.ones(i, dtype=torch.bool), h, gate, up, down,
                                         concat_gate_up=False)
            self.assertTrue(torch.equal(plain.get_concat_weight(), torch.cat([gate, up])))

    def test_all_true_mask_equals_dense_mlp(self):
        gen = torch.Generator().manual_seed(2)
        gate, up, down = random_weights(gen, 80, 24, torch.float32)
        mlp = LlamaSkipMLP.from_dense(gate, up, down)
        x = torch.randn(5, 24, generator=gen)
        # The native forward sums in another order than torch: compare both
        # with float64, in norm.
        dense = F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
        exact = torch_mlp(x, gate, up, down)
        assert_close_in_norm(self, mlp(x, torch.ones(80, dtype=torch.bool)), exact, 1e-6, "native")
        assert_close_in_norm(self, dense, exact, 1e-6, "torch")

    def test_module_keeps_each_weight_once(self):
        gen = torch.Generator().manual_seed(12)
        i, h = 256, 32
        gate, up, down = random_weights(gen, i, h, torch.float32)
        mlp = LlamaSkipMLP.from_dense(gate, up, down, sparsity=0.5)
        x = torch.randn(2, h, generator=gen)
        mask = torch.rand(i, generator=gen) < 0.5
        out = mlp(x, mask)
        assert_close_in_norm(self, out, torch_mlp(x, gate, up, down, mask=mask), 1e-6, "native")
        # The module shares the caller's tensors (never swaps them); the
        # cache reads gate and up in place and holds only its transposed
        # copy of down besides the packed rows.
        for name, w in (("gate", gate), ("up", up), ("down", down)):
            self.assertEqual(getattr(mlp, f"{name}_proj").weight.data_ptr(), w.data_ptr(), name)
        cache = mlp.weight_cache
        packed = cache.capacity * h * 4 * 3
        self.assertLess(cache.memory_bytes, packed + i * h * 4 + (1 << 20),
                        "the cache holds a copy of gate or up")
        mlp.reset_cache()
        self.assertTrue(torch.equal(mlp(x, mask), out))  # rebuilt from the weights

    def test_from_dense_sees_the_callers_edits_after_reset(self):
        gen = torch.Generator().manual_seed(14)
        i, h = 64, 16
        gate, up, down = random_weights(gen, i, h, torch.float32)
        mlp = LlamaSkipMLP.from_dense(gate, up, down)
        x = torch.randn(1, h, generator=gen)
        mask = torch.ones(i, dtype=torch.bool)
        mlp(x, mask)
        down.mul_(2)  # the caller edits its own tensor
        mlp.reset_cache()
        # Close in norm: the native and torch sums run in different orders
        # (and torch's own GEMM differs between CPUs).
        assert_close_in_norm(self, mlp(x, mask), dense_masked(x, gate, up, down, mask),
                             TOLERANCE[torch.float32], "after reset_cache")

    def test_transpose_function(self):
        from sparse_mlp import _sparse_mlp
        gen = torch.Generator().manual_seed(13)
        for dtype in DTYPES:
            src = torch.randn(37, 70, generator=gen).to(dtype)
            dst = torch.empty(70, 37, dtype=dtype)
            _sparse_mlp.transpose(src, dst, 2)
            self.assertTrue(torch.equal(dst, src.t()), str(dtype))
        with self.assertRaisesRegex(ValueError, "dst must be"):
            _sparse_mlp.transpose(src, torch.empty(37, 70, dtype=dtype))

    def test_reference_path_matches_cache_path(self):
        gen = torch.Generator().manual_seed(3)
        gate, up, down = random_weights(gen, 70, 20, torch.float32)
        cached = LlamaSkipMLP.from_dense(gate, up, down, use_optimized_cache=True)
        plain = LlamaSkipMLP.from_dense(gate, up, down, use_optimized_cache=False)
        x = torch.randn(2, 20, generator=gen)
        for step, mask in enumerate(mask_sequence(gen, 70, 20)):
            assert_close_in_norm(self, cached(x, mask), plain(x, mask), TOLERANCE[torch.float32],
                                 f"step {step}")

    def test_predictor_supplies_the_mask(self):
        gen = torch.Generator().manual_seed(4)
        gate, up, down = random_weights(gen, 50, 16, torch.float32)
        mlp = LlamaSkipMLP.from_dense(gate, up, down,
                                      predictor=lambda x: F.linear(x, gate).abs().mean(0) > 0.5)
        x = torch.randn(1, 16, generator=gen)
        active = F.linear(x, gate).abs().mean(0) > 0.5
        torch.testing.assert_close(mlp(x), dense_masked(x, gate, up, down, active))
        # No mask and no predictor: the gate-first default (tests/python/test_masks.py).
        self.assertEqual(LlamaSkipMLP.from_dense(gate, up, down).mask_source, "gate-first")

    def test_seed_constructor_signature(self):
        mlp = LlamaSkipMLP(32, 64, 0.5, use_optimized_cache=True)
        x = torch.randn(1, 32)
        mask = torch.zeros(64, dtype=torch.bool)
        mask[::3] = True
        w = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        torch.testing.assert_close(mlp(x, mask), dense_masked(x, *w, mask))


class RealModelTest(unittest.TestCase):
    """The MLPs of a trained tiny LLaMA (tests/data/stories260K.bin)."""

    def load_layers(self):
        path = os.path.join(os.path.dirname(__file__), "..", "data", "stories260K.bin")
        with open(path, "rb") as f:
            data = f.read()
        dim, hidden, layers, heads, kv_heads, vocab, _ = struct.unpack("7i", data[:28])
        floats = np.frombuffer(data, dtype=np.float32, offset=28)
        kv_dim = dim * kv_heads // heads
        offset = vocab * dim + layers * (dim + 2 * dim * dim + 2 * kv_dim * dim + dim)
        w1 = floats[offset:offset + layers * hidden * dim].reshape(layers, hidden, dim)
        offset += layers * hidden * dim
        w2 = floats[offset:offset + layers * dim * hidden].reshape(layers, dim, hidden)
        offset += layers * dim * hidden
        w3 = floats[offset:offset + layers * hidden * dim].reshape(layers, hidden, dim)
        return dim, hidden, [(torch.from_numpy(w1[l].copy()), torch.from_numpy(w3[l].copy()),
                              torch.from_numpy(w2[l].copy())) for l in range(layers)]

    def test_sparse_mlp_on_real_weights(self):
        dim, hidden, layers = self.load_layers()
        self.assertEqual((dim, hidden), (64, 172))
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(4, dim, generator=gen)
        for layer, (gate, up, down) in enumerate(layers):
            mlp = LlamaSkipMLP.from_dense(gate, up, down)
            dense = F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
            torch.testing.assert_close(mlp(x, torch.ones(hidden, dtype=torch.bool)), dense)
            # A magnitude "oracle" predictor keeping half the neurons: the
            # sparse output is the masked dense output, and close to dense.
            scores = (F.silu(F.linear(x, gate)) * F.linear(x, up)).abs().amax(0)
            mask = scores >= scores.median()
            out = mlp(x, mask)
            torch.testing.assert_close(out, dense_masked(x, gate, up, down, mask))
            relative = (out - dense).norm() / dense.norm()
            self.assertLess(float(relative), 0.5, f"layer {layer}")


class ViewLifetimeTest(unittest.TestCase):

    def test_views_survive_updates_growth_and_deletion(self):
        gen = torch.Generator().manual_seed(6)
        gate, up, down = random_weights(gen, 200, 8, torch.float32)
        mask = torch.zeros(200, dtype=torch.bool)
        mask[:3] = True
        cache = WeightCache(mask, gate, up, down)
        early = cache.up()
        snapshot = early.clone()
        cache.update(torch.ones(200, dtype=torch.bool))  # grows far beyond 3
        self.assertEqual(cache.num_active, 200)
        self.assertTrue(cache.last_update["grew"])
        idx = cache.active_indices()
        self.assertTrue(torch.equal(cache.up(), up[idx]), "growth lost neurons")
        late = cache.down_hidden_major()
        late_snapshot = late.clone()
        del cache
        gc.collect()
        # Both views still point into live memory (ASan-built runs would flag
        # a use after free); the old one kept its pre-growth rows.
        self.assertTrue(torch.equal(early, snapshot))
        self.assertTrue(torch.equal(late, late_snapshot))
        self.assertTrue(torch.equal(late, down[:, idx]))

    def test_zero_copy_views(self):
        gen = torch.Generator().manual_seed(7)
        gate, up, down = random_weights(gen, 40, 8, torch.float32)
        cache = WeightCache(torch.ones(40, dtype=torch.bool), gate, up, down)
        self.assertEqual(cache.gate().data_ptr(), cache.gate().data_ptr())
        self.assertEqual(cache.down_hidden_major().stride(), (1, 8))
        self.assertEqual(cache.down_hidden_major().data_ptr(), cache.down_rows().data_ptr())

    def test_numpy_inputs_and_outputs(self):
        rng = np.random.default_rng(8)
        gate = rng.standard_normal((30, 6), dtype=np.float32)
        up = rng.standard_normal((30, 6), dtype=np.float32)
        down = rng.standard_normal((6, 30), dtype=np.float32)
        mask = rng.random(30) < 0.5
        cache = WeightCache(mask, gate, up, down)
        idx = cache.active_indices()
        np.testing.assert_array_equal(cache.gate(), gate[idx])
        np.testing.assert_array_equal(cache.down_hidden_major(), down[:, idx])

    def test_gateless_tolerance_threads_and_footprint(self):
        gen = torch.Generator().manual_seed(9)
        _, up, down = random_weights(gen, 120, 10, torch.float16)
        mask = torch.rand(120, generator=gen) < 0.5
        cache = WeightCache(mask, None, up, down, num_threads=2, tolerance=4)
        self.assertFalse(cache.has_gate)
        with self.assertRaisesRegex(ValueError, "no gate"):
            cache.gate()
        flipped = mask.clone()
        flipped[:2] = ~flipped[:2]
        cache.update(flipped)
        self.assertTrue(cache.last_update["skipped"])
        self.assertEqual(cache.lag, 2)
        cache.catch_up()
        self.assertEqual(cache.lag, 0)
        self.assertTrue(torch.equal(cache.up(), up[cache.active_indices()]))
        self.assertGreater(cache.memory_bytes, 120 * 10 * 2)  # at least its down copy
        self.assertEqual(cache.num_threads, 2)

    def test_update_from_indices(self):
        gen = torch.Generator().manual_seed(14)
        gate, up, down = random_weights(gen, 90, 8, torch.float32)
        cache = WeightCache(torch.zeros(90, dtype=torch.bool), gate, up, down)
        top = torch.topk(torch.rand(90, generator=gen), 30).indices.sort().values
        cache.update_indices(top)
        self.assertTrue(torch.equal(torch.sort(cache.active_indices()).values, top))
        self.assertTrue(torch.equal(cache.up(), up[cache.active_indices()]))
        cache.update_indices(np.array([1, 5, 89]))
        self.assertEqual(cache.num_active, 3)

    def test_interleaved_layout(self):
        gen = torch.Generator().manual_seed(10)
        gate, up, down = random_weights(gen, 50, 12, torch.bfloat16)
        cache = WeightCache(torch.rand(50, generator=gen) < 0.5, gate, up, down,
                            layout="interleaved")
        idx = cache.active_indices()
        fused = cache.gate_up_interleaved()
        self.assertTrue(torch.equal(fused, torch.cat([gate[idx], up[idx]], dim=1)))

    def test_fused_layout_views_are_strided_and_exact(self):
        gen = torch.Generator().manual_seed(12)
        gate, up, down = random_weights(gen, 60, 10, torch.float32)
        cache = WeightCache(torch.rand(60, generator=gen) < 0.5, gate, up, down,
                            layout="fused")
        for _ in range(5):
            cache.update(torch.rand(60, generator=gen) < 0.4)
            idx = cache.active_indices()
            self.assertEqual(cache.up().stride(), (30, 1))
            self.assertTrue(torch.equal(cache.gate(), gate[idx]))
            self.assertTrue(torch.equal(cache.up(), up[idx]))
            self.assertTrue(torch.equal(cache.down_rows(), down.t()[idx]))
            self.assertTrue(torch.equal(cache.down_hidden_major(), down[:, idx]))
            self.assertTrue(torch.equal(cache.gate_up_interleaved(),
                                        torch.cat([gate[idx], up[idx]], dim=1)))


class ReliabilityTest(unittest.TestCase):
    """Concurrent use, read-only sources, argument ranges, one rule for
    masks, writes through views."""

    def test_two_threads_updating_one_cache(self):
        import threading
        i, h = 4096, 256
        gen = torch.Generator().manual_seed(20)
        gate, up, down = random_weights(gen, i, h, torch.float32)
        c = WeightCache(torch.rand(i, generator=gen) < 0.5, gate, up, down)
        errors = []

        def work(seed):
            g = torch.Generator().manual_seed(seed)
            try:
                for _ in range(400):
                    c.update(torch.rand(i, generator=g) < torch.rand((), generator=g).item())
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        c.verify()
        idx = c.active_indices()
        self.assertTrue(torch.equal(c.up(), up[idx]))
        self.assertTrue(torch.equal(c.down_hidden_major(), down[:, idx]))

    def test_two_caches_update_in_parallel_threads(self):
        import threading
        gen = torch.Generator().manual_seed(21)
        caches = []
        for _ in range(2):
            gate, up, down = random_weights(gen, 1024, 64, torch.float32)
            caches.append((WeightCache(torch.zeros(1024, dtype=torch.bool), gate, up, down),
                           up))

        def work(cache, seed):
            g = torch.Generator().manual_seed(seed)
            for _ in range(200):
                cache.update(torch.rand(1024, generator=g) < 0.3)

        threads = [threading.Thread(target=work, args=(c, k)) for k, (c, _) in enumerate(caches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for cache, up in caches:
            cache.verify()
            self.assertTrue(torch.equal(cache.up(), up[cache.active_indices()]))

    def test_thread_counts_beyond_the_limit_are_refused(self):
        gen = torch.Generator().manual_seed(22)
        gate, up, down = random_weights(gen, 64, 8, torch.float32)
        mask = torch.rand(64, generator=gen) < 0.5
        c = WeightCache(mask, gate, up, down)
        for n in (10**6, 2**31 - 1, 2**31, 2**64, 0, -1):
            with self.assertRaisesRegex(ValueError, rf"num_threads must be in \[1, 1024\], got {n}"):
                c.num_threads = n
            with self.assertRaisesRegex(ValueError, rf"num_threads must be in \[1, 1024\], got {n}"):
                WeightCache(mask, gate, up, down, num_threads=n)
        with self.assertRaisesRegex(TypeError, "num_threads must be an int, got float"):
            c.num_threads = 2.0
        self.assertEqual(c.num_threads, 1)
        c.update(torch.ones(64, dtype=torch.bool))  # still usable
        c.verify()

    def test_read_only_and_memory_mapped_numpy_sources(self):
        import ctypes
        import tempfile
        rng = np.random.default_rng(23)
        i, h = 512, 96  # 192 KiB per matrix: several pages to fault in
        arrays = {"gate": rng.standard_normal((i, h), dtype=np.float32),
                  "up": rng.standard_normal((i, h), dtype=np.float32),
                  "down": rng.standard_normal((h, i), dtype=np.float32)}
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as tmp:
            paths = {}
            for name, a in arrays.items():
                paths[name] = os.path.join(tmp, f"{name}.npy")
                np.save(paths[name], a)
                # Drop the file's pages from the page cache (clean after
                # fsync), so a borrowed map starts non-resident.
                fd = os.open(paths[name], os.O_RDONLY)
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            mapped = {n: np.load(p, mmap_mode="r") for n, p in paths.items()}
            for a in mapped.values():
                self.assertFalse(a.flags.writeable)
            # How much of the borrowed up array is resident before the cache
            # reads it (mincore); printed, as tmpfs cannot drop pages.
            libc = ctypes.CDLL(None, use_errno=True)
            page = os.sysconf("SC_PAGE_SIZE")
            addr = mapped["up"].ctypes.data // page * page
            length = mapped["up"].ctypes.data + mapped["up"].nbytes - addr
            vec = (ctypes.c_ubyte * ((length + page - 1) // page))()
            if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) == 0:
                resident = sum(v & 1 for v in vec)
                print(f"borrowed up: {resident} of {len(vec)} pages resident before use")
            mask = rng.random(i) < 0.4
            for copy_sources in (False, True):
                c = WeightCache(mask, mapped["gate"], mapped["up"], mapped["down"],
                                copy_sources=copy_sources)
                for step in range(5):
                    mask = rng.random(i) < 0.2 + 0.15 * step
                    c.update(mask)
                    idx = c.active_indices()
                    np.testing.assert_array_equal(c.gate(), arrays["gate"][idx])
                    np.testing.assert_array_equal(c.up(), arrays["up"][idx])
                    np.testing.assert_array_equal(c.down_hidden_major(), arrays["down"][:, idx])
                c.verify()
                del c
            # Read-only sources are never written: an output must be writable.
            c = WeightCache(mask, mapped["gate"], mapped["up"], mapped["down"])
            with self.assertRaisesRegex(ValueError, "out must be writable"):
                c._native.copy_concatenated_gate_up(
                    np.load(paths["up"], mmap_mode="r")[: 2 * c.num_active])
            del c, mapped

    def test_messages_name_the_argument_value_and_range(self):
        gen = torch.Generator().manual_seed(24)
        gate, up, down = random_weights(gen, 64, 20, torch.float32)
        mask = torch.rand(64, generator=gen) < 0.5
        cases = [
            (lambda: WeightCache(torch.zeros(0, dtype=torch.bool), torch.zeros(0, 20),
                                 torch.zeros(0, 20), torch.zeros(20, 0)),
             ValueError, r"intermediate_size must be positive, got 0 \(up_weight has shape \[0, 20\]\)"),
            (lambda: WeightCacheOptimized(mask, 2**64, gate, up, down),
             ValueError, r"hidden_size must be in \[1, 9223372036854775807\], got 18446744073709551616"),
            (lambda: WeightCacheOptimized(mask, 0, gate, up, down),
             ValueError, r"hidden_size must be in \[1, .*\], got 0"),
            (lambda: WeightCache(mask, gate, up, down, tolerance=2**64),
             ValueError, r"tolerance must be in \[0, 9223372036854775807\], got 18446744073709551616"),
            (lambda: WeightCache(mask, gate, up, down, tolerance=-1),
             ValueError, r"tolerance must be in \[0, .*\], got -1"),
            (lambda: WeightCache(mask, gate, up, down, num_threads=2**31),
             ValueError, r"num_threads must be in \[1, 1024\], got 2147483648"),
            (lambda: WeightCache(mask, gate, up, down, num_threads="2"),
             TypeError, r"num_threads must be an int, got str"),
        ]
        for make, error, pattern in cases:
            with self.assertRaises(error) as ctx:
                make()
            self.assertRegex(str(ctx.exception), pattern)
            self.assertLess(len(str(ctx.exception)), 300, "a dump, not a message")
        c = WeightCache(mask, gate, up, down)
        with self.assertRaisesRegex(ValueError, r"tolerance must be in \[0, .*\], got 18446744073709551616"):
            c.tolerance = 2**64
        with self.assertRaisesRegex(ValueError, r"active must be in \[0, 64\], got -1"):
            c.reserve(-1)
        self.assertEqual(c.tolerance, 0)

    def test_one_rule_for_masks_on_every_path(self):
        gen = torch.Generator().manual_seed(25)
        i, h = 48, 8
        gate, up, down = random_weights(gen, i, h, torch.float32)
        x = torch.randn(1, h, generator=gen)
        ones = torch.ones(i, dtype=torch.bool)
        paths = {
            "WeightCache": lambda m: WeightCache(ones, gate, up, down).update(m),
            "cached LlamaSkipMLP": lambda m: LlamaSkipMLP.from_dense(gate, up, down)(x, m),
            "reference LlamaSkipMLP": lambda m: LlamaSkipMLP.from_dense(
                gate, up, down, use_optimized_cache=False)(x, m),
        }
        for name, run in paths.items():
            with self.assertRaisesRegex(TypeError, "mask must be bool or uint8, got torch.float32",
                                        msg=name):
                run(torch.ones(i))
            with self.assertRaisesRegex(TypeError, "mask must be bool or uint8", msg=name):
                run(torch.ones(i, dtype=torch.int64))
            with self.assertRaisesRegex(ValueError, "needs at least one token", msg=name):
                run(torch.zeros(0, i, dtype=torch.bool))
        # Any non-zero uint8 is active, on every path alike.
        values = torch.zeros(i, dtype=torch.uint8)
        values[[1, 5, 9]] = torch.tensor([1, 7, 255], dtype=torch.uint8)
        active = values != 0
        c = WeightCache(values, gate, up, down)
        self.assertEqual(sorted(c.active_indices().tolist()), [1, 5, 9])
        expected = dense_masked(x, gate, up, down, active)
        for name in ("cached LlamaSkipMLP", "reference LlamaSkipMLP"):
            mlp = LlamaSkipMLP.from_dense(gate, up, down,
                                          use_optimized_cache=name.startswith("cached"))
            torch.testing.assert_close(mlp(x, values), expected, msg=name)
            torch.testing.assert_close(mlp(x, values.expand(2, i)), expected, msg=name)

    def test_repack_fraction_and_keyword_options(self):
        from sparse_mlp import _sparse_mlp
        gen = torch.Generator().manual_seed(27)
        gate, up, down = random_weights(gen, 64, 8, torch.float32)
        first = torch.zeros(64, dtype=torch.bool)
        first[:20] = True
        c = WeightCache(first, gate, up, down, repack_fraction=0.5)
        second = torch.zeros(64, dtype=torch.bool)
        second[10:30] = True  # half of the 20 change: repacked at 0.5
        c.update(second)
        self.assertTrue(c.last_update["repacked"])
        self.assertTrue(torch.equal(c.up(), up[c.active_indices()]))
        d = WeightCache(first, gate, up, down)  # default 1.0: differential
        d.update(second)
        self.assertFalse(d.last_update["repacked"])
        with self.assertRaisesRegex(ValueError, r"repack_fraction must be in \(0, 1\], got 0"):
            WeightCache(first, gate, up, down, repack_fraction=0)
        # The native options are keyword-only (no 11 positional arguments).
        with self.assertRaises(TypeError):
            _sparse_mlp.WeightCache(first.numpy(), 8, gate, up, down, 2)

    def test_writes_through_a_view_are_found_by_verify(self):
        gen = torch.Generator().manual_seed(26)
        gate, up, down = random_weights(gen, 64, 16, torch.float32)
        for copy_sources in (False, True):
            c = WeightCache(torch.rand(64, generator=gen) < 0.5, gate, up, down,
                            copy_sources=copy_sources)
            c.verify()
            c.up().mul_(2)  # torch views are writable: this corrupts the cache
            with self.assertRaisesRegex(RuntimeError, "the up row of slot 0 differs"):
                c.verify()


class BadInputTest(unittest.TestCase):
    """Every bad input raises a clear exception and leaves the cache as it was."""

    def setUp(self):
        gen = torch.Generator().manual_seed(11)
        self.gate, self.up, self.down = random_weights(gen, 64, 16, torch.float32)
        self.mask = torch.rand(64, generator=gen) < 0.5
        self.cache = WeightCacheOptimized(self.mask, 16, self.gate, self.up, self.down)
        self.before = (self.cache.get_num_active(), self.cache.active_indices().clone(),
                       self.cache.get_concat_weight().clone())

    def assert_unchanged(self):
        self.assertEqual(self.cache.get_num_active(), self.before[0])
        self.assertTrue(torch.equal(self.cache.active_indices(), self.before[1]))
        self.assertTrue(torch.equal(self.cache.get_concat_weight(), self.before[2]))

    def test_wrong_mask_length(self):
        with self.assertRaisesRegex(ValueError, "65 entries, expected 64"):
            self.cache.update_active_weights(torch.ones(65, dtype=torch.bool))
        self.assert_unchanged()

    def test_wrong_mask_dtype(self):
        with self.assertRaisesRegex(TypeError, "bool or uint8"):
            self.cache.update_active_weights(torch.ones(64))
        with self.assertRaisesRegex(TypeError, "torch.Tensor or numpy.ndarray"):
            self.cache.update_active_weights([True] * 64)
        self.assert_unchanged()

    def test_wrong_mask_rank(self):
        with self.assertRaisesRegex(ValueError, "1-D .* or 2-D"):
            self.cache.update_active_weights(torch.ones(2, 2, 64, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "1-D .* or 2-D"):
            self.cache.update_active_weights(torch.tensor(True))
        self.assert_unchanged()

    def test_wrong_device(self):
        with self.assertRaisesRegex(ValueError, "must be on the CPU, got device meta"):
            WeightCacheOptimized(self.mask, 16, self.gate.to("meta"), self.up, self.down)
        with self.assertRaisesRegex(ValueError, "must be on the CPU"):
            self.cache.update_active_weights(torch.ones(64, dtype=torch.bool, device="meta"))
        self.assert_unchanged()

    def test_wrong_weight_dtype(self):
        with self.assertRaisesRegex(TypeError, "float32, bfloat16 or float16"):
            WeightCacheOptimized(self.mask, 16, self.gate.double(), self.up.double(),
                                 self.down.double())
        with self.assertRaisesRegex(TypeError, "same dtype"):
            WeightCacheOptimized(self.mask, 16, self.gate.half(), self.up, self.down)
        with self.assertRaisesRegex(TypeError, "torch.Tensor or numpy.ndarray"):
            WeightCacheOptimized(self.mask, 16, self.gate, self.up.tolist(), self.down)

    def test_non_contiguous_weight_is_refused_not_copied(self):
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            WeightCacheOptimized(self.mask, 16, self.gate, self.up, self.down.t().contiguous().t())
        strided = torch.randn(64, 32)[:, ::2]  # [64, 16] with strides (32, 2)
        with self.assertRaisesRegex(ValueError, r"strides \[32, 2\]"):
            WeightCacheOptimized(self.mask, 16, strided, self.up, self.down)

    def test_shape_mismatch(self):
        with self.assertRaisesRegex(ValueError, "up_weight must be"):
            WeightCacheOptimized(self.mask, 15, self.gate, self.up, self.down)
        with self.assertRaisesRegex(ValueError, "gate_weight must have"):
            WeightCacheOptimized(self.mask, 16, self.gate[:60], self.up, self.down)
        with self.assertRaisesRegex(ValueError, "down_weight must be"):
            WeightCacheOptimized(self.mask, 16, self.gate, self.up, self.down.t().contiguous())
        with self.assertRaisesRegex(ValueError, "initial mask must be 1-D with 64"):
            WeightCacheOptimized(self.mask[:10], 16, self.gate, self.up, self.down)
        with self.assertRaisesRegex(TypeError, "hidden_size must be an int"):
            WeightCacheOptimized(self.mask, 16.0, self.gate, self.up, self.down)

    def test_bad_indices(self):
        with self.assertRaisesRegex(ValueError, "unsorted"):
            self.cache.update_indices(torch.tensor([5, 2]))
        with self.assertRaisesRegex(ValueError, "duplicate"):
            self.cache.update_indices(torch.tensor([4, 4]))
        with self.assertRaisesRegex(ValueError, "index 64 at position 1"):
            self.cache.update_indices(torch.tensor([3, 64]))
        with self.assertRaisesRegex(ValueError, "index -1 at position 0"):
            self.cache.update_indices(torch.tensor([-1, 3]))
        with self.assertRaisesRegex(TypeError, "integers"):
            self.cache.update_indices(torch.tensor([1.0, 2.0]))
        self.assert_unchanged()

    def test_bad_settings(self):
        with self.assertRaisesRegex(ValueError, r"num_threads must be in \[1, 1024\], got 0"):
            self.cache.num_threads = 0
        with self.assertRaisesRegex(ValueError, "layout must be"):
            WeightCache(self.mask, self.gate, self.up, self.down, layout="diagonal")
        with self.assertRaisesRegex(ValueError, r"active must be in \[0, 64\], got 65"):
            self.cache.reserve(65)
        with self.assertRaisesRegex(ValueError, "needs PackedLayout::kInterleavedGateUp"):
            self.cache.gate_up_interleaved()
        self.assert_unchanged()

    def test_module_exports(self):
        self.assertEqual(set(sparse_mlp.__all__),
                         {"WeightCache", "WeightCacheOptimized", "LlamaSkipMLP", "mlp_forward",
                          "ModelCache", "FlashModelCache", "LowRankPredictor", "sparsify",
                          "densify", "quantize", "quantize_mlp", "QuantizedTensor",
                          "QuantizedMLP"})
        for name in sparse_mlp.__all__:
            self.assertTrue(hasattr(sparse_mlp, name), name)


class PackageTest(unittest.TestCase):
    def test_version_and_report(self):
        self.assertRegex(sparse_mlp.__version__, r"^\d+\.\d+\.\d+$")
        from sparse_mlp import __main__ as info
        rows = dict(info.report())
        self.assertEqual(rows["sparse_mlp"], sparse_mlp.__version__)
        self.assertIn(rows["simd level"], ("scalar", "avx2", "avx512"))
        self.assertGreaterEqual(int(rows["openmp threads"]), 1)
        self.assertTrue(rows["torch"].startswith(torch.__version__), rows["torch"])


def torch_mlp(x, gate, up, down, activation="silu", mask=None):
    """The float64 reference MLP (down [H, I]); gate None: gate-less."""
    x, up, down = x.double(), up.double(), down.double()
    act = {"silu": F.silu, "relu": F.relu,
           "gelu_tanh": lambda v: F.gelu(v, approximate="tanh")}[activation]
    pre = F.linear(x, up)
    hidden = act(F.linear(x, gate.double())) * pre if gate is not None else act(pre)
    if mask is not None:
        hidden = hidden * mask.double()
    return F.linear(hidden, down)


# Relative error in norm of the native forward against float64: float32
# summation; bfloat16 also rounds x (documented), float16 rounds the output.
FORWARD_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


class ScoreMaskTest(unittest.TestCase):
    """update_topk / update_threshold against torch.topk and a sort with
    ties to the lower index."""

    def setUp(self):
        gen = torch.Generator().manual_seed(71)
        self.i, self.h = 300, 8
        self.gate, self.up, self.down = random_weights(gen, self.i, self.h, torch.float32)
        self.cache = WeightCache(torch.zeros(self.i, dtype=torch.bool), self.gate, self.up,
                                 self.down)
        self.gen = gen

    def active(self):
        return set(self.cache.active_indices().tolist())

    def test_topk_matches_torch_topk_and_the_tie_rule(self):
        for k in (0, 1, 37, 150, self.i):
            scores = torch.randn(self.i, generator=self.gen)
            self.cache.update_topk(scores, k)
            self.assertEqual(self.active(), set(torch.topk(scores, k).indices.tolist()), k)
            self.cache.verify()
        # Ties: quantized scores, the lower index first (torch.topk leaves
        # the order of equal values unspecified, so a stable sort is the
        # reference).
        for dtype in (torch.float32, torch.bfloat16):
            scores = torch.randint(0, 5, (3, self.i), generator=self.gen).to(dtype)
            self.cache.update_topk(scores, 40)
            expected = set()
            for row in scores.float():
                order = sorted(range(self.i), key=lambda j: (-float(row[j]), j))
                expected |= set(order[:40])
            self.assertEqual(self.active(), expected, dtype)

    def test_threshold_and_numpy_scores(self):
        scores = np.random.default_rng(72).standard_normal((2, self.i)).astype(np.float32)
        self.cache.update_threshold(scores, 0.5)
        self.assertEqual(self.active(), set(np.nonzero((scores > 0.5).any(axis=0))[0].tolist()))
        self.cache.update_threshold(scores[0], 0.5)
        self.assertEqual(self.active(), set(np.nonzero(scores[0] > 0.5)[0].tolist()))

    def test_bad_scores_are_refused_and_change_nothing(self):
        self.cache.update_topk(torch.arange(self.i, dtype=torch.float32), 10)
        before = self.active()
        scores = torch.randn(self.i, generator=self.gen)
        with self.assertRaisesRegex(ValueError, f"k = {self.i + 1} exceeds the {self.i} neurons"):
            self.cache.update_topk(scores, self.i + 1)
        scores[7] = float("nan")
        with self.assertRaisesRegex(ValueError, "score of neuron 7 in row 0 is NaN"):
            self.cache.update_topk(scores, 3)
        with self.assertRaisesRegex(ValueError, "threshold is NaN"):
            self.cache.update_threshold(torch.zeros(self.i), float("nan"))
        with self.assertRaisesRegex(ValueError, "scores have 299 columns"):
            self.cache.update_topk(torch.zeros(self.i - 1), 1)
        with self.assertRaisesRegex(TypeError, "scores must be float32 or bfloat16, got float16"):
            self.cache.update_topk(torch.zeros(self.i, dtype=torch.float16), 1)
        with self.assertRaisesRegex(ValueError, r"k must be in \[0, "):
            self.cache.update_topk(torch.zeros(self.i), -1)
        self.assertEqual(self.active(), before)


class ForwardTest(unittest.TestCase):
    """mlp_forward, WeightCache.forward / step and LlamaSkipMLP on the native
    forward, against a float64 torch reference."""

    def test_mlp_forward_dense_and_indexed(self):
        gen = torch.Generator().manual_seed(61)
        h, i = 48, 130
        for dtype in DTYPES:
            for activation in ("silu", "gelu_tanh", "relu"):
                for gated in (True, False):
                    gate, up, down = random_weights(gen, i, h, dtype)
                    gate = gate if gated else None
                    for shape in ((h,), (1, h), (5, h)):
                        x = torch.randn(*shape, generator=gen).to(dtype)
                        where = f"{dtype} {activation} gated={gated} x{shape}"
                        ref = torch_mlp(x, gate, up, down, activation)
                        out = mlp_forward(x, gate, up, down, activation=activation)
                        self.assertEqual(out.shape, x.shape, where)
                        self.assertEqual(out.dtype, x.dtype, where)
                        assert_close_in_norm(self, out, ref, FORWARD_TOLERANCE[dtype], where)
                        idx = torch.nonzero(torch.rand(i, generator=gen) < 0.3).squeeze(1)
                        mask = torch.zeros(i)
                        mask[idx] = 1
                        out = mlp_forward(x, gate, up, down.t().contiguous(), indices=idx,
                                          down_neuron_major=True, activation=activation)
                        assert_close_in_norm(self, out, torch_mlp(x, gate, up, down, activation,
                                                                  mask),
                                             FORWARD_TOLERANCE[dtype], where + " indexed")

    def test_float32_x_with_16_bit_weights_and_residual_add(self):
        gen = torch.Generator().manual_seed(62)
        gate, up, down = random_weights(gen, 70, 32, torch.bfloat16)
        x = torch.randn(3, 32, generator=gen)
        residual = torch.randn(3, 32, generator=gen)
        out = residual.clone()
        result = mlp_forward(x, gate, up, down, out=out, accumulate=True)
        self.assertIs(result, out)
        assert_close_in_norm(self, out - residual, torch_mlp(x, gate, up, down), 1e-2, "bf16")

    def test_cache_forward_and_step_match_update_then_forward(self):
        gen = torch.Generator().manual_seed(63)
        h, i = 40, 96
        for dtype in DTYPES:
            for layout in ("split", "interleaved", "fused"):
                gate, up, down = random_weights(gen, i, h, dtype)
                masks = list(mask_sequence(gen, i, 14))
                stepped = WeightCache(masks[0], gate, up, down, layout=layout)
                updated = WeightCache(masks[0], gate, up, down, layout=layout)
                for step, mask in enumerate(masks[1:]):
                    where = f"{dtype} {layout} step {step}"
                    x = torch.randn(1 + step % 3, h, generator=gen).to(dtype)
                    out = stepped.step(mask, x)
                    updated.update(mask)
                    self.assertTrue(torch.equal(out, updated.forward(x)), where)
                    stepped.verify()
                    self.assertTrue(torch.equal(stepped.active_indices(),
                                                updated.active_indices()), where)
                    assert_close_in_norm(self, out, torch_mlp(x, gate, up, down,
                                                              mask=union(mask)),
                                         FORWARD_TOLERANCE[dtype], where)

    def test_numpy_forward(self):
        rng = np.random.default_rng(64)
        gate, up = rng.standard_normal((2, 50, 16), dtype=np.float32)
        down = rng.standard_normal((16, 50), dtype=np.float32)
        x = rng.standard_normal(16, dtype=np.float32)
        mask = rng.random(50) < 0.5
        cache = WeightCache(mask, gate, up, down)
        out = cache.forward(x)
        self.assertIsInstance(out, np.ndarray)
        expected = torch_mlp(torch.from_numpy(x), torch.from_numpy(gate), torch.from_numpy(up),
                             torch.from_numpy(down), mask=torch.from_numpy(mask)).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mlp_forward(x, gate, up, down),
                                   torch_mlp(torch.from_numpy(x), torch.from_numpy(gate),
                                             torch.from_numpy(up),
                                             torch.from_numpy(down)).numpy(),
                                   rtol=1e-4, atol=1e-5)

    def test_llama_skip_mlp_runs_natively_in_every_dtype(self):
        gen = torch.Generator().manual_seed(65)
        h, i = 32, 80
        for dtype in DTYPES:
            gate, up, down = random_weights(gen, i, h, dtype)
            module = LlamaSkipMLP.from_dense(gate, up, down)
            linear = F.linear
            try:  # the cached path must not touch torch's matmul
                F.linear = None
                outs = []
                for step, mask in enumerate(mask_sequence(gen, i, 8)):
                    x = torch.randn(2, h, generator=gen).to(dtype)
                    outs.append((x, mask, module(x, mask)))
            finally:
                F.linear = linear
            for x, mask, out in outs:
                self.assertEqual(out.dtype, dtype)
                assert_close_in_norm(self, out, torch_mlp(x, gate, up, down, mask=union(mask)),
                                     FORWARD_TOLERANCE[dtype], f"{dtype}")

    def test_forward_errors_name_the_argument(self):
        gen = torch.Generator().manual_seed(66)
        gate, up, down = random_weights(gen, 20, 8, torch.float32)
        x = torch.randn(2, 8, generator=gen)
        with self.assertRaisesRegex(ValueError, "activation must be one of silu, gelu_tanh, relu; got 'swish'"):
            mlp_forward(x, gate, up, down, activation="swish")
        with self.assertRaisesRegex(ValueError, r"x must be \[8\] or \[tokens, 8\]"):
            mlp_forward(torch.randn(2, 9), gate, up, down)
        with self.assertRaisesRegex(TypeError, r"x must be float32 \(with float32 or quantized weights\), got bfloat16"):
            mlp_forward(x.to(torch.bfloat16), gate, up, down)
        with self.assertRaisesRegex(ValueError, "x must be C-contiguous"):
            mlp_forward(torch.randn(8, 2).t(), gate, up, down)
        with self.assertRaisesRegex(ValueError, "indices need a neuron-major down"):
            mlp_forward(x, gate, up, down, indices=[1, 2])
        with self.assertRaisesRegex(ValueError, "indices\\[1\\] = 1 follows indices\\[0\\] = 3"):
            mlp_forward(x, gate, up, down.t().contiguous(), indices=[3, 1],
                        down_neuron_major=True)
        with self.assertRaisesRegex(ValueError, r"indices must be in \[0, 20\), got 20"):
            mlp_forward(x, gate, up, down.t().contiguous(), indices=[20],
                        down_neuron_major=True)
        with self.assertRaisesRegex(TypeError, "indices must be integers"):
            mlp_forward(x, gate, up, down.t().contiguous(), indices=[0.5],
                        down_neuron_major=True)
        with self.assertRaisesRegex(ValueError, r"down must be \[8, 20\]"):
            mlp_forward(x, gate, up, down.t().contiguous())
        with self.assertRaisesRegex(ValueError, r"num_threads must be in \[1, 1024\], got 0"):
            mlp_forward(x, gate, up, down, num_threads=0)
        cache = WeightCache(torch.ones(20, dtype=torch.bool), gate, up, down)
        version = cache.last_update
        with self.assertRaisesRegex(ValueError, r"byte mask has 19 entries, expected 20"):
            cache.step(torch.ones(19, dtype=torch.bool), x)
        with self.assertRaisesRegex(ValueError, "out must have x's shape"):
            cache.forward(x, out=torch.empty(3, 8))
        with self.assertRaisesRegex(ValueError, "out must be C-contiguous"):
            cache.forward(x, out=torch.empty(8, 2).t())
        self.assertEqual(cache.last_update, version)
        cache.verify()


if __name__ == "__main__":
    unittest.main()
