"""The coverage study's report: tables in markdown and the paper's Figures 4 and 5 as PNGs.

Everything is recomputed from the rows of ``results.jsonl`` (one per model and
configuration, see coverage_worker.py): relative loss ``(m_fp32 - m_q) / m_fp32`` against
the model's FP32 row, "within 1%" as the paper counts it (loss <= 1%; a failed job
counts as not within), medians of cost ratios over models::

    >>> s = summarize(read_rows("docs/coverage/results.jsonl"))         # doctest: +SKIP
    >>> s["within"][("std", "")]["e4m3"]                                  # doctest: +SKIP
    (8, 9)
    >>> write_report(rows, Path("docs/coverage"))                        # doctest: +SKIP
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["THRESHOLD", "latest", "losses", "summarize", "render_markdown", "write_plots", "write_report"]

THRESHOLD = 0.01
FP8 = ("e5m2", "e4m3", "e3m4")
FORMATS = FP8 + ("int8",)
SETTINGS = (("std", ""), ("std", "-bn"), ("ext", ""), ("ext", "-bn"))
#: Accuracy-aware tuning (some nodes may fall back to float): reported apart from SETTINGS.
TUNED = ("std", "-tuned")
ALL_SETTINGS = SETTINGS + (TUNED,)
SETTING_NAMES = {("std", ""): "standard", ("std", "-bn"): "standard + BN calib",
                 ("ext", ""): "extended", ("ext", "-bn"): "extended + BN calib",
                 TUNED: "standard + accuracy-aware tuning"}
PAPER = {"fp8": 0.9264, "int8": 0.6587}


def latest(rows: List[dict]) -> Dict[tuple, dict]:
    """The last row per (model, config): a resumed or retried job replaces its older row."""
    out = {}
    for r in rows:
        out[(r["model"], r["config"])] = r
    return out


def _ok(r: Optional[dict], key: str = "metric") -> bool:
    return bool(r) and r.get("status") == "ok" and r.get(key) is not None


def _done(r: Optional[dict]) -> bool:
    """The job ran to the end (its compile and size figures hold even if a session failed)."""
    return bool(r) and r.get("status") == "ok"


def losses(rows: List[dict], *, metric_key: str = "metric") -> Dict[tuple, Optional[float]]:
    """Relative loss per (model, config) against that model's FP32 row; None = failed/missing."""
    by = latest(rows)
    out = {}
    for (model, config), r in by.items():
        if config == "fp32":
            continue
        ref = by.get((model, "fp32"))
        if not _ok(ref) or not _ok(r, metric_key) or ref["metric"] == 0:
            out[(model, config)] = None
            continue
        out[(model, config)] = (ref["metric"] - r[metric_key]) / ref["metric"]
    return out


def _within(loss: Optional[float]) -> bool:
    return loss is not None and loss <= THRESHOLD


def models_of(rows: List[dict]):
    """(evaluated models in first-seen order, {model: skip/failure status}) from the FP32 rows."""
    seen, skipped = [], {}
    for r in rows:
        if r["config"] != "fp32" or r["model"] in seen or r["model"] in skipped:
            continue
        if r.get("status") == "ok":
            seen.append(r["model"])
        else:
            skipped[r["model"]] = r.get("status")
    for m in list(skipped):
        if m in seen:
            skipped.pop(m)
    return seen, skipped


