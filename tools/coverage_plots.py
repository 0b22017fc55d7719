"""The coverage report's cost section and figures, drawn from coverage_report.summarize's output.

``cost_section(s)`` is the markdown of the cost table (size, compile time, peak memory and
run time of ours beside FP32 and the peer; run times as side-by-side ratios to FP32); ``write_plots(s, out)`` draws the paper's
Figure 4 (loss per model and format) and Figure 5 (loss against model size) as PNGs::

    >>> s = coverage_report.summarize(rows)                       # doctest: +SKIP
    >>> "\\n".join(cost_section(s)); write_plots(s, Path("docs/coverage"))  # doctest: +SKIP

The tables about accuracy stay in coverage_report.py and coverage_tables.py; this module only
presents costs and figures.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import List, Optional

__all__ = ["cost_section", "cost_table", "write_plots", "fig4_loss_per_model", "fig5_loss_vs_size"]

#: tools/coverage_report.py, set by its ``_sibling`` loader, the only way this module is
#: loaded (the two call each other).
report = None


def _report():
    return report


def _done(r: Optional[dict]) -> bool:
    """The job ran to the end (its compile and size figures hold even if a session failed)."""
    return bool(r) and r.get("status") == "ok"


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _run_ratio(r: Optional[dict]) -> str:
    """A row's side-by-side run-time ratio to FP32; ``n/s`` for a row from before the worker
    measured it (its run time and the FP32 row's came from different jobs, at different
    load, so dividing them is not a ratio); ``—`` for no row."""
    if not _done(r):
        return "—"
    return "n/s" if r.get("run_ratio") is None else f"{r['run_ratio']:.2f}"


def cost_table(s: dict) -> List[str]:
    """The cost table's lines; sets ``s["cost_medians"]`` (median ratios ours/peer and
    ours/FP32, peer/FP32 run time)."""
    by = s["rows"]
    lines = ["| model | FP32 MB | ours MB (E4M3) | peer MB | compile s ours | compile s peer | ratio | "
             "peak RSS MB ours | peak RSS MB peer | ratio | compile ΔRSS MB ours / peer | run ms FP32 | "
             "run ours/FP32 | run peer/FP32 |", "|---" * 14 + "|"]
    ratios_t, ratios_m, ratios_d, run_o, run_p = [], [], [], [], []
    for m in s["models"]:
        f32, o, p = by.get((m, "fp32"), {}), by.get((m, "e4m3-std"), {}), by.get((m, "peer"), {})
        has = lambda r, *keys: _done(r) and all(r.get(k) is not None for k in keys)  # noqa: E731
        rt = o["compile_s"] / p["compile_s"] if has(o, "compile_s") and has(p, "compile_s") and p["compile_s"] else None
        rm = (o["compile_peak_rss_mb"] / p["compile_peak_rss_mb"]
              if has(o, "compile_peak_rss_mb") and has(p, "compile_peak_rss_mb") else None)
        do = o["compile_peak_rss_mb"] - o["base_rss_mb"] if has(o, "compile_peak_rss_mb", "base_rss_mb") else None
        dp = p["compile_peak_rss_mb"] - p["base_rss_mb"] if has(p, "compile_peak_rss_mb", "base_rss_mb") else None
        ratios_t.append(rt)
        ratios_m.append(rm)
        ratios_d.append(do / dp if do is not None and dp else None)
        run_o.append(o["run_ratio"] if has(o, "run_ratio") else None)
        run_p.append(p["run_ratio"] if has(p, "run_ratio") else None)

        def g(r, k, scale=1.0, fmt="{:.1f}"):
            return fmt.format(r[k] * scale) if _done(r) and r.get(k) is not None else "—"
        lines.append(f"| {m} | {g(f32, 'size_bytes', 1e-6, '{:.2f}')} | {g(o, 'size_bytes', 1e-6, '{:.2f}')} | "
                     f"{g(p, 'size_bytes', 1e-6, '{:.2f}')} | {g(o, 'compile_s')} | {g(p, 'compile_s')} | "
                     f"{'—' if rt is None else f'{rt:.2f}'} | {g(o, 'compile_peak_rss_mb', 1, '{:.0f}')} | "
                     f"{g(p, 'compile_peak_rss_mb', 1, '{:.0f}')} | {'—' if rm is None else f'{rm:.2f}'} | "
                     f"{'—' if do is None else f'{do:.0f}'} / {'—' if dp is None else f'{dp:.0f}'} | "
                     f"{g(f32, 'run_s', 1e3, '{:.2f}')} | {_run_ratio(o)} | {_run_ratio(p)} |")
    s["cost_medians"] = {"compile_time_ratio": _median(ratios_t), "peak_rss_ratio": _median(ratios_m),
                         "compile_delta_rss_ratio": _median(ratios_d), "run_ratio_ours": _median(run_o),
                         "run_ratio_peer": _median(run_p)}
    med = s["cost_medians"]
    fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines.append(f"| **median ratio** | | | | | | **{fmt(med['compile_time_ratio'])}** | | | "
                 f"**{fmt(med['peak_rss_ratio'])}** | ΔRSS ratio **{fmt(med['compile_delta_rss_ratio'])}** | | "
                 f"**{fmt(med['run_ratio_ours'])}** | **{fmt(med['run_ratio_peer'])}** |")
    return lines


def cost_section(s: dict) -> List[str]:
    """The report's cost section: heading, table and what each column measures."""
    L = ["\n## Cost: ours (E4M3, standard scheme) beside the peer (defaults)\n"]
    L += cost_table(s)
    L.append("")
    L.append("Compile time: wall seconds of `fp8onnx.compile_model` (calibration included; Numba kernels "
             "warmed up first by a tiny compile, `warmup_s` in the rows) and of `quantize_static`. Peak RSS: "
             "`getrusage` max RSS of the job's fresh process right after compiling (imports, model and "
             "calibration data included); ΔRSS subtracts the same figure taken just before. Run time: "
             "*run ms FP32* is the median of 5 runs of one evaluation batch in the FP32 row's job (onnxruntime, "
             "default threads). *ours/FP32* and *peer/FP32* are measured side by side in the quantized row's "
             "own job: the FP32 model and the quantized one, each in a one-thread session (ours in "
             "`fp8onnx.runtime.InferenceSession`, emulated FP8; the peer's native FP8 Q/DQ in a default "
             "onnxruntime session), run in alternating order on one evaluation batch for 3-9 rounds; the cell "
             "is the median of the per-round ratios (`run_ratio` in the rows).\n")
    cells = [_run_ratio(s["rows"].get((m, c))) for m in s["models"] for c in ("e4m3-std", "peer")]
    if "n/s" in cells:
        L.append("n/s: the row is from before side-by-side timing; its run time and the FP32 row's were "
                 "measured in different jobs at different machine load, so they are not divided (rerun the "
                 "configuration for a ratio).\n")
    return L


