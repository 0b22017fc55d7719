"""The paper's Figure 1: quantization error of E5M2, E4M3, E3M4 and INT8 on one tensor.

A tensor drawn from N(0, sigma) (sigma = 0.5 as a standard deviation by default; pass
--sigma 0.7071 for a variance of 0.5) in which about 1% of the elements are replaced by
outliers uniform in [-6, 6]. Each format is scaled to the tensor's max
(scale = amax / format.max, the paper's max scaling) and fake-quantized with
fp8onnx's kernels (onnxruntime's Q/DQ semantics, saturating); the mean squared error
of each is printed as a table (with its split between the Gaussian bulk and the
outliers) and drawn as a PNG: the histogram of the tensor, each format's grid of
representable values at its scale, and the MSE bars.

    python tools/fig1.py [--out fig1.png] [--n 1000000] [--seed 0] [--sigma 0.5]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# Replace the script's own folder on sys.path by the repository root: tools/ holds a
# script that would shadow an installed package numba imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from fp8onnx import formats, kernels  # noqa: E402
from fp8onnx.kernels import _cast  # noqa: E402

FORMATS = ("e5m2", "e4m3", "e3m4", "int8")
LABELS = {"e5m2": "E5M2", "e4m3": "E4M3", "e3m4": "E3M4", "int8": "INT8"}
COLORS = {"e5m2": "tab:blue", "e4m3": "tab:orange", "e3m4": "tab:green", "int8": "tab:red"}


def make_tensor(n, sigma, outlier_frac, seed):
    """(x, is_outlier): N(0, sigma) with ``outlier_frac`` of it replaced by U(-6, 6)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, sigma, n).astype(np.float32)
    is_out = rng.random(n) < outlier_frac
    x[is_out] = rng.uniform(-6.0, 6.0, int(is_out.sum())).astype(np.float32)
    return x, is_out


def measure(x, is_out):
    """Per format: scale, MSE over all, and each part's contribution to that MSE."""
    amax = kernels.amax(x)
    rows = []
    for name in FORMATS:
        f = formats.get(name)
        scale = f.scale_for(amax)
        err = (f.fake_quant(x, scale).astype(np.float64) - x) ** 2
        rows.append(dict(name=name, scale=float(scale), mse=err.mean(),
                         bulk=err[~is_out].sum() / x.size, outl=err[is_out].sum() / x.size,
                         sqnr=10 * np.log10(np.mean(x.astype(np.float64) ** 2) / err.mean())))
    return float(amax), rows


def grid(name, scale):
    """Non-negative representable values of ``name`` at ``scale``."""
    v = _cast.decode_table(formats.get(name).kernel_id).astype(np.float64) * scale
    return np.unique(v[np.isfinite(v) & (v >= 0)])


def draw(x, amax, rows, out, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), gridspec_kw=dict(height_ratios=[3, 2, 2.3]))
    ax = axes[0]
    ax.hist(x, bins=400, range=(-amax, amax), color="0.4", log=True)
    ax.set_title(title)
    ax.set_xlabel("value")
    ax.set_ylabel("count (log)")

    ax = axes[1]
    for i, r in enumerate(rows):
        g = grid(r["name"], r["scale"])
        g = np.concatenate([-g[::-1], g])
        ax.vlines(g, i - 0.38, i + 0.38, color=COLORS[r["name"]], lw=0.6)
        ax.text(amax * 1.02, i, f"{np.sum(np.abs(g) <= 1.0)} values in [-1, 1]",
                va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [LABELS[r["name"]] for r in rows])
    ax.set_xlim(-amax * 1.02, amax * 1.45)
    ax.set_xlabel("representable values at scale = amax / max")
    ax.set_title("quantization grids (each tick is one code)")

    ax = axes[2]
    names = [LABELS[r["name"]] for r in rows]
    bulk = [r["bulk"] for r in rows]
    outl = [r["outl"] for r in rows]
    ax.bar(names, bulk, color=[COLORS[r["name"]] for r in rows], label="Gaussian bulk")
    ax.bar(names, outl, bottom=bulk, color="0.75", label="outliers")
    for i, r in enumerate(rows):
        ax.text(i, r["mse"], f"{r['mse']:.2e}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("MSE")
    ax.set_title("MSE of fake_quant (max scaling), split by where the error comes from")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="fig1.png")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--sigma", type=float, default=0.5, help="standard deviation of the bulk")
    ap.add_argument("--outliers", type=float, default=0.01, help="fraction of outliers")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    x, is_out = make_tensor(args.n, args.sigma, args.outliers, args.seed)
    amax, rows = measure(x, is_out)
    print(f"tensor: {args.n} values, N(0, {args.sigma}) + {is_out.mean():.2%} outliers "
          f"U(-6, 6), amax {amax:.4f}, seed {args.seed}\n")
    print("| format | scale | MSE | from bulk | from outliers | SQNR dB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {LABELS[r['name']]} | {r['scale']:.4g} | {r['mse']:.3e} | {r['bulk']:.3e} | "
              f"{r['outl']:.3e} | {r['sqnr']:.1f} |")
    order = " < ".join(LABELS[r["name"]] for r in sorted(rows, key=lambda r: r["mse"]))
    print(f"\nMSE order (best first): {order}")
    draw(x, amax, rows, args.out,
         f"N(0, {args.sigma}) with {is_out.mean():.1%} outliers in [-6, 6]; MSE order: {order}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