def summarize(rows: List[dict]) -> dict:
    """Counts and medians the markdown shows (also what the tests recount)."""
    by = latest(rows)
    models, skipped = models_of(list(by.values()))
    L = losses(list(by.values()))
    Ls = losses(list(by.values()), metric_key="metric_safe")
    n = len(models)
    within, best = {}, {}
    for setting in ALL_SETTINGS:
        scheme, bn = setting
        # Denominators count the models the configuration ran on (a cut-short sweep says so).
        counts = {}
        for f in FORMATS:
            ran_on = [m for m in models if (m, f"{f}-{scheme}{bn}") in by]
            counts[f] = (sum(_within(L.get((m, f"{f}-{scheme}{bn}"))) for m in ran_on), len(ran_on))
        fp8_on = [m for m in models if any((m, f"{f}-{scheme}{bn}") in by for f in FP8)]
        per_model_best = {}
        for m in fp8_on:
            cand = {f: L.get((m, f"{f}-{scheme}{bn}")) for f in FP8}
            cand = {f: v for f, v in cand.items() if v is not None}
            per_model_best[m] = min(cand.items(), key=lambda kv: kv[1]) if cand else (None, None)
        counts["best_fp8"] = (sum(_within(v) for _, v in per_model_best.values()), len(fp8_on))
        within[setting], best[setting] = counts, per_model_best
    any_fp8 = {m: [L.get((m, f"{f}-{s}{b}")) for f in FP8 for s, b in SETTINGS] for m in models}
    any_int8 = {m: [L.get((m, f"int8-{s}{b}")) for s, b in SETTINGS] for m in models}
    tuned_fp8 = {m: any_fp8[m] + [L.get((m, f"{f}-{TUNED[0]}{TUNED[1]}")) for f in FP8] for m in models}
    tuned_int8 = {m: any_int8[m] + [L.get((m, f"int8-{TUNED[0]}{TUNED[1]}"))] for m in models}
    ran = {c for (_, c) in by}
    for setting in ALL_SETTINGS:
        for key in FORMATS + ("best_fp8",):
            if not within[setting][key][1]:
                within[setting][key] = None  # configuration not part of this sweep
    within["any"] = {"best_fp8": (sum(any(_within(v) for v in vs) for vs in any_fp8.values()), n),
                     "int8": (sum(any(_within(v) for v in vs) for vs in any_int8.values()), n)}
    within["any_tuned"] = None if within[TUNED]["best_fp8"] is None else {
        "best_fp8": (sum(any(_within(v) for v in vs) for vs in tuned_fp8.values()), n),
        "int8": (sum(any(_within(v) for v in vs) for vs in tuned_int8.values()), n)}
    peers = {}
    for cfg in ("peer", "peer-sym"):
        peers[cfg] = None if cfg not in ran else {
            "default": (sum(_within(L.get((m, cfg))) for m in models), n),
            "safe": (sum(_within(Ls.get((m, cfg))) for m in models), n)}
    domains = {}
    for m in models:
        domains.setdefault(by[(m, "fp32")].get("domain") or "?", []).append(m)
    return {"models": models, "skipped": skipped, "loss": L, "loss_safe": Ls, "within": within,
            "best": best, "peers": peers, "domains": domains, "rows": by}


def _short(text, n: int = 110) -> str:
    """A failure message for a table cell: no dir() listings, no pipes, at most n characters."""
    text = str(text).split(" in ['__class__")[0].replace("|", "/")
    return text if len(text) <= n else text[:n - 1] + "…"


def _pct(x: Optional[float]) -> str:
    return "failed" if x is None else f"{100 * x:.2f}%"


def _count(c) -> str:
    if c is None:
        return "not run"
    k, n = c
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "0/0"


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _domain_trend(s: dict) -> List[str]:
    lines = ["| domain | models | " + " | ".join(f"mean loss {f.upper()}" for f in FORMATS)
             + " | best FP8 (models, ties shared) |", "|---|---|" + "---|" * (len(FORMATS) + 1)]
    trend = {}
    for dom, ms in sorted(s["domains"].items()):
        means, wins = [], {f: 0.0 for f in FP8}
        for f in FORMATS:
            vals = [s["loss"].get((m, f"{f}-std")) for m in ms]
            means.append(None if any(v is None for v in vals) else statistics.mean(vals))
        for m in ms:
            vals = {f: s["loss"].get((m, f"{f}-std")) for f in FP8}
            vals = {f: v for f, v in vals.items() if v is not None}
            if vals:
                lo = min(vals.values())
                top = [f for f, v in vals.items() if abs(v - lo) <= 1e-9]
                for f in top:
                    wins[f] += 1 / len(top)
        trend[dom] = (means, wins)
        lines.append(f"| {dom} | {len(ms)} | " + " | ".join(_pct(v) if v is not None else "n/a" for v in means)
                     + " | " + ", ".join(f"{f.upper()} {w:g}" for f, w in wins.items()) + " |")
    s["trend"] = trend
    return lines


