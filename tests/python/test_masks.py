"""Masks in practice: the seed's LlamaSkipMLP usage runs as written with
the gate-first default (exactly the top-k by |act(gate x)|, ties to the
lower index, and the dense MLP over them); the native low-rank predictor
against float64; training lowers the loss; sparsify / densify on a
Hugging Face-layout model built from stories260K; bad arguments."""

import os
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import sparse_mlp
from sparse_mlp import LlamaSkipMLP, LowRankPredictor, densify, sparsify
from sparse_mlp import _sparse_mlp
from sparse_mlp.predictors import (gate_first_mask, keep_count, oracle_mask, recall_precision,
                                   sample_tokens, topk_mask, train_low_rank, train_predictors)

import hf_llama

CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                          "stories260K.bin")


def dense_over(x, gate, up, down, active):
    """The dense MLP over the neurons of `active` (bool [I]), in float64."""
    x, gate, up, down = (t.double() for t in (x, gate, up, down))
    h = F.silu(x @ gate.t()) * (x @ up.t())
    return (h * active.double()) @ down.t()


def native_activations(gate, x):
    out = np.empty((x.shape[0], gate.shape[0]), dtype=np.float32)
    _sparse_mlp.GateFirst(gate).activations(x, out)
    return torch.from_numpy(out)


