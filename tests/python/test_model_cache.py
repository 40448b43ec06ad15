"""sparse_mlp.ModelCache: every layer of a model in one pool.

Runs under `bazel test //tests/python:model_cache_test`. Fixed seeds;
assertion messages name the step and layer.
"""

import gc
import unittest

import numpy as np
import torch
import torch.nn.functional as F

from sparse_mlp import ModelCache, WeightCache


def random_layers(gen, num_layers, hidden, inter, dtype=torch.float32):
    return [(torch.randn(inter, hidden, generator=gen).to(dtype),
             torch.randn(inter, hidden, generator=gen).to(dtype),
             torch.randn(hidden, inter, generator=gen).to(dtype)) for _ in range(num_layers)]


def random_mask(gen, inter, fraction):
    return torch.rand(inter, generator=gen) < fraction


def check_layer(test, cache, layer, mask, where):
    """The cache holds exactly mask's neurons, each with its own rows."""
    gate, up, down = layer
    idx = cache.active_indices()
    test.assertEqual(sorted(idx.tolist()), torch.nonzero(mask).flatten().tolist(), where)
    torch.testing.assert_close(cache.gate(), gate[idx], rtol=0, atol=0, msg=where)
    torch.testing.assert_close(cache.up(), up[idx], rtol=0, atol=0, msg=where)
    torch.testing.assert_close(cache.down_rows(), down.t()[idx], rtol=0, atol=0, msg=where)
    cache.verify()