def _cost_table(s: dict) -> List[str]:
    by = s["rows"]
    lines = ["| model | FP32 MB | ours MB (E4M3) | peer MB | compile s ours | compile s peer | ratio | "
             "peak RSS MB ours | peak RSS MB peer | ratio | compile ΔRSS MB ours / peer | run ms FP32 | "
             "run ms ours | run ms peer |", "|---" * 14 + "|"]
    ratios_t, ratios_m, ratios_d = [], [], []
    for m in s["models"]:
        f32, o, p = by.get((m, "fp32"), {}), by.get((m, "e4m3-std"), {}), by.get((m, "peer"), {})
        rt = (o.get("compile_s") / p["compile_s"]) if _done(o) and _done(p) and p.get("compile_s") else None
        rm = (o.get("compile_peak_rss_mb") / p["compile_peak_rss_mb"]) if _done(o) and _done(p) else None
        do = (o["compile_peak_rss_mb"] - o["base_rss_mb"]) if _done(o) else None
        dp = (p["compile_peak_rss_mb"] - p["base_rss_mb"]) if _done(p) else None
        ratios_t.append(rt)
        ratios_m.append(rm)
        ratios_d.append(do / dp if do is not None and dp else None)

        def g(r, k, scale=1.0, fmt="{:.1f}"):
            return fmt.format(r[k] * scale) if _done(r) and r.get(k) is not None else "—"
        lines.append(f"| {m} | {g(f32, 'size_bytes', 1e-6, '{:.2f}')} | {g(o, 'size_bytes', 1e-6, '{:.2f}')} | "
                     f"{g(p, 'size_bytes', 1e-6, '{:.2f}')} | {g(o, 'compile_s')} | {g(p, 'compile_s')} | "
                     f"{'—' if rt is None else f'{rt:.2f}'} | {g(o, 'compile_peak_rss_mb', 1, '{:.0f}')} | "
                     f"{g(p, 'compile_peak_rss_mb', 1, '{:.0f}')} | {'—' if rm is None else f'{rm:.2f}'} | "
                     f"{'—' if do is None else f'{do:.0f}'} / {'—' if dp is None else f'{dp:.0f}'} | "
                     f"{g(f32, 'run_s', 1e3, '{:.2f}')} | {g(o, 'run_s', 1e3, '{:.2f}')} | {g(p, 'run_s', 1e3, '{:.2f}')} |")
    s["cost_medians"] = {"compile_time_ratio": _median(ratios_t), "peak_rss_ratio": _median(ratios_m),
                         "compile_delta_rss_ratio": _median(ratios_d)}
    med = s["cost_medians"]
    fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines.append(f"| **median ratio ours/peer** | | | | | | **{fmt(med['compile_time_ratio'])}** | | | "
                 f"**{fmt(med['peak_rss_ratio'])}** | ΔRSS ratio **{fmt(med['compile_delta_rss_ratio'])}** | | | |")
    return lines


