"""ModelCache.from_file: a model's MLPs served from a bundle file under a DRAM
budget, against the dense torch MLP restricted to the same neurons."""

import os
import tempfile
import unittest

import torch
import torch.nn.functional as F

import sparse_mlp
from sparse_mlp import ModelCache, store
from sparse_mlp.sparsify import FlashServedMLP


def tmpdir():
    return tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR"))


def masked_mlp(x, gate, up, down, mask):
    g, u, d = gate.float(), up.float(), down.float()
    h = F.silu(F.linear(x.float(), g)) * F.linear(x.float(), u)
    return F.linear(h * mask.float(), d)


def budget_for(path, fraction, **kw):
    """Bytes that give each layer about `fraction` of its neurons as slots."""
    probe = ModelCache.from_file(path, budget_bytes=1 << 34, **kw)
    f = probe.footprint()
    stride = f["slot_bytes"] // (len(probe) * probe.capacity)
    slots = int(fraction * probe.intermediate_size)
    return f["reader_bytes"] + f["bookkeeping_bytes"] + len(probe) * slots * stride


class FlashTest(unittest.TestCase):
    def setUp(self):
        gen = torch.Generator().manual_seed(7)
        self.layers = [(torch.randn(96, 48, generator=gen) * 0.2,
                        torch.randn(96, 48, generator=gen) * 0.2,
                        torch.randn(48, 96, generator=gen) * 0.2) for _ in range(3)]
        self.dir = tmpdir()
        self.path = os.path.join(self.dir.name, "model.spmlb")
        store.write(self.path, self.layers, alignment=512)

    def tearDown(self):
        self.dir.cleanup()

    def test_steps_equal_the_masked_dense_mlp(self):
        gen = torch.Generator().manual_seed(8)
        for window in (1, 4):
            for engine in ("io_uring", "pread"):
                model = ModelCache.from_file(self.path, budget_bytes=budget_for(self.path, 0.6),
                                             window=window, engine=engine, num_threads=2)
                self.assertIsInstance(model, sparse_mlp.FlashModelCache)
                self.assertLess(model.capacity, 96)
                for step in range(12):
                    for l, (g, u, d) in enumerate(self.layers):
                        mask = torch.rand(96, generator=gen) < 0.4
                        while int(mask.sum()) > model.capacity:
                            mask[int(torch.nonzero(mask)[0])] = False
                        x = torch.randn(2, 48, generator=gen)
                        y = model.step(l, mask, x)
                        where = f"window {window} {engine} step {step} layer {l}"
                        self.assertEqual(y.shape, x.shape, where)
                        torch.testing.assert_close(y, masked_mlp(x, g, u, d, mask), rtol=1e-4,
                                                   atol=1e-5, msg=where)
                        resident = set(model[l].resident_neurons().tolist())
                        self.assertTrue(set(torch.nonzero(mask).view(-1).tolist()) <= resident,
                                        where)
                for l in range(3):
                    model.verify(l)
                f = model.footprint()
                self.assertLessEqual(f["total_bytes"], f["budget_bytes"])
                totals = model.totals()
                self.assertGreater(totals["loads"], 0)
                self.assertGreater(totals["hits"], 0)
                io = model.io_stats()
                self.assertGreaterEqual(io["bytes_read"], totals["loads"] * 3 * 48 * 4)

    def test_window_keeps_flickering_neurons(self):
        masks = [torch.zeros(96, dtype=torch.bool) for _ in range(2)]
        masks[0][:20] = True
        masks[1][10:30] = True
        loads = {}
        for window in (1, 3):
            model = ModelCache.from_file(self.path, budget_bytes=budget_for(self.path, 1.0),
                                         window=window)
            for k in range(8):
                model.update(0, masks[k % 2])
            loads[window] = model.layer_stats(0)["loads"]
        # Window 1 reloads the flickering halves each token; window 3 keeps them.
        self.assertEqual(loads[3], 30)
        self.assertEqual(loads[1], 20 + 7 * 10)

    def test_prefetch_update_many_and_layer_handles(self):
        model = ModelCache.from_file(self.path, budget_bytes=budget_for(self.path, 1.0))
        mask = torch.zeros(96, dtype=torch.bool)
        mask[::3] = True
        model.prefetch(2, mask)
        x = torch.randn(48)
        y = model[2].step(mask, x)
        torch.testing.assert_close(y, masked_mlp(x, *self.layers[2], mask), rtol=1e-4, atol=1e-5)
        self.assertEqual(model.layer_stats(2)["loads"], 32)  # the prefetch's, once
        model.update_many({0: mask, 1: mask})
        self.assertEqual(model.layer_stats(1)["resident"], 32)
        out = torch.ones(48)
        model.step(0, mask, x, out=out, accumulate=True)
        torch.testing.assert_close(out, 1 + masked_mlp(x, *self.layers[0], mask), rtol=1e-4,
                                   atol=1e-5)

    def test_pinned_neurons_stay_resident(self):
        model = ModelCache.from_file(self.path, budget_bytes=budget_for(self.path, 0.5), window=1)
        hot = torch.zeros(96, dtype=torch.bool)
        hot[:8] = True
        model.pin(1, hot)
        x = torch.randn(48)
        first = hot.clone()
        first[40:50] = True
        model[1].step(first, x)
        other = torch.zeros(96, dtype=torch.bool)
        other[60:80] = True  # window 1: 40-49 leave, the pinned 0-7 stay
        y = model[1].step(other, x)
        torch.testing.assert_close(y, masked_mlp(x, *self.layers[1], other), rtol=1e-4, atol=1e-5)
        resident = set(model.resident_neurons(1).tolist())
        self.assertTrue(set(range(8)) <= resident)
        self.assertFalse(set(range(40, 50)) & resident)
        model.verify(1)
        too_big = torch.zeros(96, dtype=torch.bool)
        too_big[20:20 + model.capacity - 7] = True
        with self.assertRaisesRegex(ValueError, "pinned neurons outside"):
            model[1].step(too_big, x)
        with self.assertRaisesRegex(ValueError, "mask must have 96 entries"):
            model.pin(1, hot[:10])
        with self.assertRaisesRegex(ValueError, "layer must be in"):
            model.pin(7, hot)

    def test_errors(self):
        with self.assertRaisesRegex(OSError, "cannot open"):
            ModelCache.from_file(self.path + ".missing", budget_bytes=1 << 30)
        with self.assertRaisesRegex(ValueError, "budget_bytes 1000 is below the minimum"):
            ModelCache.from_file(self.path, budget_bytes=1000)
        with self.assertRaisesRegex(ValueError, "window must be in"):
            ModelCache.from_file(self.path, budget_bytes=1 << 30, window=0)
        model = ModelCache.from_file(self.path, budget_bytes=budget_for(self.path, 0.25))
        big = torch.zeros(96, dtype=torch.bool)
        big[:model.capacity + 1] = True
        with self.assertRaisesRegex(ValueError, f"{model.capacity + 1} neurons but the budget "
                                                f"gives this layer {model.capacity} slots"):
            model.step(0, big, torch.randn(48))
        with self.assertRaisesRegex(ValueError, "layer must be in"):
            model.step(3, big[:10], torch.randn(48))
        with self.assertRaisesRegex(ValueError, "mask must have 96 entries"):
            model.step(0, big[:10], torch.randn(48))
        # A corrupted bundle: OSError naming it; the others still load.
        layout = store.info(self.path)
        offset = layout["header_bytes"] + 5 * layout["bundle_stride"] + 3
        with open(self.path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0xFF]))
        mask = torch.zeros(96, dtype=torch.bool)
        mask[4:7] = True
        with self.assertRaisesRegex(OSError, "layer 0 neuron 5 .*checksum mismatch"):
            model.step(0, mask, torch.randn(48))
        self.assertEqual(model[0].resident_neurons().tolist(), [4, 6])
        model.verify(0)


