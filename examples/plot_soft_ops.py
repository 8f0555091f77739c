"""Plot softrank's operators on fixed inputs as the regularization strength changes.

Makes the figure in the README (``docs/soft_ops.png``).  Top two rows: soft_sort and
soft_rank of a fixed vector, one panel per regularization (columns); each line is one
output coordinate as a function of the strength, from 1e-3 (the exact sort / ranks) to
1e2 (everything blended: the mean of the values for l2 soft_sort, the middle rank
(n + 1) / 2 for soft_rank).  Bottom row: the soft_topk mask of evenly spaced values
against the value, at a few strengths (a step at the k-th largest value that widens with
the strength; each mask sums to k), and the soft median and quartiles of the fixed
vector against the strength (the hard ones at small strengths).

    python examples/plot_soft_ops.py                  # writes docs/soft_ops.png
    python examples/plot_soft_ops.py --out ops.png
"""

import argparse
import os

DEFAULT_VALUES = [2.1, -0.4, 0.7, 1.6, 0.5]
TOPK_VALUES = [i / 10 for i in range(-20, 21)]  # 41 evenly spaced values in [-2, 2]
TOPK_K = 10
TOPK_STRENGTHS = [0.01, 0.5, 2.0, 8.0]
QUANTILES = [0.25, 0.5, 0.75]
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                           "soft_ops.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Plot softrank.soft_sort, soft_rank and soft_quantile of a fixed vector "
        "against the regularization strength, for l2 and kl, and soft_topk masks of evenly "
        "spaced values at a few strengths.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--values", type=float, nargs="+", default=DEFAULT_VALUES,
                   help="the vector to sort and rank")
    p.add_argument("--min-strength", type=float, default=1e-3)
    p.add_argument("--max-strength", type=float, default=1e2)
    p.add_argument("--num", type=int, default=300, help="number of strengths (log-spaced)")
    p.add_argument("--out", default=os.path.normpath(DEFAULT_OUT), help="output PNG path")
    p.add_argument("--dpi", type=int, default=120)
    return p.parse_args(argv)


if __name__ == "__main__":
    # Parsed before NumPy, softrank and matplotlib are imported: --help answers at once.
    _ARGS = parse_args()

import numpy as np

import softrank


def curves(values, strengths):
    """{(op, regularization): array (len(strengths), n)}."""
    out = {}
    for op_name, op in (("soft_sort", softrank.soft_sort), ("soft_rank", softrank.soft_rank)):
        for reg in ("l2", "kl"):
            out[op_name, reg] = np.stack([op(values, reg, float(s)) for s in strengths])
    for reg in ("l2", "kl"):  # array (len(strengths), len(QUANTILES))
        out["soft_quantile", reg] = np.stack(
            [softrank.soft_quantile(values, QUANTILES, reg, float(s)) for s in strengths])
    return out


def topk_masks(values, k, strengths):
    """[soft_topk mask of values] per strength (l2 only: the target has zeros)."""
    return [softrank.soft_topk(values, k, "l2", s) for s in strengths]


def main(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(args.values, dtype=np.float64)
    strengths = np.logspace(np.log10(args.min_strength), np.log10(args.max_strength),
                            args.num)
    data = curves(values, strengths)
    n = len(values)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, n))
    # Constrained layout makes room for the legends, which sit outside the axes (right of
    # each row: one legend serves both regularizations), so they never cover a curve.
    fig, axes = plt.subplots(3, 2, figsize=(11.5, 10.5), layout="constrained")
    order = np.argsort(values)
    for col, reg in enumerate(("l2", "kl")):
        ax = axes[0, col]
        for j in range(n):  # j-th smallest output of soft_sort
            ax.plot(strengths, data["soft_sort", reg][:, j], color=colors[j],
                    label=f"sorted[{j}] (hard: {values[order[j]]:g})")
        ax.set_title(f"soft_sort, regularization={reg!r}")
        ax.set_ylabel("soft sorted value")
        ax = axes[1, col]
        for rank_pos, i in enumerate(order):  # colour by the hard rank of x[i]
            ax.plot(strengths, data["soft_rank", reg][:, i], color=colors[rank_pos],
                    label=f"x[{i}] = {values[i]:g}")
        ax.set_title(f"soft_rank, regularization={reg!r}")
        ax.set_ylabel("soft rank (1 = smallest)")
        ax.set_xlabel("regularization_strength")
    topk_values = np.asarray(TOPK_VALUES)
    ax = axes[2, 0]
    shades = plt.get_cmap("plasma")(np.linspace(0.0, 0.8, len(TOPK_STRENGTHS)))
    for s, mask, color in zip(TOPK_STRENGTHS, topk_masks(topk_values, TOPK_K, TOPK_STRENGTHS),
                              shades):
        ax.plot(topk_values, mask, "o-", ms=2.5, color=color, label=f"strength {s:g}")
    ax.set_title(f"soft_topk mask, k={TOPK_K} of {len(topk_values)} evenly spaced values")
    ax.set_xlabel("value")
    ax.set_ylabel("mask (each sums to k)")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[2, 1]
    for j, q in enumerate(QUANTILES):
        for reg, style in (("l2", "-"), ("kl", "--")):
            ax.plot(strengths, data["soft_quantile", reg][:, j], style,
                    color=colors[2 * j], label=f"q={q:g}, {reg}")
    ax.set_title("soft_quantile (soft median and quartiles)")
    ax.set_ylabel("soft quantile")
    ax.set_xlabel("regularization_strength")
    for row, title in ((0, "soft_sort output"), (1, "soft_rank of"), (2, "soft_quantile")):
        handles, labels = axes[row, 1].get_legend_handles_labels()
        # Largest on top, as in the panels.
        axes[row, 1].legend(handles[::-1], labels[::-1], title=title, fontsize=8,
                            title_fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5),
                            frameon=False)
    for ax in axes.flat:
        if ax is not axes[2, 0]:  # every panel but the top-k one has the strength on x
            ax.set_xscale("log")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"softrank on x = {np.array2string(values, separator=', ')} "
                 "(top-k: on the values of its panel)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    print(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main(_ARGS)