def _notes(s: dict) -> List[str]:
    rows = [r for r in s["rows"].values() if r.get("status") == "ok"]
    calib = sorted({r.get("calib_samples") for r in rows if r.get("calib_samples")})
    via = sorted({r.get("bn_calib_via") for r in rows if r.get("bn_calib_via")})
    return [
        "How each configuration ran:\n",
        "- **ours**: `fp8onnx.compile_model(format=F, scheme=S, calib_method=\"max\", emit=\"emulate\"`"
        "[, BatchNorm calibration]`)`: weights per channel, activations per tensor, every format emitted as "
        "`ai.fp8onnx` custom ops and run by `fp8onnx.runtime.InferenceSession` (exact FP8 rounding on the CPU, "
        "E3M4 included; no onnxruntime Q/DQ rewrites involved)."
        + (f" BatchNorm calibration ran via: {', '.join(via)} (`api` = `compile_model(bn_calib=True)`; "
           "`pass` = the same BatchNormCalibration pass applied before `compile_model`, in rows from before "
           "the API wired it in)." if via else "")
        + " Zoo entries' deployment options apply to every compile (silero_vad: `fix_inputs={\"sr\": 16000}`, "
        "which inlines its If on the sample rate so calibration sees the network).",
        "- **peer**: onnxruntime `quantize_static` with `QuantType.QFLOAT8E4M3FN` weights and activations, "
        "QDQ, `CalibrationMethod.Distribution`; `peer` = no extra options (the documented call), `peer-sym` = "
        "`extra_options={\"ActivationSymmetric\": True}`. Each is scored in a default onnxruntime session "
        "and in one with `ReluQuantRewrite`, `WeightBiasQuantization`, `ClipQuantRewrite` disabled.",
        f"- calibration samples: {', '.join(map(str, calib)) or '—'} per model (the entry's calibration split); "
        "evaluation on the entry's held-out split, `n` in the per-model table. For agreement metrics one "
        "flipped sample of `n` is a loss of `1/n`, so models with `n < 100` cannot show a loss between 0 and 1/n.",
        "- each job runs in its own process, capped by `RLIMIT_AS`; a crash, timeout or out-of-memory is a "
        "failed row, counted as not within 1%.\n",
    ]