class FlashGateFirstTest(unittest.TestCase):
    """Gate-first over the flash tier: gates in DRAM, a gate-less file of up
    and down; the same neurons and outputs as LlamaSkipMLP's gate-first."""

    def test_matches_gate_first_in_dram(self):
        gen = torch.Generator().manual_seed(9)
        layers = [(torch.randn(96, 48, generator=gen) * 0.2,
                   torch.randn(96, 48, generator=gen) * 0.2,
                   torch.randn(48, 96, generator=gen) * 0.2) for _ in range(2)]
        with tmpdir() as d:
            path = os.path.join(d, "updown.spmlb")
            info = store.write(path, [(None, u, dn) for _, u, dn in layers], alignment=512)
            self.assertFalse(info["gated"])
            model = ModelCache.from_file(path, budget_bytes=budget_for(path, 0.8, queue_depth=4),
                                         window=2, queue_depth=4,
                                         gates=[g for g, _, _ in layers], sparsity=0.5)
            mlps = [sparse_mlp.LlamaSkipMLP.from_dense(g, u, dn, 0.5) for g, u, dn in layers]
            for step in range(6):
                x = torch.randn(1, 48, generator=gen)
                for l, mlp in enumerate(mlps):
                    want = mlp(x)
                    got = model.step(l, None, x)
                    self.assertLess(float((got - want).abs().max()), 1e-5, f"step {step} {l}")
                    kept = torch.as_tensor(mlp.weight_cache.active_indices()).sort().values
                    resident = torch.as_tensor(model[l].resident_neurons())
                    self.assertTrue(bool(torch.isin(kept, resident).all()))
            io = model.io_stats()
            self.assertGreater(io["bytes_read"], 0)

    def test_speculative_gate_first_equals_the_exact_step(self):
        # Guessed from a perturbed early input, read ahead; the exact step
        # then selects as without the guess and gives the same outputs.
        gen = torch.Generator().manual_seed(12)
        layers = [(torch.randn(96, 48, generator=gen) * 0.2,
                   torch.randn(96, 48, generator=gen) * 0.2,
                   torch.randn(48, 96, generator=gen) * 0.2) for _ in range(2)]
        with tmpdir() as d:
            path = os.path.join(d, "updown.spmlb")
            store.write(path, [(None, u, dn) for _, u, dn in layers], alignment=512)
            opts = dict(budget_bytes=budget_for(path, 1.0, queue_depth=4), window=4,
                        queue_depth=4, gates=[g for g, _, _ in layers], sparsity=0.75)
            spec, plain = ModelCache.from_file(path, **opts), ModelCache.from_file(path, **opts)
            recall = []
            for step in range(8):
                x = torch.randn(48, generator=gen)
                early = x + 0.3 * torch.randn(48, generator=gen)
                for l in range(2):
                    asked = spec.speculate(l, early, over=1.5)
                    self.assertEqual(asked, round(1.5 * 24))
                    guess = spec.speculation(l)
                    self.assertEqual(len(guess), asked)
                    got, want = spec.step(l, None, x), plain.step(l, None, x)
                    self.assertLess(float((got - want).abs().max()), 1e-6, f"step {step} {l}")
                    chosen = spec.gate_first_selection(l)
                    self.assertTrue((chosen == plain.gate_first_selection(l)).all())
                    recall.append(float(torch.isin(torch.as_tensor(chosen),
                                                   torch.as_tensor(guess)).float().mean()))
            self.assertGreater(sum(recall) / len(recall), 0.6)
            with self.assertRaisesRegex(ValueError, "over must be positive"):
                spec.speculate(0, x, over=0)
            with self.assertRaisesRegex(ValueError, r"x_early must be \[48\]"):
                spec.speculate(0, torch.randn(47))
            plain_cache = ModelCache.from_file(path, budget_bytes=1 << 24)
            with self.assertRaisesRegex(ValueError, "speculate needs gates"):
                plain_cache.speculate(0, x)

    def test_errors(self):
        gen = torch.Generator().manual_seed(10)
        layers = [(torch.randn(32, 16, generator=gen), torch.randn(32, 16, generator=gen),
                   torch.randn(16, 32, generator=gen)) for _ in range(2)]
        with tmpdir() as d:
            path = os.path.join(d, "updown.spmlb")
            store.write(path, [(None, u, dn) for _, u, dn in layers], alignment=512)
            plain = ModelCache.from_file(path, budget_bytes=1 << 24)
            with self.assertRaisesRegex(ValueError, "needs a mask, or gates"):
                plain.step(0, None, torch.randn(16))
            with self.assertRaisesRegex(ValueError, r"gates\[1\] must be float32 \[32, 16\]"):
                ModelCache.from_file(path, budget_bytes=1 << 24,
                                     gates=[layers[0][0], torch.randn(31, 16)])
            with self.assertRaisesRegex(ValueError, "one gate per layer"):
                ModelCache.from_file(path, budget_bytes=1 << 24, gates=[layers[0][0]])
            gated = os.path.join(d, "gated.spmlb")
            store.write(gated, layers, alignment=512)
            model = ModelCache.from_file(gated, budget_bytes=1 << 24,
                                         gates=[g for g, _, _ in layers])
            with self.assertRaisesRegex(ValueError, "gate-less bundle file"):
                model.step(0, None, torch.randn(16))