class TinyMlp(torch.nn.Module):
    """A Hugging Face style LLaMA MLP (gate_proj / up_proj / down_proj)."""

    def __init__(self, hidden, inter, gen):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.up_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.down_proj = torch.nn.Linear(inter, hidden, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


class ModelCacheTest(unittest.TestCase):

    def test_every_layer_matches_after_random_sequences(self):
        gen = torch.Generator().manual_seed(1)
        layers = random_layers(gen, 5, 16, 90)
        for layout in ("split", "interleaved", "fused"):
            masks = [random_mask(gen, 90, 0.2) for _ in layers]  # fit 30%
            model = ModelCache(layers, active_fraction=0.3, masks=masks, layout=layout,
                               num_threads=2)
            self.assertEqual(len(model), 5)
            self.assertEqual(model.footprint()["pool_blocks"], 1)
            for step in range(25):
                fraction = 0.1 + 0.6 * torch.rand(1, generator=gen).item()
                if step % 2:
                    l = int(torch.randint(0, 5, (1,), generator=gen))
                    masks[l] = random_mask(gen, 90, fraction)
                    model.update(l, masks[l])
                else:
                    chosen = torch.randperm(5, generator=gen)[:3].tolist()
                    batch = {}
                    for l in chosen:
                        masks[l] = random_mask(gen, 90, fraction)
                        batch[l] = masks[l]
                    model.update_many(batch)
                for l in range(5):
                    check_layer(self, model[l], layers[l], masks[l],
                                f"{layout} step {step} layer {l}")
            self.assertGreater(model.totals()["growths"], 0)

    def test_update_many_equals_sequential_updates(self):
        gen = torch.Generator().manual_seed(2)
        layers = random_layers(gen, 6, 8, 64)
        batched = ModelCache(layers, num_threads=2)
        sequential = ModelCache(layers, num_threads=2)
        for step in range(10):
            masks = [random_mask(gen, 64, 0.4) for _ in layers]
            batched.update_many(masks)  # one mask per layer
            for l, m in enumerate(masks):
                sequential.update(l, m)
            for l in range(6):
                where = f"step {step} layer {l}"
                self.assertEqual(batched[l].active_indices().tolist(),
                                 sequential[l].active_indices().tolist(), where)
                self.assertEqual(batched[l].last_update, sequential[l].last_update, where)
        self.assertEqual(batched.totals(), sequential.totals())

    def test_from_modules_step_matches_the_dense_reference(self):
        gen = torch.Generator().manual_seed(3)
        modules = [TinyMlp(32, 100, gen) for _ in range(3)]
        model = ModelCache(modules, active_fraction=0.5)
        x = torch.randn(32, generator=gen)
        for l, mlp in enumerate(modules):
            mask = random_mask(gen, 100, 0.5)
            y = model.step(l, mask, x)
            gate = mlp.gate_proj.weight.detach() * mask[:, None]
            expected = F.linear(F.silu(F.linear(x, gate)) * F.linear(x, mlp.up_proj.weight),
                                mlp.down_proj.weight)
            torch.testing.assert_close(y, expected.detach(), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(model.forward(l, x), y)
        # w1/w3/w2 naming (Meta LLaMA, llama2.c).
        meta = torch.nn.Module()
        meta.w1, meta.w3, meta.w2 = (modules[0].gate_proj, modules[0].up_proj,
                                     modules[0].down_proj)
        one = ModelCache([meta])
        mask = random_mask(gen, 100, 0.5)
        torch.testing.assert_close(one.step(0, mask, x), model.step(0, mask, x))

    def test_footprint_with_borrowed_neuron_major_sources(self):
        gen = torch.Generator().manual_seed(4)
        inter, hidden = 256, 64
        layers = [(g, u, d.t().contiguous())
                  for g, u, d in random_layers(gen, 4, hidden, inter, torch.bfloat16)]
        masks = [random_mask(gen, inter, 0.25) for _ in layers]
        model = ModelCache(layers, active_fraction=0.3, masks=masks, down_neuron_major=True,
                           layout="fused")
        f = model.footprint()
        self.assertEqual(f["weight_bytes"], 4 * 3 * inter * hidden * 2)
        self.assertEqual(f["packed_bytes"], 4 * 77 * 3 * hidden * 2)  # ceil(0.3 x 256) slots
        # Masks, maps and scratch: tens of bytes per neuron and layer.
        self.assertLess(f["cache_bytes"] - f["packed_bytes"], 4 * 64 * inter)
        stats = model.layer_stats(2)
        self.assertEqual(stats["active"], int(masks[2].sum()))
        self.assertEqual(stats["capacity"], 77)
        copied = ModelCache(layers, active_fraction=0.3, masks=masks, down_neuron_major=True,
                            copy_sources=True)
        self.assertEqual(copied.footprint()["pool_in_use"],
                         copied.footprint()["packed_bytes"] + f["weight_bytes"])

    def test_views_outlive_the_model(self):
        gen = torch.Generator().manual_seed(5)
        layers = random_layers(gen, 2, 8, 40)
        mask = random_mask(gen, 40, 0.5)
        model = ModelCache(layers, masks=[mask, mask])
        view = model[1].up()
        idx = model[1].active_indices()
        del model
        gc.collect()
        torch.testing.assert_close(view, layers[1][1][idx], rtol=0, atol=0)

    def test_numpy_layers(self):
        rng = np.random.default_rng(6)
        layers = [tuple(rng.standard_normal(s).astype(np.float32)
                        for s in ((30, 8), (30, 8), (8, 30))) for _ in range(2)]
        model = ModelCache(layers)
        mask = np.zeros(30, dtype=bool)
        mask[::3] = True
        model.update_many([(0, mask), (1, mask)])
        self.assertIsInstance(model[0].up(), np.ndarray)
        np.testing.assert_array_equal(model[0].up(), layers[0][1][mask])


class ModelCacheThreadTest(unittest.TestCase):

    def test_threads_updating_layers_and_batches_never_corrupt_it(self):
        """Threads updating single layers while others run batches over
        overlapping layers: calls on one layer take turns (no deadlock, no
        refusal), and every layer ends holding the last mask applied to it."""
        import threading
        gen = torch.Generator().manual_seed(8)
        layers = random_layers(gen, 4, 32, 200)
        model = ModelCache(layers, num_threads=2)
        masks = [[random_mask(gen, 200, 0.4) for _ in range(4)] for _ in range(30)]
        errors = []

        def singles(offset):
            try:
                for step in range(30):
                    l = (step + offset) % 4
                    model.update(l, masks[step][l])
                    model[l].forward(torch.randn(32))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        def batches():
            try:
                for step in range(30):
                    model.update_many({l: masks[step][l] for l in (step % 4, (step + 2) % 4)})
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=singles, args=(k,)) for k in range(2)]
        threads += [threading.Thread(target=batches) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertFalse(any(t.is_alive() for t in threads), "a thread hung")
        self.assertEqual(errors, [])
        for l in range(4):
            model[l].verify()
            held = torch.zeros(200, dtype=torch.bool)
            held[model[l].active_indices()] = True
            self.assertTrue(any(torch.equal(held, masks[s][l]) for s in range(30)), f"layer {l}")


class ModelCacheErrorTest(unittest.TestCase):

    def setUp(self):
        gen = torch.Generator().manual_seed(7)
        self.layers = random_layers(gen, 3, 8, 50)
        self.masks = [random_mask(gen, 50, 0.4) for _ in range(3)]
        self.model = ModelCache(self.layers, masks=self.masks)

    def assert_unchanged(self):
        for l in range(3):
            check_layer(self, self.model[l], self.layers[l], self.masks[l], f"layer {l}")
        self.assertEqual(self.model.totals()["updates"], 0)

    def test_layer_index_out_of_range(self):
        with self.assertRaisesRegex(ValueError, "layer must be in \\[0, 2\\], got 3"):
            self.model.update(3, self.masks[0])
        with self.assertRaisesRegex(ValueError, "layer must be in \\[0, 2\\], got -1"):
            self.model.layer(-1)
        with self.assertRaisesRegex(ValueError, "updates\\[1\\] layer must be in \\[0, 2\\]"):
            self.model.update_many([(0, self.masks[1]), (5, self.masks[0])])
        self.assert_unchanged()

    def test_mask_size_and_type(self):
        with self.assertRaisesRegex(ValueError, "updates\\[0\\] mask must be 1-D with 50"):
            self.model.update_many([(1, torch.ones(49, dtype=torch.bool))])
        with self.assertRaisesRegex(TypeError, "mask must be bool or uint8"):
            self.model.update_many({0: torch.ones(50)})
        with self.assertRaises(ValueError):
            self.model.update(0, torch.ones(51, dtype=torch.bool))
        self.assert_unchanged()

    def test_layer_named_twice(self):
        with self.assertRaisesRegex(ValueError, "both name layer 1"):
            self.model.update_many([(1, self.masks[0]), (1, self.masks[2])])
        self.assert_unchanged()

    def test_construction_errors(self):
        with self.assertRaisesRegex(ValueError, "at least one layer"):
            ModelCache([])
        bad = list(self.layers)
        bad[2] = (bad[2][0], bad[2][1][:40], bad[2][2])
        with self.assertRaisesRegex(ValueError, "layer 2: gate_weight must have up_weight's"):
            ModelCache(bad)
        mixed = list(self.layers)
        mixed[1] = tuple(w.to(torch.bfloat16) for w in mixed[1])
        with self.assertRaisesRegex(ValueError, "layer 1: bfloat16 .* every layer must have"):
            ModelCache(mixed)
        with self.assertRaisesRegex(ValueError, "masks: 2 masks for 3 layers"):
            ModelCache(self.layers, masks=self.masks[:2])
        with self.assertRaisesRegex(ValueError, "expected_active_fraction must be in"):
            ModelCache(self.layers, active_fraction=1.5)
        with self.assertRaisesRegex(TypeError, "layer 0: expected a \\(gate, up, down\\)"):
            ModelCache([object()])


if __name__ == "__main__":
    unittest.main()