def render_markdown(s: dict) -> str:
    n = len(s["models"])
    w = s["within"]
    L = []
    L.append("# Coverage study: FP8 formats on the zoo, beside onnxruntime's FP8 quantizer\n")
    L.append(f"{n} models evaluated" + (f", {len(s['skipped'])} skipped" if s["skipped"] else "")
             + ". A model counts as *within 1%* when its task metric's relative loss against FP32, "
               "`(m_fp32 - m_q) / m_fp32`, is at most 1% (the paper's criterion); a failed job counts as not within.\n")
    L += _notes(s)
    L.append("## Headline: models within 1% relative loss\n")
    L.append("| setting | E5M2 | E4M3 | E3M4 | best FP8 | INT8 |")
    L.append("|---|---|---|---|---|---|")
    for st in SETTINGS:
        c = w[st]
        L.append(f"| {SETTING_NAMES[st]} | " + " | ".join(_count(c[f]) for f in FP8)
                 + f" | **{_count(c['best_fp8'])}** | {_count(c['int8'])} |")
    L.append(f"| best of the four settings | | | | **{_count(w['any']['best_fp8'])}** | {_count(w['any']['int8'])} |")
    if w.get("any_tuned"):
        c = w[TUNED]
        L.append(f"| {SETTING_NAMES[TUNED]} | " + " | ".join(_count(c[f]) for f in FP8)
                 + f" | **{_count(c['best_fp8'])}** | {_count(c['int8'])} |")
        L.append(f"| best of all five settings | | | | **{_count(w['any_tuned']['best_fp8'])}** | "
                 f"{_count(w['any_tuned']['int8'])} |")
        L.append("")
        L.append("Accuracy-aware tuning, as the paper runs it through Intel Neural Compressor: from the standard "
                 "scheme's full quantization, other formats per op type, then single nodes kept in float, most "
                 "sensitive first, until the relative loss is within 1% or the trial budget ends; every trial is "
                 "scored with the model's own task metric on its *calibration* split, so the held-out split "
                 "reported here never guided the choice. The per-model table gives how many weights stayed in "
                 "float.")
    L.append("")
    L.append("onnxruntime's `quantize_static` (FP8 E4M3 weights and activations, QDQ, "
             "`CalibrationMethod.Distribution`, the only method it accepts for FP8):\n")
    L.append("| peer | default onnxruntime session | FP8-unsafe rewrites disabled |")
    L.append("|---|---|---|")
    for cfg, label in (("peer", "defaults (as documented)"), ("peer-sym", "`ActivationSymmetric=True`")):
        p = s["peers"][cfg] or {"default": None, "safe": None}
        L.append(f"| {label} | {_count(p['default'])} | {_count(p['safe'])} |")
    L.append("")
    L.append("## Against the paper\n")
    bf, bi = w[("std", "")]["best_fp8"] or (0, 0), w[("std", "")]["int8"] or (0, 0)
    af, ai = w["any"]["best_fp8"], w["any"]["int8"]
    pct = lambda c: 100 * c[0] / c[1] if c[1] else float("nan")  # noqa: E731
    L.append(f"- Paper: FP8 {100 * PAPER['fp8']:.2f}% of models within 1% vs INT8 {100 * PAPER['int8']:.2f}%. "
             f"Here (standard scheme, best FP8 format per model): FP8 {pct(bf):.1f}% vs INT8 {pct(bi):.1f}%; "
             f"best of all settings: FP8 {pct(af):.1f}% vs INT8 {pct(ai):.1f}%. "
             + ("FP8 covers more models than INT8, as in the paper." if af[0] > ai[0] else
                "FP8 does not cover more models than INT8 here, unlike the paper." if af[0] < ai[0] else
                "FP8 and INT8 cover the same number of models here."))
    L.append("- Paper: E4M3 is the better format for NLP, E3M4 slightly better for CV. "
             "Mean relative loss (standard scheme, no BN calibration) and per-model best format by domain:\n")
    L += _domain_trend(s)
    L.append("")
    for dom, (means, wins) in sorted(s["trend"].items()):
        fmt_means = dict(zip(FORMATS, means))
        fp8_means = {f: fmt_means[f] for f in FP8 if fmt_means[f] is not None}
        if fp8_means:
            lo = min(fp8_means, key=fp8_means.get)
            L.append(f"- {dom}: lowest mean loss {lo.upper()} ({_pct(fp8_means[lo])}); "
                     f"{', '.join(f'{f.upper()} {_pct(v)}' for f, v in fp8_means.items())}.")
    L.append("")
    L.append("## Per model: relative loss (lower is better; negative = better than FP32; bold = within 1%; "
             "— = not run)\n")
    L.append("| model | domain/family | FP32 metric (eval n) | setting | E5M2 | E4M3 | E3M4 | INT8 | best FP8 |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for m in s["models"]:
        f32 = s["rows"][(m, "fp32")]
        for i, st in enumerate(ALL_SETTINGS):
            sch, bn = st
            if st == TUNED and not any((m, f"{f}-{sch}{bn}") in s["rows"] for f in FORMATS):
                continue
            vals = [s["loss"].get((m, f"{f}-{sch}{bn}")) for f in FORMATS]
            bf_, bv = s["best"][st].get(m, (None, None))
            head = (f"| {m} | {f32.get('domain')}/{f32.get('family')} | {f32['metric']:.4f} "
                    f"({f32.get('eval_samples')}) " if i == 0
                    else "| | | ")
            cells = []
            for f, v in zip(FORMATS, vals):
                if (m, f"{f}-{sch}{bn}") not in s["rows"]:
                    cells.append("—")  # not run (yet)
                else:
                    cell = ("**" + _pct(v) + "**") if _within(v) else _pct(v)
                    t = s["rows"][(m, f"{f}-{sch}{bn}")].get("tune")
                    if t and t.get("weights_fp8_untuned") is not None:
                        kept = t["weights_fp8_untuned"] - t["weights_fp8"]
                        cell += f" ({kept}/{t['weights_fp8_untuned']} w float)" if kept else " (all FP8)"
                    cells.append(cell)
            L.append(head + f"| {SETTING_NAMES[st]} | " + " | ".join(cells)
                + f" | {bf_.upper() if bf_ else '—'} |")
    for m, why in s["skipped"].items():
        L.append(f"| {m} | | | {why} | | | | | |")
    L.append("\nPeer per model (relative loss; default session / FP8-unsafe rewrites disabled):\n")
    L.append("| model | peer defaults | peer `ActivationSymmetric` |")
    L.append("|---|---|---|")
    for m in s["models"]:
        cells = []
        for cfg in ("peer", "peer-sym"):
            r = s["rows"].get((m, cfg))
            if r is None:
                cells.append("—")
            elif r.get("status") != "ok":
                cells.append(_short(r.get("status")))
            elif r.get("default_session_error") or r.get("safe_session_error"):
                cells.append(" / ".join(
                    "failed: " + _short(r[err]) if r.get(err) else _pct(src.get((m, cfg)))
                    for err, src in (("default_session_error", s["loss"]), ("safe_session_error", s["loss_safe"]))))
            else:
                cells.append(f"{_pct(s['loss'].get((m, cfg)))} / {_pct(s['loss_safe'].get((m, cfg)))}")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L.append("\n## Cost: ours (E4M3, standard scheme) beside the peer (defaults)\n")
    L += _cost_table(s)
    L.append("")
    L.append("Compile time: wall seconds of `fp8onnx.compile_model` (calibration included; Numba kernels "
             "warmed up first by a tiny compile, `warmup_s` in the rows) and of `quantize_static`. Peak RSS: "
             "`getrusage` max RSS of the job's fresh process right after compiling (imports, model and "
             "calibration data included); ΔRSS subtracts the same figure taken just before. Run time: median of "
             "5 runs of one evaluation batch, ours in `fp8onnx.runtime.InferenceSession` (emulated FP8), "
             "the peer's native FP8 Q/DQ in a default onnxruntime session.\n")
    failures = [r for r in s["rows"].values() if str(r.get("status", "")).startswith("failed")]
    if failures:
        L.append("## Failed jobs\n")
        for r in failures:
            L.append(f"- {r['model']} {r['config']}: {_short(r['status'], 300)}")
        L.append("")
    L.append("![relative loss per model and format](fig4_loss_per_model.png)\n")
    L.append("![relative loss against model size](fig5_loss_vs_size.png)\n")
    return "\n".join(L)


def write_plots(s: dict, out: Path) -> List[Path]:
    """Figure 4 (loss per model and format) and Figure 5 (loss against model size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = s["models"]
    series = [(f.upper(), f"{f}-std") for f in FORMATS] + [("peer", "peer"), ("peer sym", "peer-sym")]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f", "#ff7f0e", "#9467bd"]
    paths = []
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
    ax.axhline(100 * THRESHOLD, color="k", ls="--", lw=0.8, label="1%")
    ax.plot([], [], "x", color="k", label="failed")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylabel("relative loss (%), symlog")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.set_title("Relative loss per model and format (standard scheme; peer: default session)")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    paths.append(out / "fig4_loss_per_model.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (label, cfg), c in zip(series, colors):
        xs, ys = [], []
        for m in models:
            v = s["loss"].get((m, cfg))
            if v is not None:
                xs.append(s["rows"][(m, "fp32")].get("fp32_size_bytes", 0) / 1e6)
                ys.append(100 * v)
        ax.scatter(xs, ys, label=label, color=c, s=28, alpha=0.8)
    ax.axhline(100 * THRESHOLD, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    lows = [100 * v for v in s["loss"].values() if v is not None]
    ax.set_ylim(bottom=min([0.0] + lows) * 1.5 - 0.01)
    ax.set_xlabel("FP32 model size (MB, log)")
    ax.set_ylabel("relative loss (%), symlog")
    ax.set_title("Relative loss against model size (standard scheme)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "fig5_loss_vs_size.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(rows: List[dict], out: Path) -> str:
    """Write ``coverage.md`` and the figures into ``out``; returns the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(rows)
    text = render_markdown(s)
    (out / "coverage.md").write_text(text + "\n", encoding="utf-8")
    if s["models"]:
        write_plots(s, out)
    return text