class SparsifyFromStoreTest(unittest.TestCase):
    """sparsify(model, store=PATH, budget_bytes=...): every MLP served by the
    tier, gate-first with the gates in DRAM, each layer's neurons guessed
    by a pre-hook before its attention; the outputs of gate-first in DRAM;
    densify reads the released weights back."""

    H, I, L = 64, 128, 3

    def model(self):
        H, I, L = self.H, self.I, self.L

        class RMSNorm(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(H))

            def forward(self, x):
                return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * self.weight

        class MLP(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gate_proj = torch.nn.Linear(H, I, bias=False)
                self.up_proj = torch.nn.Linear(H, I, bias=False)
                self.down_proj = torch.nn.Linear(I, H, bias=False)

            def forward(self, x):
                return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) *
                                      self.up_proj(x))

        class DecoderLayer(torch.nn.Module):  # Hugging Face's names
            def __init__(self):
                super().__init__()
                self.input_layernorm = RMSNorm()
                self.self_attn = torch.nn.Linear(H, H, bias=False)  # attention's stand-in
                self.post_attention_layernorm = RMSNorm()
                self.mlp = MLP()

            def forward(self, x):
                h = x + self.self_attn(self.input_layernorm(x))
                return h + self.mlp(self.post_attention_layernorm(h))

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = torch.nn.ModuleList([DecoderLayer() for _ in range(L)])

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x

        torch.manual_seed(3)
        return Model()

    def test_serves_gate_first_from_the_file(self):
        import copy
        dram, flash = self.model(), None
        flash = copy.deepcopy(dram)
        gen = torch.Generator().manual_seed(4)
        tokens = [torch.randn(1, self.H, generator=gen) for _ in range(6)]
        with torch.no_grad(), tmpdir() as d:
            dense = [dram(x) for x in tokens]
            sparse_mlp.sparsify(dram, 0.5)
            path = os.path.join(d, "model.spmlb")
            sparse_mlp.sparsify(flash, 0.5, store=path, budget_bytes=1 << 24, window=2)
            self.assertTrue(os.path.exists(path))  # written from the model
            self.assertEqual(store.info(path)["gated"], False)
            mlp = flash.layers[0].mlp
            self.assertIsInstance(mlp, FlashServedMLP)
            self.assertEqual(mlp._original.up_proj.weight.numel(), 0)  # released
            tier = flash._sparse_mlp_model_cache
            for x in tokens:
                want, got = dram(x), flash(x)
                self.assertLess(float((got - want).abs().max()), 1e-5)
                for l in range(self.L):  # every layer guessed before its attention
                    self.assertEqual(len(tier.speculation(l)), round(1.5 * 64))
            self.assertGreater(tier.io_stats()["bytes_read"], 0)
            sparse_mlp.densify(flash)
            for x, want in zip(tokens, dense):
                self.assertTrue(torch.equal(flash(x), want))
            # A gated file is refused; so is store= without a budget.
            gated = os.path.join(d, "gated.spmlb")
            store.write(gated, [(l.mlp.gate_proj.weight, l.mlp.up_proj.weight,
                                 l.mlp.down_proj.weight) for l in flash.layers])
            with self.assertRaisesRegex(ValueError, "gate-less"):
                sparse_mlp.sparsify(flash, 0.5, store=gated, budget_bytes=1 << 24)
            with self.assertRaisesRegex(ValueError, "needs budget_bytes"):
                sparse_mlp.sparsify(flash, 0.5, store=path)
            self.assertIsInstance(flash.layers[0].mlp.up_proj, torch.nn.Linear)  # unchanged
            self.assertTrue(torch.equal(flash(tokens[0]), dense[0]))


if __name__ == "__main__":
    unittest.main()
