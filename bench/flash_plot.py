"""Plots bazel run //bench:flash -- --plot=FILE.png: ms and GB per token
against the budget, the tier per window and each baseline as a line; with
decode rows, a third panel splits the decode loop's ms per token by part
(stall, management, attention, LM head, MLP) at each budget, exact-only and
speculative side by side, with the time reads were in flight marked
(medians of the interleaved pairs)."""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


PARTS = [("stall_ms", "stall (waiting for reads)"), ("manage_ms", "management"),
         ("attention_ms", "attention q/k/v/o"), ("head_ms", "LM head"),
         ("mlp_ms", "MLP compute")]


def decode_panel(ax, decode):
    """Stacked bars: one per (budget, file, speculation), medians of pairs."""
    groups = {}
    for d in decode:
        groups.setdefault((d["budget"], d["file"], d["speculate"]), []).append(d)
    keys = sorted(groups, key=lambda k: (k[1] != "bfloat16", k[1], k[0], k[2]))
    med = {k: {f: statistics.median(d.get(f, 0.0) for d in groups[k]) for f in
               ["ms", "io_ms"] + [p for p, _ in PARTS]} for k in keys}
    xs = range(len(keys))
    bottom = [0.0] * len(keys)
    for k, (part, label) in enumerate(PARTS):
        vals = [med[key][part] for key in keys]
        ax.bar(xs, vals, bottom=bottom, label=label, color=plt.cm.Set2(k))
        bottom = [b + v for b, v in zip(bottom, vals)]
    other = [med[key]["ms"] - b for key, b in zip(keys, bottom)]
    ax.bar(xs, [max(0.0, o) for o in other], bottom=bottom, label="other",
           color="lightgrey")
    ax.scatter(xs, [med[key]["ms"] for key in keys], marker="_", s=300, color="black",
               label="ms per token", zorder=3)
    ax.scatter(xs, [med[key]["io_ms"] for key in keys], marker="o", s=18, color="crimson",
               label="reads in flight (device busy; overlaps the parts)", zorder=3)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{f}\n{b:.2f}\n{'spec' if s else 'exact'}" for b, f, s in keys],
                       fontsize=7)
    ax.set_xlabel("file, DRAM budget (x its MLP weights), exact-only or speculative")
    ax.set_ylabel("ms per token (decode loop)")
    ax.legend(fontsize=7)


def main(data, out):
    loaded = json.load(open(data))
    rows = [r for r in loaded.get("rows", []) if r["ran"]]
    decode = loaded.get("decode", [])
    panels = 3 if decode else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    ms_ax, gb_ax = axes[0], axes[1]
    if decode:
        decode_panel(axes[2], decode)
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