def _series(s: dict):
    """(label, configuration) per plotted series (the standard scheme's formats, then the
    peers) and one colour each; INT8 grey, the peers orange and purple."""
    series = [(_report().format_label(f), f"{f}-std") for f in s["formats"]
              if s["within"][("std", "")][f] is not None]
    series += [("peer", "peer"), ("peer sym", "peer-sym")]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#17becf", "#bcbd22", "#8c564b", "#e377c2"]
    colors = [("#7f7f7f" if label == "INT8" else palette.pop(0) if palette else "#000000")
              for label, _ in series[:-2]] + ["#ff7f0e", "#9467bd"]
    return series, colors


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def fig4_loss_per_model(s: dict, path: Path) -> Path:
    """Figure 4: relative loss per model, one bar per format (standard scheme) and peer."""
    import numpy as np

    plt, threshold = _pyplot(), _report().THRESHOLD
    models = s["models"]
    series, colors = _series(s)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(models) + 2), 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(models))
    for i, (label, cfg) in enumerate(series):
        vals = [s["loss"].get((m, cfg)) for m in models]
        y = [100 * v if v is not None else np.nan for v in vals]
        pos = x + (i - len(series) / 2 + 0.5) * width
        ax.bar(pos, y, width, label=label, color=colors[i])
        failed = [p for p, m, v in zip(pos, models, vals) if v is None and (m, cfg) in s["rows"]]
        ax.plot(failed, [0.0] * len(failed), "x", color=colors[i], ms=7, mew=2)
    ax.axhline(100 * threshold, color="k", ls="--", lw=0.8, label="1%")
    ax.plot([], [], "x", color="k", label="failed")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylabel("relative loss (%), symlog")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.set_title("Relative loss per model and format (standard scheme; peer: default session)")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig5_loss_vs_size(s: dict, path: Path) -> Path:
    """Figure 5: relative loss against the FP32 model's size, one colour per series."""
    plt, threshold = _pyplot(), _report().THRESHOLD
    series, colors = _series(s)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    plotted = 0
    for (label, cfg), c in zip(series, colors):
        xs, ys = [], []
        for m in s["models"]:
            v = s["loss"].get((m, cfg))
            if v is not None:
                xs.append(s["rows"][(m, "fp32")].get("fp32_size_bytes", 0) / 1e6)
                ys.append(100 * v)
        if xs:
            ax.scatter(xs, ys, label=label, color=c, s=28, alpha=0.8)
            plotted += len(xs)
    ax.axhline(100 * threshold, color="k", ls="--", lw=0.8)
    if plotted:  # a results file without standard-scheme rows leaves nothing to put on a log axis
        ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    lows = [100 * v for v in s["loss"].values() if v is not None]
    ax.set_ylim(bottom=min([0.0] + lows) * 1.5 - 0.01)
    ax.set_xlabel("FP32 model size (MB, log)")
    ax.set_ylabel("relative loss (%), symlog")
    ax.set_title("Relative loss against model size (standard scheme)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(s: dict, out: Path) -> List[Path]:
    """Figure 4 and Figure 5 into ``out``; returns their paths."""
    out = Path(out)
    return [fig4_loss_per_model(s, out / "fig4_loss_per_model.png"),
            fig5_loss_vs_size(s, out / "fig5_loss_vs_size.png")]