def seeded_mlp(seed, hidden=64, inter=172, sparsity=0.5, dtype=torch.float32, **kwargs):
    torch.manual_seed(seed)
    mlp = LlamaSkipMLP(hidden, inter, sparsity, use_optimized_cache=True, dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_((torch.randn(p.shape) / hidden ** 0.5).to(dtype))
    return mlp


class GateFirstTest(unittest.TestCase):

    def test_seed_usage_runs_as_written(self):
        # The seed document's usage, verbatim apart from the sizes.
        hidden_size, intermediate_size, sparsity = 64, 172, 0.5
        mlp = LlamaSkipMLP(hidden_size, intermediate_size, sparsity, use_optimized_cache=True)
        x = torch.randn(1, hidden_size)
        y = mlp(x)
        self.assertEqual(y.shape, x.shape)
        self.assertEqual(mlp.mask_source, "gate-first")
        self.assertEqual(mlp.weight_cache.num_active, 86)

    def test_keeps_exactly_the_rule_and_computes_the_dense_mlp_over_it(self):
        for dtype in (torch.float32, torch.bfloat16):
            for tokens in (1, 3, 40):
                for sparsity in (0.3, 0.5, 0.7):
                    mlp = seeded_mlp(tokens, sparsity=sparsity, dtype=dtype)
                    gen = torch.Generator().manual_seed(100 + tokens)
                    x = torch.randn(tokens, 64, generator=gen)
                    y = mlp(x)
                    act = native_activations(mlp.gate_proj.weight, x)
                    want = topk_mask(act.abs(), keep_count(sparsity, 172)).any(0)
                    kept = torch.zeros(172, dtype=torch.bool)
                    kept[torch.as_tensor(mlp.weight_cache.active_indices())] = True
                    where = f"{dtype} tokens {tokens} sparsity {sparsity}"
                    self.assertTrue(torch.equal(kept, want), where)
                    # The rule on float64 activations keeps the same neurons
                    # unless two scores are within float32 rounding.
                    exact = F.silu(x.double() @ mlp.gate_proj.weight.double().t()).abs()
                    if dtype == torch.float32:
                        ref_keep = topk_mask(exact, keep_count(sparsity, 172)).any(0)
                        self.assertTrue(torch.equal(kept, ref_keep), where)
                    ref = dense_over(x.to(dtype).float() if dtype == torch.bfloat16 else x,
                                     mlp.gate_proj.weight.float(), mlp.up_proj.weight.float(),
                                     mlp.down_proj.weight.float(), kept)
                    tol = 1e-5 if dtype == torch.float32 else 3e-2
                    err = (y.double() - ref).norm() / ref.norm()
                    self.assertLess(float(err), tol, where)
                    # The torch reference path keeps the same neurons.
                    plain = LlamaSkipMLP.from_dense(mlp.gate_proj, mlp.up_proj, mlp.down_proj,
                                                    sparsity, use_optimized_cache=False)
                    err = (plain(x).double() - y.double()).norm() / ref.norm()
                    self.assertLess(float(err), tol, where)

    def test_direct_form_keeps_the_same_neurons(self):
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            cached = seeded_mlp(21, dtype=dtype)
            direct = LlamaSkipMLP.from_dense(cached.gate_proj, cached.up_proj,
                                             cached.down_proj, 0.5, direct=True)
            for tokens in (1, 5):
                x = torch.randn(tokens, 64)
                a, b = cached(x), direct(x)
                self.assertIsNone(direct.weight_cache)
                err = float((a.double() - b.double()).norm() / a.double().norm())
                self.assertLess(err, tol, f"{dtype} tokens {tokens}")
                self.assertTrue(np.array_equal(direct._gate_first.mask().astype(bool),
                                               cached._gate_first.mask().astype(bool)))

    def test_ties_go_to_the_lower_index(self):
        mlp = seeded_mlp(7, sparsity=0.5)
        with torch.no_grad():
            mlp.gate_proj.weight[100:] = mlp.gate_proj.weight[:72]  # equal activations
        x = torch.randn(1, 64)
        mlp(x)
        act = native_activations(mlp.gate_proj.weight, x)[0].abs()
        kept = set(int(i) for i in mlp.weight_cache.active_indices())
        for j in range(100, 172):
            twin = j - 100
            if act[j] == act[twin] and (j in kept):
                self.assertIn(twin, kept, f"neuron {j} kept but its lower twin {twin} not")
        self.assertEqual(len(kept), 86)

    def test_sparsity_zero_is_the_dense_mlp(self):
        mlp = seeded_mlp(3, sparsity=0.0)
        x = torch.randn(2, 64)
        ref = dense_over(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                         torch.ones(172, dtype=torch.bool))
        self.assertLess(float((mlp(x).double() - ref).abs().max()), 1e-5)

    def test_calibrated_threshold(self):
        mlp = seeded_mlp(5, sparsity=0.6)
        calib = torch.randn(200, 64)
        t = mlp.calibrate_gate_threshold(calib)
        kept = []
        for row in torch.randn(50, 64):
            y = mlp(row)
            kept.append(mlp.weight_cache.num_active / 172)
            act = F.silu(mlp.gate_proj.weight @ row).abs()
            ref = dense_over(row[None], mlp.gate_proj.weight, mlp.up_proj.weight,
                             mlp.down_proj.weight, act > t)[0]
            self.assertLess(float((y.double() - ref).abs().max()), 1e-4)
        self.assertLess(abs(sum(kept) / len(kept) - 0.4), 0.1)


class LowRankPredictorTest(unittest.TestCase):

    def test_scores_against_float64(self):
        gen = torch.Generator().manual_seed(11)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            for rank in (1, 16, 128):
                a = (torch.randn(rank, 96, generator=gen) / 10).to(dtype)
                b = (torch.randn(300, rank, generator=gen) / 10).to(dtype)
                p = LowRankPredictor(a, b, sparsity=0.5)
                x = torch.randn(5, 96, generator=gen)
                got = p.scores(x).double()
                ref = (x.double() @ a.double().t()) @ b.double().t()
                err = float((got - ref).norm() / ref.norm())
                self.assertLess(err, tol, f"{dtype} rank {rank}")
                # The selection is the top k of the native scores.
                self.assertTrue(torch.equal(p(x), topk_mask(p.scores(x), 150).any(0)))

    def test_saved_and_loaded_with_a_state_dict(self):
        gen = torch.Generator().manual_seed(14)
        p = LowRankPredictor(torch.randn(8, 64, generator=gen), torch.randn(172, 8,
                                                                          generator=gen))
        x = torch.randn(3, 64, generator=gen)
        before = p.scores(x)
        q = LowRankPredictor(torch.zeros(8, 64), torch.zeros(172, 8))
        self.assertFalse(torch.equal(q.scores(x), before))
        q.load_state_dict(p.state_dict())
        self.assertTrue(torch.equal(q.scores(x), before))  # the native side follows

    def test_step_uses_the_predicted_mask(self):
        mlp = seeded_mlp(12, sparsity=0.5)
        gen = torch.Generator().manual_seed(12)
        p = LowRankPredictor(torch.randn(8, 64, generator=gen), torch.randn(172, 8, generator=gen))
        mlp.predictor = p
        for _ in range(4):
            x = torch.randn(2, 64, generator=gen)
            mask = p(x)
            ref = dense_over(x, mlp.gate_proj.weight, mlp.up_proj.weight,
                             mlp.down_proj.weight, mask)
            self.assertLess(float((mlp(x).double() - ref).abs().max()), 1e-5)
            self.assertEqual(mlp.weight_cache.num_active, int(mask.sum()))

    def test_training_lowers_the_loss_and_beats_chance(self):
        gen = torch.Generator().manual_seed(13)
        gate, up = torch.randn(172, 64, generator=gen), torch.randn(172, 64, generator=gen)
        x = torch.randn(2000, 64, generator=gen)
        target = oracle_mask(x, gate, up, 86)
        p, history = train_low_rank(x[:1500], target[:1500], 16, steps=300, seed=0)
        self.assertLess(history[-1], 0.8 * history[0])
        predicted = topk_mask(p.scores(x[1500:]), 86)
        recall, precision = recall_precision(predicted, target[1500:])
        self.assertGreater(recall, 0.65)  # chance: 0.5
        # Fixed seed, same result.
        p2, history2 = train_low_rank(x[:1500], target[:1500], 16, steps=300, seed=0)
        self.assertEqual(history, history2)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "rank must be at least 1, got 0"):
            train_low_rank(torch.randn(4, 8), torch.ones(4, 16, dtype=torch.bool), 0)
        with self.assertRaisesRegex(TypeError, "rank must be an int"):
            train_low_rank(torch.randn(4, 8), torch.ones(4, 16, dtype=torch.bool), 2.0)
        with self.assertRaisesRegex(ValueError, "rank must be at least 1"):
            LowRankPredictor(torch.zeros(0, 8), torch.zeros(16, 0))
        with self.assertRaisesRegex(ValueError, r"B must be \[I, 4\]"):
            LowRankPredictor(torch.zeros(4, 8), torch.zeros(16, 3))
        with self.assertRaisesRegex(ValueError, "sparsity must be in"):
            LowRankPredictor(torch.zeros(4, 8), torch.zeros(16, 4), sparsity=1.0)
        with self.assertRaisesRegex(ValueError, "predictor scores 16 neurons from 8"):
            LlamaSkipMLP(64, 172, 0.5, predictor=LowRankPredictor(torch.zeros(4, 8),
                                                                  torch.zeros(16, 4)))
        for bad in (1.0, -0.1, 1.5):
            with self.assertRaisesRegex(ValueError, f"sparsity must be in \\[0, 1\\), got {bad}"):
                LlamaSkipMLP(64, 172, bad)
        mlp = seeded_mlp(1)
        with self.assertRaisesRegex(ValueError, "x must be"):
            mlp(torch.randn(1, 63))
        # The native mask sources: exactly one of k and threshold, k in range;
        # the cache is unchanged after the error.
        mlp(torch.randn(1, 64))
        before = mlp.weight_cache.active_indices().clone()
        gf, x, out = mlp._gate_first, torch.randn(1, 64), torch.empty(1, 64)
        with self.assertRaisesRegex(ValueError, "exactly one of k"):
            gf.step(mlp.weight_cache._native, x, out, k=3, threshold=0.1)
        with self.assertRaisesRegex(ValueError, "exactly one of k"):
            gf.step(mlp.weight_cache._native, x, out)
        with self.assertRaisesRegex(ValueError, "k must be in"):
            gf.step(mlp.weight_cache._native, x, out, k=173)
        with self.assertRaisesRegex(ValueError, "threshold must not be NaN"):
            gf.step(mlp.weight_cache._native, x, out, threshold=float("nan"))
        self.assertTrue(torch.equal(mlp.weight_cache.active_indices(), before))


