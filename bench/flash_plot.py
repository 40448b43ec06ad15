"""Plots bazel run //bench:flash -- --plot=FILE.png: ms and GB per token
against the budget, the tier per window and each baseline as a line."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(data, out):
    rows = [r for r in json.load(open(data))["rows"] if r["ran"]]
    fig, (ms_ax, gb_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    windows = sorted({r["window"] for r in rows if r["variant"] == "tier"})
    for w in windows:
        tier = sorted((r for r in rows if r["variant"] == "tier" and r["window"] == w),
                      key=lambda r: r["budget"])
        budgets = [r["budget"] for r in tier]
        ms_ax.plot(budgets, [r["ms"] for r in tier], marker="o", label=f"tier, window {w}")
        gb_ax.plot(budgets, [r["gb"] for r in tier], marker="o", label=f"tier, window {w}")
    baselines = [r for r in rows if r["variant"] != "tier"]
    for k, r in enumerate(baselines):
        label = r["variant"] + (f" (budget {r['budget']:.2f})" if r["budget"] else "")
        style = dict(linestyle=(0, (4, 2 + k)), linewidth=1.2, label=label,
                     color=plt.cm.Dark2(k % 8))
        ms_ax.axhline(r["ms"], **style)
        gb_ax.axhline(r["gb"], **style)
    ms_ax.set_yscale("log")
    ms_ax.set_xlabel("DRAM budget (x the MLP weights)")
    ms_ax.set_ylabel("ms per token")
    gb_ax.set_xlabel("DRAM budget (x the MLP weights)")
    gb_ax.set_ylabel("GB read from the device per token")
    gb_ax.legend(fontsize=7)
    fig.suptitle("sparse_mlp flash tier (bazel run //bench:flash)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
