"""examples/llama2c_sparse.py, briefly: the dense model's tokens reproduced
with every neuron active, quality falling with the active fraction, both
mask kinds."""

import unittest

import llama2c_sparse


class Llama2cSparseTest(unittest.TestCase):

    def test_topk_and_threshold(self):
        for mask in ("topk", "threshold"):
            rows = llama2c_sparse.run(fractions=(1.0, 0.5, 0.2), tokens=24, mask=mask)
            dense, full, half, fifth = rows
            where = f"mask {mask}"
            self.assertEqual(full["tokens"], dense["tokens"], where)
            self.assertEqual(full["agree"], 1.0, where)
            self.assertLess(full["kl"], 1e-6, where)
            self.assertAlmostEqual(full["active"], 1.0, places=6, msg=where)
            # Fewer neurons, further from the dense distribution.
            self.assertGreater(fifth["kl"], half["kl"], where)
            self.assertGreater(half["kl"], full["kl"], where)
            if mask == "topk":
                self.assertAlmostEqual(half["active"], 86 / 172, places=6, msg=where)
            else:  # calibrated on the dense run: about the fraction asked for
                self.assertLess(abs(half["active"] - 0.5), 0.1, where)
            # Borrowed sources: the pool holds the packed rows only.
            self.assertEqual(half["footprint"]["pool_in_use"], half["footprint"]["packed_bytes"]
                             + 5 * 172 * 64 * 4)  # plus each layer's transposed down

    def test_flash_tier_decodes_the_same_tokens(self):
        # Served from a bundle file under a budget of 60% of the neurons per
        # layer, window 2, on the in-memory run's masks: the same tokens.
        rows = llama2c_sparse.run(fractions=(0.5, 0.3), tokens=16, flash=True, budget=0.6,
                                  window=2)
        for row in rows[1:]:
            self.assertTrue(row["flash_same"], row["fraction"])
            self.assertLess(row["flash_capacity"], 172)
            self.assertGreater(row["flash_loads"], 0)
            # Gate-first guessed one attention block early: the same tokens
            # as gate-first in DRAM, most of the exact set guessed, some
            # bytes read that the exact selection did not need.
            self.assertTrue(row["spec_same"], row["fraction"])
            self.assertGreater(row["spec_recall"], 0.6)
            self.assertGreaterEqual(row["spec_extra_kb"], 0.0)

    def test_compare_masks(self):
        # The training-free and learned masks each closer to dense than
        # random masks of the same size; recall reported for every layer.
        rows, recalls = llama2c_sparse.compare(sparsities=(0.5,), tokens=24, calibration=160,
                                               steps=150)
        kl = {r["masks"]: r["kl"] for r in rows if r["sparsity"] == 0.5}
        self.assertLess(kl["gate-first"], kl["random"] / 2)
        self.assertLess(kl["learned"], kl["random"])
        self.assertLess(kl["oracle"], kl["gate-first"])
        self.assertEqual(len(recalls[0.5]), 5)
        for recall, precision in recalls[0.5]:
            self.assertGreater(recall, 0.5)  # above chance (0.5 of the neurons kept)
        for r in rows[1:]:
            self.assertAlmostEqual(r["active"], 86 / 172, places=6)

    def test_compare_weights(self):
        # bfloat16 and int8 close to float32, q4 further; gate-first adds its
        # own loss; quantized layers take fewer bytes.
        rows = llama2c_sparse.compare_weights(tokens=24, formats=(("bfloat16", 0), ("int8", 32),
                                                                  ("int8", 32, True), ("q4", 32)))
        kl = {(r["weights"], r["sparsity"]): r["kl"] for r in rows}
        size = {r["weights"]: r["layer_bytes"] for r in rows}
        self.assertLess(kl[("int8", 0.0)], 0.05)
        self.assertLess(kl[("int8+x8", 0.0)], 0.05)  # x rounded to int8 as well
        self.assertLess(kl[("bfloat16", 0.0)], kl[("int8", 0.0)] + 0.01)
        self.assertGreater(kl[("q4", 0.0)], kl[("int8", 0.0)])
        self.assertGreater(kl[("int8", 0.5)], kl[("int8", 0.0)])
        self.assertLess(size["int8"], size["bfloat16"] * 0.6)
        self.assertLess(size["q4"], size["int8"] * 0.6)
        for r in rows:
            self.assertAlmostEqual(r["active"], 1.0 if r["sparsity"] == 0 else 86 / 172, places=6)

    def test_main_succeeds(self):
        self.assertEqual(llama2c_sparse.main(["--tokens", "8", "--fractions", "1.0,0.5"]), 0)


if __name__ == "__main__":
    unittest.main()
