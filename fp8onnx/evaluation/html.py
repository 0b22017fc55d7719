"""The evaluation report as one self-contained HTML page (figures inlined as base64 PNG).

Sections: the output fidelity table, the task metric, per-layer SQNR bars (worst first),
a table of every quantized tensor, and for the ``top`` worst tensors a histogram of
|float value| on a log2 axis with the format's representable magnitudes (times the
scale) drawn over it, so underflow below the smallest step and clipping above the max
are visible at a glance. Needs matplotlib (the ``report`` extra); the Agg backend is
used, no display is touched.

>>> html = render_html(result)                      # doctest: +SKIP
>>> "<img src=\\"data:image/png;base64," in html    # doctest: +SKIP
True
"""
from __future__ import annotations

import base64
import html as _html
import io
import math

import numpy as np

from .. import formats as _formats
from ..errors import UserError

__all__ = ["render_html", "representable_magnitudes"]


def _plt():
    try:
        import matplotlib
    except ImportError as e:
        raise UserError("the HTML report needs matplotlib: install matplotlib (pip install matplotlib) "
                        "or write --json only") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def representable_magnitudes(fmt) -> np.ndarray:
    """Sorted finite positive values of ``fmt`` at scale 1 (from all 256 codes)."""
    fmt = _formats.get(fmt)
    codes = np.arange(256, dtype=np.uint8)
    if fmt.kind == "int":
        codes = codes.view(np.int8)
    v = fmt.dequantize(codes, np.float32(1.0))
    v = v[np.isfinite(v) & (v > 0)]
    return np.unique(v)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v, spec=".3g"):
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isinf(v):
            return "&infin;" if v > 0 else "-&infin;"
        if math.isnan(v):
            return "nan"
        return format(v, spec)
    return _html.escape(str(v))


def _sqnr_bars(plt, layers):
    shown = [x for x in layers if x.sqnr_db is not None]
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.22 * len(shown) + 1)))
    y = np.arange(len(shown))
    finite = [min(x.sqnr_db, 99.0) for x in shown]
    colors = ["#c0392b" if x.kind == "activation" else "#2980b9" for x in shown]
    ax.barh(y, finite, color=colors)
    local = [x.local_sqnr_db if x.local_sqnr_db is not None else np.nan for x in shown]
    ax.plot(np.minimum(local, 99.0), y, "k|", markersize=10, label="local SQNR (activations)")
    ax.set_yticks(y, [f"{x.tensor} ({x.format})" for x in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR vs float model (dB); red: activation, blue: weight")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def _histogram(plt, layer):
    h = layer.hist
    edges = h.edges()
    per_channel = layer.kind == "weight"
    shift = 0.0 if per_channel or not layer.scale else math.log2(layer.scale)
    nz = np.nonzero(h.counts)[0]
    fmt = _formats.get(layer.format)
    grid = representable_magnitudes(fmt)
    lo = min(edges[nz[0]] if nz.size else 0, math.log2(grid[0] / 2)) - 1
    hi = max(edges[nz[-1] + 1] if nz.size else 1, math.log2(grid[-1])) + 1
    fig, ax = plt.subplots(figsize=(8, 2.6))
    total = max(1, int(h.counts.sum()) + h.zeros)
    ax.bar(edges[:-1] + shift, h.counts / total, width=np.diff(edges), align="edge", color="#7f8c8d")
    ax.vlines(np.log2(grid) + shift, 0, 1, transform=ax.get_xaxis_transform(), colors="#e67e22",
              linewidth=0.5, alpha=0.6)
    ax.axvline(math.log2(fmt.max) + shift, color="#c0392b", linewidth=1.2, label=f"{fmt.name} max")
    ax.axvline(math.log2(grid[0] / 2) + shift, color="#8e44ad", linewidth=1.2, label="rounds to 0 below")
    ax.set_xlim(lo + shift, hi + shift)
    unit = "|w| / channel scale" if per_channel else "|x|"
    ax.set_xlabel(f"log2 {unit} (orange: {fmt.name} grid{'' if per_channel else ' x scale'})")
    ax.set_ylabel("fraction")
    ax.set_title(f"{layer.kind} {layer.tensor}: {layer.summary()}; zeros {h.zeros / total:.2%}", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return fig


_CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse;"
        "font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def _table(headers, rows) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_html.escape(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return "\n".join(out + ["</table>"])


def render_html(result, *, top: int = 6, title: str = "fp8onnx evaluation") -> str:
    """The report page for an :class:`~fp8onnx.evaluation.result.EvalResult`."""
    plt = _plt()
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_html.escape(title)}</h1>",
             f"<p>{result.samples} samples in {result.feeds} feeds, {result.seconds:.2f} s.</p>",
             "<h2>Outputs: FP8 against FP32</h2>",
             _table(["output", "cosine", "SQNR dB", "max abs error", "top-1 agreement", "exact match"],
                    [[_html.escape(o.name), _fmt(o.cosine, ".6f"), _fmt(o.sqnr_db, ".2f"),
                      _fmt(o.max_abs_error), _fmt(o.top1_agreement, ".4f"), _fmt(o.exact_match, ".4f")]
                     for o in result.outputs]),
             f"<p>Top-1 agreement rule: {_html.escape(result.top1_rule)}.</p>"]
    if result.metric_fp32 is not None:
        parts.append(_table(["task metric", "FP32", "FP8", "relative loss"],
                            [["metric", _fmt(result.metric_fp32, ".6g"), _fmt(result.metric_fp8, ".6g"),
                              _fmt(None if result.relative_loss is None else 100 * result.relative_loss, ".3f")
                              + ("%" if result.relative_loss is not None else "")]]))
    layers = result.layers
    if layers:
        parts.append("<h2>Per-layer SQNR (worst first)</h2>")
        fig = _sqnr_bars(plt, layers)
        parts.append(f"<img alt='per-layer SQNR' src='data:image/png;base64,{_png(fig)}'>")
        plt.close(fig)
        parts.append(_table(
            ["tensor", "kind", "format", "SQNR dB", "local SQNR dB", "saturation %", "underflow %",
             "amax observed", "amax calibrated", "note"],
            [[_html.escape(x.tensor), x.kind, x.format, _fmt(x.sqnr_db, ".2f"), _fmt(x.local_sqnr_db, ".2f"),
              _fmt(None if x.saturation is None else 100 * x.saturation), _fmt(None if x.underflow is None
                                                                              else 100 * x.underflow),
              _fmt(x.amax_observed), _fmt(x.amax_calibrated), _html.escape(x.note)] for x in layers]))
        worst = [x for x in layers if x.hist is not None][:top]
        if worst:
            parts.append(f"<h2>Value histograms of the {len(worst)} worst tensors</h2>")
        for x in worst:
            fig = _histogram(plt, x)
            parts.append(f"<img alt='histogram of {_html.escape(x.tensor)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            plt.close(fig)
    parts += [f"<p>note: {_html.escape(n)}</p>" for n in result.notes]
    parts.append("</body></html>")
    return "\n".join(parts)