class SparsifyTest(unittest.TestCase):

    def setUp(self):
        torch.manual_seed(0)
        self.model = hf_llama.from_llama2c(CHECKPOINT)
        self.ids = torch.tensor([[1, 403, 407, 261, 378, 288]])

    def test_served_from_a_store_decodes_the_tokens_of_gate_first_in_dram(self):
        # sparsify(store=): stories260K's MLPs from a gate-less bundle file,
        # each layer's neurons guessed before its attention by the
        # pre-hooks; greedy decoding gives gate-first-in-DRAM's tokens.
        def greedy(model, steps=10):
            seq = self.ids[:, :2]
            with torch.no_grad():
                for _ in range(steps):
                    seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], 1)
            return seq[0].tolist()

        sparsify(self.model, sparsity=0.5)
        want = greedy(self.model)
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as d:
            served = hf_llama.from_llama2c(CHECKPOINT)
            sparsify(served, sparsity=0.5, store=os.path.join(d, "stories.spmlb"),
                     budget_bytes=1 << 24, window=2)
            self.assertEqual(greedy(served), want)
            tier = served._sparse_mlp_model_cache
            self.assertGreater(sum(len(tier.speculation(l)) for l in range(len(tier))), 0)
            densify(served)

    def test_round_trip_is_bit_identical(self):
        before = self.model(self.ids)
        originals = [layer.mlp for layer in self.model.model.layers]
        sparsify(self.model, sparsity=0.5)
        self.assertTrue(all(isinstance(l.mlp, LlamaSkipMLP) for l in self.model.model.layers))
        # Shares the tensors, one ModelCache.
        for layer, orig in zip(self.model.model.layers, originals):
            self.assertEqual(layer.mlp.up_proj.weight.data_ptr(), orig.up_proj.weight.data_ptr())
        sparse_out = self.model(self.ids[:, :1])  # one token: a real 50% sparse MLP
        self.assertTrue(torch.isfinite(sparse_out).all())
        densify(self.model)
        self.assertEqual([l.mlp for l in self.model.model.layers], originals)
        self.assertTrue(torch.equal(self.model(self.ids), before))

    def test_trainable_and_bfloat16_models(self):
        # Parameters that require grad (as a freshly loaded model's do), and
        # a bfloat16 model: sparsify runs both (inference; no graph).
        for p in self.model.parameters():
            p.requires_grad_(True)
        sparsify(self.model, sparsity=0.5)
        self.assertTrue(torch.isfinite(self.model(self.ids[:, :1])).all())
        densify(self.model)
        model = hf_llama.from_llama2c(CHECKPOINT).to(torch.bfloat16)
        sparsify(model, sparsity=0.5)
        out = model(self.ids[:, :1])
        self.assertEqual(out.dtype, torch.bfloat16)
        self.assertTrue(torch.isfinite(out.float()).all())

    def test_sparsity_zero_decodes_like_dense(self):
        # Every neuron kept: the dense model's next-token logits.
        dense = torch.stack([self.model(self.ids[:, :t + 1])[0, -1] for t in range(6)])
        sparsify(self.model, sparsity=0.0)
        full = torch.stack([self.model(self.ids[:, :t + 1])[0, -1] for t in range(6)])
        self.assertLess(float((full - dense).abs().max()), 1e-3)
        densify(self.model)

    def test_config_switch_and_predictors(self):
        self.model.config.use_optimized_weight_cache = False
        sparsify(self.model, sparsity=0.5)
        self.assertFalse(self.model.model.layers[0].mlp.use_optimized_cache)
        densify(self.model)
        del self.model.config.use_optimized_weight_cache
        tokens = sample_tokens(self.model, 40, seed=1)
        predictors, stats = train_predictors(self.model, tokens, sparsity=0.5, rank=16, steps=50)
        self.assertEqual(len(stats), 5)
        for s in stats:
            self.assertLess(s["loss_last"], s["loss_first"], s)
            self.assertGreater(s["recall"], 0.0)
        sparsify(self.model, sparsity=0.5, predictor=predictors)
        mlp0 = self.model.model.layers[0].mlp
        self.assertEqual(mlp0.mask_source, "low-rank")
        self.assertIn("model.layers.0.mlp.predictor.a", self.model.state_dict())
        out = self.model(self.ids[:, :1])
        self.assertTrue(torch.isfinite(out).all())
        densify(self.model)
        # Look-ahead: layer l + 1's predictor reads layer l's input.
        ahead, _ = train_predictors(self.model, tokens, sparsity=0.5, rank=16, steps=20,
                                    look_ahead=True)
        self.assertFalse(ahead[0].look_ahead)
        self.assertTrue(ahead[1].look_ahead)
        sparsify(self.model, sparsity=0.5, predictor=ahead)
        self.assertIs(self.model.model.layers[0].mlp._ahead, self.model.model.layers[1].mlp)
        self.assertTrue(torch.isfinite(self.model(self.ids[:, :1])).all())
        densify(self.model)

    def test_bad_arguments_leave_the_model_unchanged(self):
        originals = [layer.mlp for layer in self.model.model.layers]
        for bad in (1.0, -0.5):
            with self.assertRaisesRegex(ValueError, f"sparsity must be in \\[0, 1\\), got {bad}"):
                sparsify(self.model, sparsity=bad)
        with self.assertRaisesRegex(ValueError, "one entry per MLP layer \\(5\\), got 2"):
            sparsify(self.model, predictor=[None, None])
        wrong = LowRankPredictor(torch.zeros(4, 64), torch.zeros(100, 4))
        with self.assertRaisesRegex(ValueError, "predictor for layer 2 maps 64 -> 100"):
            sparsify(self.model, predictor={2: wrong})
        with self.assertRaisesRegex(TypeError, "predictor for layer 0 must be a LowRankPredictor"):
            sparsify(self.model, predictor=[lambda x: x] * 5)
        with self.assertRaisesRegex(TypeError, "predictor must be None"):
            sparsify(self.model, predictor="gate")
        self.assertEqual([l.mlp for l in self.model.model.layers], originals)
        with self.assertRaisesRegex(ValueError, "has no gated MLP"):
            sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        with self.assertRaisesRegex(TypeError, "model must be a torch.nn.Module"):
            sparsify("model")
        with self.assertRaisesRegex(ValueError, "was not sparsified"):
            densify(self.model)
        sparsify(self.model)
        with self.assertRaisesRegex(ValueError, "already sparsified"):
            sparsify(self.model)
        densify(self.model)


if __name__ == "__main__":
    unittest.main()
