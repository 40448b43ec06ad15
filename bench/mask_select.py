"""Masks from predictor scores: the native exact top-k against what a
PyTorch user does otherwise, in one run.

    bazel run //bench:mask_select                  # I = 8192 and 14336
    bazel run //bench:mask_select -- --help

For [I] and [tokens, I] scores (float32 and bfloat16), k = fraction x I,
medians of --reps calls of:
  native        WeightCache.update_topk(scores, k): exact selection straight
                into the cache's mask (O(I) per token, no sort)
  torch.topk    torch.topk(...).indices scattered into a bool mask, then
                WeightCache.update(mask)
  approx        an approximate k-th-score threshold of the kind the public
                implementation of the design ships (a one-row count sketch:
                a 256-bucket histogram of the scores, walked from the top
                until k are covered), then update(mask)
The caches skip the copies (tolerance above I), so the times are the
selection and the mask handling alone. Exactness: neurons in the mask but
not in the exact top-k, over k.
"""

import argparse
import statistics
import time

import torch

from sparse_mlp import WeightCache


def exact_mask(scores, k):
    """The reference: per token the k highest, ties to the lower index (a
    stable descending sort), united over tokens."""
    rows = scores.reshape(-1, scores.shape[-1]).float()
    mask = torch.zeros(rows.shape[1], dtype=torch.bool)
    for row in rows:
        mask[torch.sort(row, descending=True, stable=True).indices[:k]] = True
    return mask


def topk_mask(scores, k):
    idx = torch.topk(scores, k, dim=-1).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask


def approx_mask(scores, k, buckets=256):
    """One threshold from the first token's histogram, applied to all."""
    s = scores.float()
    lo, hi = float(s.min()), float(s.max())
    hist = torch.histc(s.reshape(-1, s.shape[-1])[0], bins=buckets, min=lo, max=hi)
    covered = torch.cumsum(hist.flip(0), 0)
    top = int(torch.nonzero(covered >= k)[0]) if k > 0 else -1
    threshold = hi - (top + 1) * (hi - lo) / buckets
    return s >= threshold


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8192,14336")
    parser.add_argument("--fraction", type=float, default=0.3, help="k / I")
    parser.add_argument("--tokens", default="1,4")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k = "
          f"{args.fraction} x I, medians of {args.reps}")
    print(f"{'I':>6} {'T':>2} {'dtype':9} {'native_us':>10} {'topk_us':>9} {'approx_us':>10} "
          f"{'native_err':>10} {'approx_err':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        k = int(args.fraction * size)
        cache = WeightCache(torch.zeros(size, dtype=torch.bool), torch.zeros(size, 8),
                            torch.zeros(size, 8), torch.zeros(8, size), tolerance=size + 1)
        for tokens in (int(t) for t in args.tokens.split(",")):
            for dtype in (torch.float32, torch.bfloat16):
                scores = torch.randn(tokens, size).to(dtype)
                scores = scores[0] if tokens == 1 else scores
                exact = exact_mask(scores, k)
                native = median_time(lambda: cache.update_topk(scores, k), args.reps)
                cache.catch_up()
                got = torch.zeros(size, dtype=torch.bool)
                got[cache.active_indices()] = True
                topk = median_time(lambda: cache.update(topk_mask(scores, k)), args.reps)
                approx = median_time(lambda: cache.update(approx_mask(scores, k)), args.reps)
                am = approx_mask(scores, k)
                am = am if tokens == 1 else am.any(dim=0)
                native_err = int((got & ~exact).sum()) / max(k, 1)
                approx_err = int((am & ~exact).sum()) / max(k, 1)
                print(f"{size:>6} {tokens:>2} {str(dtype)[6:]:9} {native * 1e6:>10.1f} "
                      f"{topk * 1e6:>9.1f} {approx * 1e6:>10.1f} {native_err:>10.3f} "
                      f"{approx_err:>10.3f}")


if __name__ == "__main__":
    main()
